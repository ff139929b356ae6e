"""Tests for kagglekit_nb/__init__.py: the public API loads lazily, so `import kagglekit_nb` and the light
command-line verbs (`verify`, `env`, `--help`) import no torch, pandas, timm or matplotlib."""
from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

import kagglekit_nb as kk

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "matplotlib", "pandas", "sklearn", "lightgbm", "papermill")


def _imported_modules(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime ARGS`; return the process and the top-level modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0]
               for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, modules


def test_importtime_parsing_sees_a_heavy_import():
    # The check below is only worth something if it notices an import when there is one.
    done, modules = _imported_modules("-c", "import kagglekit_nb as kk; kk.fit")
    assert done.returncode == 0, done.stderr
    assert {"kagglekit_nb", "torch", "numpy"} <= modules


def test_import_kagglekit_nb_is_light():
    done, modules = _imported_modules("-c", "import kagglekit_nb as kk; kk.Budget, kk.detect_platform")
    assert done.returncode == 0, done.stderr
    assert "kagglekit_nb" in modules
    assert not modules & {*HEAVY, "numpy"}, sorted(modules & {*HEAVY, "numpy"})


def test_verify_command_imports_no_torch(tmp_path):
    (tmp_path / "sample.csv").write_text("id,label\na,cat\nb,dog\n")
    (tmp_path / "submission.csv").write_text("id,label\na,dog\nb,dog\n")
    done, modules = _imported_modules("-m", "kagglekit_nb", "verify", str(tmp_path / "submission.csv"),
                                      "--sample", str(tmp_path / "sample.csv"))
    assert done.returncode == 0, done.stderr
    assert "VALID" in done.stdout
    assert "pandas" in modules  # it read the CSVs
    assert not modules & {"torch", "timm", "matplotlib", "sklearn", "lightgbm", "papermill"}


@pytest.mark.parametrize("args", [["env", "--json"], ["--help"], ["demo", "--help"], ["verify", "--help"],
                                  ["inspect", "--help"]])
def test_light_commands_import_neither_torch_nor_pandas(args):
    done, modules = _imported_modules("-m", "kagglekit_nb", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_every_public_name_resolves_to_what_its_module_defines():
    for name in kk.__all__:
        value = getattr(kk, name)
        assert not isinstance(value, types.ModuleType), name
    for name, module in kk._LAZY.items():
        assert getattr(kk, name) is getattr(importlib.import_module(f"kagglekit_nb.{module}"), name)
    assert set(kk.__all__) <= set(dir(kk))


def test_a_submodule_import_does_not_shadow_a_public_function():
    import kagglekit_nb.submission  # noqa: F401 - imports kagglekit_nb.verification as well
    import kagglekit_nb.verification  # noqa: F401

    assert callable(kk.verify) and kk.verify.__module__ == "kagglekit_nb.verification"


def test_submodules_load_on_attribute_access_and_unknown_names_fail():
    assert kk.ui.form is importlib.import_module("kagglekit_nb.ui").form
    assert kk.checkpoint.list_checkpoints is importlib.import_module("kagglekit_nb.checkpoint").list_checkpoints
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        kk.no_such_thing  # noqa: B018



def test_inspect_command_imports_no_torch(tmp_path):
    from PIL import Image

    data = tmp_path / "comp"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    rows = []
    for i in range(6):
        Image.new("L", (4, 4), i * 40).save(data / "train" / f"a{i}.png")
        rows.append(f"a{i},{'cat' if i % 2 else 'dog'}")
    Image.new("L", (4, 4)).save(data / "test" / "b0.png")
    (data / "train.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    (data / "sample_submission.csv").write_text("id,label\nb0,cat\n")
    done, modules = _imported_modules("-m", "kagglekit_nb", "inspect", str(data), "--scratch", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert "train.csv column 'label'" in done.stdout and "accuracy" in done.stdout
    assert not modules & {"torch", "timm", "matplotlib", "lightgbm", "papermill"}, modules & set(HEAVY)
