"""Tests for kagglekit_nb.setup_cell: every notebook carries the setup cell verbatim, and the cell
installs the kit from the right place (installed kit, attached wheels dataset, package index)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from kagglekit_nb.setup_cell import SETUP_CELL, WHEEL_GLOB

ROOT = Path(__file__).resolve().parents[1]
TWINS = sorted((ROOT / "notebooks").glob("*.py"))  # a notebook not written yet is simply not here
INPUT_LINE = '_kaggle_input = "/kaggle/input"'


def _code_cells(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_input_folder_is_one_line_of_the_cell():
    assert SETUP_CELL.count(INPUT_LINE) == 1  # the tests below move the cell to a fake /kaggle/input
    assert WHEEL_GLOB in SETUP_CELL
    compile(SETUP_CELL, "setup_cell", "exec")


@pytest.mark.parametrize("twin", TWINS, ids=lambda p: p.stem)
def test_every_notebook_carries_the_setup_cell_verbatim(twin):
    assert SETUP_CELL in twin.read_text(), f"{twin.name}: paste kagglekit_nb.setup_cell.SETUP_CELL as a cell"
    notebook = twin.with_suffix(".ipynb")
    cells = _code_cells(notebook)
    assert SETUP_CELL in cells, f"{notebook.name}: regenerate it from {twin.name} with jupytext"
    # After the parameters cell (papermill injects its values after that one), before any use of the kit.
    at = cells.index(SETUP_CELL)
    assert at >= 1
    first_use = next(i for i, c in enumerate(cells) if "kagglekit_nb" in c and c != SETUP_CELL)
    assert at < first_use


def _run_cell(monkeypatch, input_dir: Path, *, installed: bool) -> list[list[str]]:
    """Execute the cell with `input_dir` as /kaggle/input; returns the commands it ran."""
    calls: list[list[str]] = []

    def fake_run(cmd, check=False, **kwargs):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real_find_spec(name, *a) if installed or name != "kagglekit_nb" else None))
    exec(SETUP_CELL.replace(INPUT_LINE, f"_kaggle_input = {str(input_dir)!r}"), {})  # noqa: S102 - a notebook cell
    return calls


def test_an_installed_kit_is_used_as_it_is(monkeypatch, tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "kagglekit_nb-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert _run_cell(monkeypatch, tmp_path, installed=True) == []


@pytest.mark.parametrize("where", ["kagglekit-nb-wheels", "datasets/alice/kagglekit-nb-wheels"])
def test_an_attached_wheels_dataset_is_installed_without_the_index(monkeypatch, tmp_path, where, capsys):
    wheels = tmp_path / where
    wheels.mkdir(parents=True)
    (wheels / "kagglekit_nb-0.1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "competition" / "train").mkdir(parents=True)
    calls = _run_cell(monkeypatch, tmp_path, installed=False)
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "install"]
    assert cmd[-1] == "kagglekit_nb"
    assert cmd[cmd.index("--find-links") + 1] == str(wheels)
    assert "--no-index" in cmd
    assert str(wheels) in capsys.readouterr().out


@pytest.mark.parametrize("attached", [True, False], ids=["other-wheels-only", "no-input-folder"])
def test_without_a_wheels_dataset_the_index_is_used(monkeypatch, tmp_path, capsys, attached):
    if attached:
        (tmp_path / "some-dataset").mkdir()
        (tmp_path / "some-dataset" / "other-1.0-py3-none-any.whl").write_bytes(b"")
    calls = _run_cell(monkeypatch, tmp_path if attached else tmp_path / "absent", installed=False)
    assert len(calls) == 1
    assert "--no-index" not in calls[0] and "--find-links" not in calls[0]
    assert calls[0][-1] == "kagglekit_nb"
    assert "the package index" in capsys.readouterr().out
