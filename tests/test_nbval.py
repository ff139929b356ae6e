"""Strict nbval: a notebook executed a second time must reproduce every output of its first execution.

The first execution is a papermill run (`kagglekit run`: fixed small EPOCHS, a budget that never binds,
no DATA_DIR, so each notebook finds or writes its demo data in the folder it runs in). nbval then
executes that executed copy again, in strict mode (no --nbval-lax), and compares each cell's outputs
after the sanitisers of nbval.cfg, which replace what legitimately varies (times, paths, rates ...)
and never scores, predictions or counts. Plots (image/png) are not compared; their text is.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from conftest import GENEROUS_BUDGET, ROOT, NotebookRun, run_notebook

pytestmark = pytest.mark.notebook

SANITISERS = ROOT / "nbval.cfg"
# Where each notebook's first execution comes from: shared session fixtures (conftest.py) where another
# test file checks the same run, else the module fixtures below.
FIRST_RUNS = {
    "image_classification": "classification_first_run",
    "glacier_pretrain": "glacier_pretrained",
    "glacier_finetune": "glacier_finetuned",
    "isic_embed_lgbm": "isic_first_run",
}
SCORE_LINE = re.compile(r"(CV \w+ \(out-of-fold, folds \[[\d, ]*\]\): \d\.\d{3})(\d)")


@pytest.fixture(scope="module")
def classification_first_run(tmp_path_factory) -> NotebookRun:
    cwd = tmp_path_factory.mktemp("classification_nbval")
    # an explicit model: MODEL="auto" times the ladder on this machine, and a timing is no reproducible output
    return run_notebook("classification", cwd / "out", "--budget", GENEROUS_BUDGET, "-p", "EPOCHS", "1",
                        "-p", "TRAIN_FOLDS", "1", "-p", "MODEL", "resnet18", "-p", "IMG_SIZE", "32", cwd=cwd)


@pytest.fixture(scope="module")
def isic_first_run(tmp_path_factory) -> NotebookRun:
    cwd = tmp_path_factory.mktemp("isic_nbval")
    return run_notebook("isic", cwd / "out", "--budget", GENEROUS_BUDGET, "-p", "FOLDS", "3",
                        "-p", "LGBM_SEEDS", "1", "-p", "IMG_SIZE", "32", "-p", "MAX_ROUNDS", "300", cwd=cwd)


def _injected_parameters(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    return cell


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _score_cell(nb: nbformat.NotebookNode) -> int:
    """nbval's number (the index among code cells) of the cell whose stored output prints the CV score."""
    found = [i for i, c in enumerate(_code_cells(nb))
             if any(SCORE_LINE.search(o.get("text", "")) for o in c.get("outputs", []))]
    assert len(found) == 1, found
    return found[0]


def nbval_again(run: NotebookRun, out: Path, *, name: str,
                edit: Callable[[nbformat.NotebookNode], None] | None = None) -> subprocess.CompletedProcess:
    """Strict nbval on a copy of `run`'s executed notebook whose OUTPUT_DIR is `out` (a fresh folder with
    the first run's folder name, so paths read the same once sanitised), run from the first run's folder.
    `edit(nb)` may change the copy first (a parameter, a stored output)."""
    nb = nbformat.read(run.executed, as_version=4)
    cell = _injected_parameters(nb)
    assert out.name == run.out.name and not out.exists()
    cell.source, n = re.subn(r"^OUTPUT_DIR = .*$", f"OUTPUT_DIR = {str(out)!r}", cell.source, flags=re.M)
    assert n == 1, cell.source
    if edit is not None:
        edit(nb)
    copy = run.cwd / f"{run.executed.stem}.{name}.ipynb"
    nbformat.write(nb, copy)
    ini = out.parent / "pytest.ini"  # not the repository's configuration
    ini.write_text("[pytest]\n")
    env = {**os.environ, "KAGGLEKIT_HEADLESS": "1"}  # as under `kagglekit run`
    for var in ("KAGGLEKIT_START", "KAGGLEKIT_BUDGET"):  # the budget is the injected parameter
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", copy.name, "-q", "-rf", "-p", "no:cacheprovider", "-c", str(ini),
         "--rootdir", str(run.cwd), "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(SANITISERS),
         "--nbval-cell-timeout", "600"],
        cwd=run.cwd, env=env, capture_output=True, text=True, timeout=900,
    )


def _failed_cells(proc: subprocess.CompletedProcess) -> set[int]:
    return {int(n) for n in re.findall(r"^FAILED \S+::Cell (\d+)", proc.stdout, flags=re.M)}


# --------------------------------------------------------------------------- the sanitisers


def _sanitise(text: str) -> str:
    """`text` as nbval compares it: nbval.cfg's patterns, parsed by nbval, applied in order."""
    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns(SANITISERS.read_text()):
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize(("first", "second"), [
    ("[    3.5s |   9.9 min left] run 'x' in /tmp/pytest-of-a/pytest-3/x0/out | seed 42 | budget 1800s (parameter)\n",
     "[   41.0s |  29.1 min left] run 'x' in /tmp/b/out | seed 42 | budget 1800s (parameter)\n"),
    ("[    0.2s | no limit] sizing: ~53.7s per epoch (17 steps + 288 validation items); reserve: 15s\n",
     "[    0.9s | no limit] sizing: ~9.1s per epoch (17 steps + 288 validation items); reserve: 22s\n"),
    ("fold 0 epoch 1/1: train_loss 1.6604 val_loss 2.1136 accuracy 0.3993 (7.1s) *\n",
     "fold 0 epoch 1/1: train_loss 1.6604 val_loss 2.1136 accuracy 0.3993 (12.0s) *\n"),
    ("a\nre-planning: an epoch takes 7.1s, not the 53.7s planned\nb\n", "a\nb\n"),
    ("a\nfold 0 epoch 2/5: step 120/400 (30%), 0.35 s/step, ~1m38s to go, budget left 3m10s\nb\n", "a\nb\n"),
    ("embeddings: train 128/2000 images (581 img/s)\n", "embeddings: train 128/2000 images (236 img/s)\n"),
    ("maskgeration wrote 3 tile(s) in 5.35 s; MCC 0.3860\n", "maskgeration wrote 3 tile(s) in 11 s; MCC 0.3860\n"),
    ("/tmp/ipykernel_7625/739572053.py:1: UserWarning: WEIGHTS=None\n",
     "/tmp/ipykernel_98/739572053.py:1: UserWarning: WEIGHTS=None\n"),
    ("<object at 0x7f3a2b1c4d90>, written 2026-11-21 19:46:54 on host kaggle-7f9c\n",
     "<object at 0x55d0e1a2b3c4>, written 2026-11-22T08:01:02 on host colab-1b\n"),
    ("     status  score  best_epoch  epochs_done  steps  seconds stop_reason\nfold\n"
     "0      done  0.399306           1            1     17      7.2   completed\n",
     "     status  score  best_epoch  epochs_done  steps  seconds stop_reason\nfold\n"
     "0      done  0.399306           1            1     17     12.3   completed\n"),
    ("<th>0</th>\n      <td>done</td>\n      <td>0.399306</td>\n      <td>1</td>\n      <td>1</td>\n"
     "      <td>17</td>\n      <td>7.2</td>\n      <td>completed</td>",
     "<th>0</th>\n      <td>done</td>\n      <td>0.399306</td>\n      <td>1</td>\n      <td>1</td>\n"
     "      <td>17</td>\n      <td>12.3</td>\n      <td>completed</td>"),
])
def test_sanitisers_make_what_legitimately_varies_read_the_same(first, second):
    assert _sanitise(first) == _sanitise(second)


@pytest.mark.parametrize(("first", "second"), [
    ("fold 0 epoch 1/1: train_loss 1.6604 val_loss 2.1136 accuracy 0.3993 (7.1s) *\n",
     "fold 0 epoch 1/1: train_loss 1.6604 val_loss 2.1136 accuracy 0.3994 (7.1s) *\n"),
    ("fold 0: best mcc 0.2935 at epoch 1 (completed)\n", "fold 0: best mcc 0.2935 at epoch 2 (completed)\n"),
    ("CV accuracy (out-of-fold, folds [0]): 0.3993\n", "CV accuracy (out-of-fold, folds [0, 1]): 0.3993\n"),
    ("1437 train / 360 test images, 10 classes\n", "1437 train / 361 test images, 10 classes\n"),
    ("embeddings: train 128/2000 images (581 img/s)\n", "embeddings: train 256/2000 images (581 img/s)\n"),
    ("0      done  0.399306           1            1     17      7.2   completed\n",
     "0      done  0.399307           1            1     17      7.2   completed\n"),
    ("0      done  0.399306           1            1     17      7.2   completed\n",
     "0      done  0.399306           1            1     18      7.2   completed\n"),
    ("<td>done</td>\n      <td>0.399306</td>\n      <td>1</td>\n      <td>1</td>\n      <td>17</td>\n      <td>7.2</td>",
     "<td>done</td>\n      <td>0.399306</td>\n      <td>1</td>\n      <td>1</td>\n      <td>16</td>\n      <td>7.2</td>"),
    ("tabular   0.139828        0.142075     3           1      2000          340.0\n",
     "tabular   0.139828        0.142075     3           1      2000          341.0\n"),
    ("maskgeration wrote 3 tile(s) in 5.35 s; MCC 0.3860 over 3 labelled tile(s)\n",
     "maskgeration wrote 3 tile(s) in 5.35 s; MCC 0.3861 over 3 labelled tile(s)\n"),
    ("model.pth (54.78 MB), 1 fold(s)\n", "model.pth (54.79 MB), 1 fold(s)\n"),
    ("rows: 360 (sample: 360)\n", "rows: 359 (sample: 360)\n"),
])
def test_sanitisers_keep_scores_predictions_and_counts(first, second):
    assert _sanitise(first) != _sanitise(second)


# --------------------------------------------------------------------------- strict nbval on each notebook


@pytest.mark.parametrize("notebook", sorted(FIRST_RUNS))
def test_a_second_execution_reproduces_every_output(notebook, request, tmp_path):
    first: NotebookRun = request.getfixturevalue(FIRST_RUNS[notebook])
    assert first.executed.name == f"{notebook}.ipynb"
    before = json.loads((first.out / "run.json").read_text())
    cells = _code_cells(nbformat.read(first.executed, as_version=4))
    assert all(c.execution_count is not None for c in cells)
    stored = "".join(_sanitise(o.get("text", "")) for c in cells for o in c.outputs)
    assert f"{before['cv_score']:.4f}" in stored, stored[-3000:]  # the score is among what nbval compares
    out = tmp_path / first.out.name
    proc = nbval_again(first, out, name="nbval")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert re.search(rf"^{len(cells)} passed", proc.stdout, flags=re.M), proc.stdout[-2000:]
    # the second execution is a complete run of its own, with the same results
    again = json.loads((out / "run.json").read_text())
    assert again["cv_score"] == before["cv_score"] and again["budget_s"] == before["budget_s"] == 1800
    assert again["sessions"] == 1  # a fresh run, not a resume of the first one
    for run_dir in (first.out, out):
        assert json.loads((run_dir / "verification.json").read_text())["valid"] is True
    if notebook == "image_classification":
        assert "using the bundled demo" in first.stdout  # DATA_DIR = None: the demo is written and found
        assert (out / "plots" / "time_bar.png").stat().st_size > 0


# --------------------------------------------------------------------------- ... and it fails when an output changes


def test_strict_nbval_fails_when_the_seed_changes(glacier_pretrained, tmp_path):
    """Another SEED (appended to the injected parameters) trains another model: the cell printing its
    scores no longer matches the stored outputs."""
    def reseed(nb):
        _injected_parameters(nb).source += "\nSEED = 43"

    proc = nbval_again(glacier_pretrained, tmp_path / glacier_pretrained.out.name, name="seed43", edit=reseed)
    assert proc.returncode == 1, proc.stdout[-4000:]
    nb = nbformat.read(glacier_pretrained.executed, as_version=4)
    assert _score_cell(nb) in _failed_cells(proc), proc.stdout[-4000:]
    assert "Cell outputs differ" in proc.stdout


def test_strict_nbval_fails_on_a_one_digit_change_of_a_stored_score(glacier_pretrained, tmp_path):
    """The first run's stored CV score edited in its last digit: that cell, and only that cell, fails."""
    nb = nbformat.read(glacier_pretrained.executed, as_version=4)
    score_cell = _score_cell(nb)

    def bump(nb):
        for output in _code_cells(nb)[score_cell].outputs:
            if "text" in output:
                output.text = SCORE_LINE.sub(lambda m: m.group(1) + str((int(m.group(2)) + 1) % 10), output.text)

    proc = nbval_again(glacier_pretrained, tmp_path / glacier_pretrained.out.name, name="edited", edit=bump)
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert _failed_cells(proc) == {score_cell}, proc.stdout[-4000:]
    assert re.search(rf"^1 failed, {len(_code_cells(nb)) - 1} passed", proc.stdout, flags=re.M), proc.stdout[-2000:]
