"""The classification notebook end to end through `kagglekit run` (papermill, injected parameters, a
budget that decides the plan), and every committed notebook's form. Strict nbval re-executes each
notebook in test_nbval.py."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.notebook

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The deep model the budgeted run trains: two folds of a small CNN, so 150 s on a 2-core CPU finish them
# (MODEL="auto" picks by timing, which a shared machine makes noisy; tests/test_classification.py tests it).
DEEP = ("-p", "MODEL", "resnet18", "-p", "IMG_SIZE", "32", "-p", "TRAIN_FOLDS", "2")


def _accuracy(submission: Path, solution: Path) -> float:
    sub = pd.read_csv(submission, dtype=str)
    sol = pd.read_csv(solution, dtype=str)
    merged = sol.merge(sub, on="id", suffixes=("_true", "_pred"), validate="one_to_one")
    assert len(merged) == len(sol)
    return float((merged["label_true"] == merged["label_pred"]).mean())


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, digits_competition):
    """One budgeted run of the classification notebook on a competition it has never seen."""
    out = tmp_path_factory.mktemp("classification") / "out"
    proc = run_cli("run", "classification", "--data", str(digits_competition), "--out", str(out),
                   "--budget", "150s", "-p", "EPOCHS", "12", "-p", "RUN_NAME", "digits", *DEEP)
    return proc, out


def test_classification_run_writes_a_valid_accurate_submission(classification_run, digits_competition):
    proc, out = classification_run
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for name in ("submission.csv", "verification.json", "run.json", "folds.csv", "labels.json",
                 "image_classification.ipynb"):
        assert (out / name).exists(), name
    assert "submission.csv" in proc.stdout and "verification.json" in proc.stdout
    verification = json.loads((out / "verification.json").read_text())
    assert verification["valid"] is True
    # String ids and string labels, 28x28 grayscale: a CNN must reach digit-SVM accuracy levels.
    assert _accuracy(out / "submission.csv", digits_competition / "solution.csv") >= 0.98
    record = json.loads((out / "run.json").read_text())
    assert record["budget_s"] == 150
    assert record["elapsed_s"] <= 150
    assert record["folds_done"], record
    assert record["cv_score"] >= 0.97
    assert set(record["phases"]) >= {"setup", "train", "predict", "verify"}
    assert record["config"]["RUN_NAME"] == "digits"
    for name in ("training_curves", "time_bar", "confusion_matrix"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    # Headless: plain progress lines, no carriage-return redraws, no widget state, plots as images.
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    executed = json.loads((out / "image_classification.ipynb").read_text())
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    texts = ["".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs]
    assert not any("\r" in t for t in texts)
    assert not any(k.startswith("application/vnd.jupyter.widget") for o in outputs for k in o.get("data", {}))
    assert "widgets" not in executed["metadata"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3


def test_classification_rerun_with_same_output_dir_keeps_trained_folds(classification_run,
                                                                       digits_competition):
    _, out = classification_run
    before = json.loads((out / "run.json").read_text())
    proc = run_cli("run", "classification", "--data", str(digits_competition), "--out", str(out),
                   "--budget", "150s", "-p", "EPOCHS", "12", "-p", "TRAIN_FOLDS",
                   str(len(before["folds_done"])), "-p", "RUN_NAME", "digits", "-p", "MODEL", "resnet18",
                   "-p", "IMG_SIZE", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "folds already done" in proc.stdout
    after = json.loads((out / "run.json").read_text())
    assert after["sessions"] == before["sessions"] + 1
    assert after["folds_done"] == before["folds_done"]
    assert after["phases"].get("train", 0.0) < 5  # nothing retrained


def test_failing_cell_exits_nonzero_naming_the_error(tmp_path, digits_competition, copy_tree):
    data = copy_tree(digits_competition)
    (data / "train.csv").write_text("image,label\nx,one\n")  # no 'id' column
    proc = run_cli("run", "classification", "--data", str(data), "--out", str(tmp_path / "out"),
                   "-p", "EPOCHS", "1")
    assert proc.returncode == 1
    assert "train.csv: no column 'id'" in proc.stderr  # the reader says why train.csv is not the labels
    assert (tmp_path / "out" / "image_classification.ipynb").exists()  # the executed notebook is kept


def test_notebooks_are_committed_clean():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), path
        for cell in code:
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, path
        assert "colab" not in nb["metadata"] and "widgets" not in nb["metadata"], path


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_py_percent_twin(notebook):
    import jupytext

    twin = notebook.with_suffix(".py")
    assert twin.exists(), f"{twin.name} is missing: run `jupytext --to py:percent {notebook.name}`"
    a, b = jupytext.read(notebook), jupytext.read(twin)
    cells = lambda nb: [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]
    assert cells(a) == cells(b), f"{notebook.name} and {twin.name} differ: run `make notebooks`"
