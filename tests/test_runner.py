"""Tests for kagglekit_nb.runner: parameter checking and conversion, notebook lookup, early failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nbformat
import pytest

from kagglekit_nb.runner import (
    NOTEBOOKS,
    convert_parameters,
    execute,
    notebook_parameters,
    parameter_types,
    resolve_notebook,
)
from kagglekit_nb.tasks.classification import Config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "image_classification.ipynb"

DEFAULTS = {
    "EPOCHS": 12,
    "LR": 3e-3,
    "HFLIP": False,
    "DATA_DIR": None,
    "TRAIN_FOLDS": None,
    "MODEL": "resnet18",
    "SIZES": [32, 64],
}


@pytest.fixture(autouse=True)
def _bundled_notebooks(monkeypatch):
    monkeypatch.delenv("KAGGLEKIT_NOTEBOOKS", raising=False)


# --------------------------------------------------------------------------- convert_parameters


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("EPOCHS", "3", 3),
        ("LR", "0.01", 0.01),
        ("LR", "1", 1.0),
        ("LR", "1e-4", 1e-4),
        ("HFLIP", "true", True),
        ("HFLIP", "Yes", True),
        ("HFLIP", "1", True),
        ("HFLIP", "off", False),
        ("HFLIP", "False", False),
        ("DATA_DIR", "None", None),
        ("DATA_DIR", "null", None),
        ("DATA_DIR", "/kaggle/input/digits", "/kaggle/input/digits"),
        ("TRAIN_FOLDS", "3", 3),
        ("MODEL", "convnext_tiny", "convnext_tiny"),
        ("MODEL", "None", "None"),  # a str default keeps the text as it is
        ("SIZES", "[1, 2]", [1, 2]),
    ],
)
def test_convert_parameters_follows_the_default_type(name, text, value):
    got = convert_parameters([(name, text)], DEFAULTS)
    assert got == {name: value}
    assert type(got[name]) is type(value)


def test_convert_several_parameters():
    got = convert_parameters([("EPOCHS", "2"), ("LR", "0.1"), ("HFLIP", "no")], DEFAULTS)
    assert got == {"EPOCHS": 2, "LR": 0.1, "HFLIP": False}


def test_unknown_parameter_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"-p EPOCH: the notebook has no parameter 'EPOCH'") as info:
        convert_parameters([("EPOCH", "3")], DEFAULTS)
    for name in DEFAULTS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("EPOCHS", "3.5", "enter a whole number"),
        ("EPOCHS", "many", "enter a whole number"),
        ("LR", "fast", "enter a finite number"),
        ("LR", "inf", "enter a finite number"),
        ("HFLIP", "maybe", "enter true or false"),
        ("SIZES", "32", "enter a list like [32, 64]"),
        ("SIZES", "[32", "enter a list like [32, 64]"),
    ],
)
def test_bad_values_name_the_parameter(name, text, expected):
    with pytest.raises(ValueError, match=rf"-p {name}: ") as info:
        convert_parameters([(name, text)], DEFAULTS)
    assert f"{text!r} is not valid" in str(info.value)
    assert expected in str(info.value)


# --------------------------------------------------------------------------- resolve_notebook


@pytest.mark.parametrize("name", ["classification", "image_classification"])
def test_resolve_notebook_by_short_name_or_stem(name):
    path = resolve_notebook(name)
    assert path.resolve() == NOTEBOOK.resolve()
    assert NOTEBOOKS["classification"] == "image_classification.ipynb"


def test_resolve_notebook_by_path(tmp_path):
    nb = tmp_path / "mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), nb)
    assert resolve_notebook(str(nb)) == nb
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        resolve_notebook(str(tmp_path / "missing.ipynb"))


def test_unknown_notebook_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown notebook 'segmentation'") as info:
        resolve_notebook("segmentation")
    for name in NOTEBOOKS:
        assert name in str(info.value)


def test_notebooks_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEKIT_NOTEBOOKS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="image_classification.ipynb"):
        resolve_notebook("classification")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "image_classification.ipynb")
    assert resolve_notebook("classification") == tmp_path / "image_classification.ipynb"


# --------------------------------------------------------------------------- notebook_parameters


def test_notebook_parameters_of_the_classification_notebook():
    params = notebook_parameters(NOTEBOOK)
    assert params["DATA_DIR"] is None
    assert params["OUTPUT_DIR"] is None
    assert params["BUDGET"] is None
    assert params["EPOCHS"] is None and params["IMG_SIZE"] is None   # what the budget allows; the rung's size
    assert type(params["SEED"]) is int
    assert type(params["LR"]) is float
    assert type(params["HFLIP"]) is bool
    assert params["MODEL"] == "auto"


def _configs():
    from kagglekit_nb.tasks.glacier import finetune, pretrain
    from kagglekit_nb.tasks.isic import pipeline

    return [("image_classification", Config), ("glacier_pretrain", pretrain.Config),
            ("glacier_finetune", finetune.Config), ("isic_embed_lgbm", pipeline.Config)]


@pytest.mark.parametrize(("name", "config"), _configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_notebook_parameters_match_config_defaults(name, config):
    """The notebook's parameters cell and its Config must list the same names with the same defaults."""
    params = notebook_parameters(NOTEBOOK.parent / f"{name}.ipynb")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    assert sorted(params) == sorted(defaults)
    assert list(params)[:5] == ["DATA_DIR", "OUTPUT_DIR", "BUDGET", "SEED", "RUN_NAME"]
    for key, default in defaults.items():
        assert params[key] == default, key
        assert type(params[key]) is type(default), key
    config(**params)  # and the notebook's defaults pass Config's own checks


def _notebook(tmp_path, source: str, tagged: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    cell = nbformat.v4.new_code_cell(source)
    if tagged:
        cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(EPOCHS)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_notebook_without_parameters_cell(tmp_path):
    path = _notebook(tmp_path, "EPOCHS = 3", tagged=False)
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        notebook_parameters(path)


def test_notebook_with_non_literal_parameter(tmp_path):
    path = _notebook(tmp_path, "import os\nEPOCHS = 3\nHOME = os.getcwd()")
    with pytest.raises(ValueError, match=r"parameter HOME = os.getcwd\(\) is not a literal"):
        notebook_parameters(path)


def test_notebook_parameters_of_a_small_notebook(tmp_path):
    path = _notebook(tmp_path, 'EPOCHS = 3  # how long\nNAME = "x"\nSIZE = None\nFLIP = True')
    assert notebook_parameters(path) == {"EPOCHS": 3, "NAME": "x", "SIZE": None, "FLIP": True}


@pytest.mark.parametrize(("name", "text"), [("BUDGET", "90"), ("DATA_DIR", "2024")])
def test_numeric_text_for_string_parameters_passes_config(name, text):
    values = convert_parameters([(name, text)], notebook_parameters(NOTEBOOK))
    Config(**values)


# --------------------------------------------------------------------------- execute: failures before any cell runs


def test_execute_refuses_unknown_parameter_before_running(tmp_path):
    with pytest.raises(ValueError, match="its parameters are DATA_DIR, OUTPUT_DIR"):
        execute("classification", out=tmp_path / "out", params=[("NOPE", "1")], stream=False)
    assert not (tmp_path / "out" / NOTEBOOK.name).exists()


def test_execute_refuses_bad_budget_before_running(tmp_path):
    with pytest.raises(ValueError, match=r"--budget='abc'"):
        execute("classification", out=tmp_path / "out", budget="abc", stream=False)
    assert not (tmp_path / "out" / NOTEBOOK.name).exists()


def test_execute_refuses_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        execute("classification", out=tmp_path / "out", data=tmp_path / "nope", stream=False)


def test_execute_refuses_an_output_file(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        execute("classification", out=out, stream=False)


_STOPPABLE = '''
import pathlib, time
from kagglekit_nb.budget import install_sigterm_handler
with install_sigterm_handler(signals=(__import__("signal").SIGTERM, __import__("signal").SIGINT)) as stop:
    pathlib.Path(OUTPUT_DIR, "started").write_text("1")
    t0 = time.monotonic()
    while not stop and time.monotonic() - t0 < 120:  # "training": a step every 50 ms
        time.sleep(0.05)
pathlib.Path(OUTPUT_DIR, "stopped.txt").write_text(str(stop.received))
'''


def test_sigterm_to_kagglekit_run_reaches_the_kernel_and_the_notebook_finishes(tmp_path):
    """The command passes SIGTERM on; the kit's handler in the kernel stops the loop, the next cell
    still runs (where the submission is written), and the command ends with 143 and one clear line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell('OUTPUT_DIR = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(_STOPPABLE),
                nbformat.v4.new_code_cell('import pathlib; pathlib.Path(OUTPUT_DIR, "after.txt").write_text("ok")')]
    path = tmp_path / "stoppable.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "out"
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "kagglekit_nb", "run", str(path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - sent < 60
    assert (out / "stopped.txt").read_text() == "SIGTERM"   # the kernel got it, from the kit's handler
    assert (out / "after.txt").read_text() == "ok"           # and the notebook's remaining cells ran
    assert proc.returncode == 143, stdout + stderr
    assert "kagglekit run: SIGTERM received: passed to the kernel" in stderr, stderr
    assert "stopped early by SIGTERM" in stdout and "Traceback" not in stderr, stdout + stderr


def test_parameter_types_come_from_the_notebooks_task_config():
    """EPOCHS defaults to None in the notebook (as many as fit), yet `-p EPOCHS ten` is refused at once:
    the types come from the task's Config, found from the notebook's own import line."""
    path = resolve_notebook("classification")
    types = parameter_types(path)
    assert types["EPOCHS"] == (int, type(None)) and types["MODEL"] == (str,)
    defaults = notebook_parameters(path)
    assert convert_parameters([("EPOCHS", "12")], defaults, types) == {"EPOCHS": 12}
    assert convert_parameters([("EPOCHS", "None")], defaults, types) == {"EPOCHS": None}
    with pytest.raises(ValueError, match="-p EPOCHS: 'ten' is not valid; enter a whole number"):
        convert_parameters([("EPOCHS", "ten")], defaults, types)


@pytest.mark.parametrize("notebook", ["classification", "glacier_pretrain", "glacier_finetune", "isic"])
def test_none_text_is_none_where_the_config_allows_none_and_text_elsewhere(notebook):
    """`-p WEIGHTS None` asks for random weights: WEIGHTS is `str | None` in every task's Config, so the
    text None (null, none, empty) is None; a text-only parameter (RUN_NAME: `str`) keeps the word."""
    path = resolve_notebook(notebook)
    types, defaults = parameter_types(path), notebook_parameters(path)
    assert defaults["WEIGHTS"] == "auto" and types["WEIGHTS"] == (str, type(None))
    for text in ("None", "null", "none", ""):
        assert convert_parameters([("WEIGHTS", text)], defaults, types) == {"WEIGHTS": None}
    assert convert_parameters([("WEIGHTS", "auto")], defaults, types) == {"WEIGHTS": "auto"}
    assert types["RUN_NAME"] == (str,)
    assert convert_parameters([("RUN_NAME", "None")], defaults, types) == {"RUN_NAME": "None"}


def test_parameter_types_of_a_notebook_without_a_task_import_are_empty(tmp_path):
    nb = tmp_path / "plain.ipynb"
    nb.write_text('{"cells": [{"cell_type": "code", "source": ["x = 1"]}], "metadata": {}}')
    assert parameter_types(nb) == {}
