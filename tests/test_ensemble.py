"""Tests for kagglekit_nb.ensemble: the checks that runs can be blended, and a blend of two runs that
are each right on a different half of the rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kagglekit_nb.ensemble import blend_runs, load_predictions, save_predictions

CLASSES = ["cat", "dog", "eel"]
N, N_TEST = 40, 6


def _run(folder: Path, oof: np.ndarray, *, classes=CLASSES, ids=None, folds=None, metric="accuracy",
         sample: Path | None = None) -> Path:
    """A fake finished classification run folder: labels.json, run.json, folds.csv, predictions.npz."""
    folder.mkdir(parents=True)
    ids = [f"r{i}" for i in range(N)] if ids is None else ids
    targets = np.arange(N) % len(CLASSES)
    (folder / "labels.json").write_text(json.dumps({"classes": classes, "kind": "label", "id_col": "id",
                                                    "target_cols": ["label"]}))
    (folder / "run.json").write_text(json.dumps({"config": {"METRIC": metric}}))
    pd.DataFrame({"id": ids, "fold": np.arange(N) % 2 if folds is None else folds}).to_csv(folder / "folds.csv",
                                                                                          index=False)
    test = np.eye(len(CLASSES))[np.arange(N_TEST) % len(CLASSES)]
    save_predictions(folder, train_ids=ids, targets=targets, oof=oof, test_ids=[f"t{i}" for i in range(N_TEST)],
                     test=test, candidate="deep", sample=sample or folder.parent / "sample_submission.csv")
    return folder


def _oofs() -> tuple[np.ndarray, np.ndarray]:
    """Two runs, each sure and right on one half of the rows and unsure (slightly wrong) on the other."""
    targets = np.arange(N) % len(CLASSES)
    right = np.eye(len(CLASSES))[targets] * 0.6 + 0.4 / len(CLASSES)
    wrong = np.eye(len(CLASSES))[(targets + 1) % len(CLASSES)] * 0.2 + 0.8 / len(CLASSES)
    first = np.arange(N) < N // 2
    return np.where(first[:, None], right, wrong), np.where(first[:, None], wrong, right)


@pytest.fixture
def sample(tmp_path) -> Path:
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id": [f"t{i}" for i in range(N_TEST)], "label": "cat"}).to_csv(path, index=False)
    return path


def test_complementary_runs_blend_above_the_best_single(tmp_path, sample):
    a, b = _oofs()
    runs = [_run(tmp_path / "A", a), _run(tmp_path / "B", b)]
    result = blend_runs(runs, tmp_path / "blend")
    assert result.scores == {"A": 0.5, "B": 0.5}
    assert result.score == 1.0 and result.valid
    assert set(result.weights) == {"A", "B"} and abs(sum(result.weights.values()) - 1) < 1e-9
    assert min(result.weights.values()) > 0
    sub = pd.read_csv(tmp_path / "blend" / "submission.csv")
    assert sub["label"].tolist() == [CLASSES[i % 3] for i in range(N_TEST)]
    saved = json.loads((tmp_path / "blend" / "blend.json").read_text())
    assert saved["score"] == 1.0 and saved["runs"]["A"]["oof_score"] == 0.5 and saved["sample"] == str(sample.resolve())
    assert json.loads((tmp_path / "blend" / "verification.json").read_text())["valid"] is True
    assert result.table.loc["blend", "oof_score"] == 1.0
    assert result.scored_on == f"out-of-fold {saved['metric']} on {result.rows} rows" and result.rows > 0


def test_a_run_in_another_row_order_is_aligned_by_id(tmp_path, sample):
    a, b = _oofs()
    order = np.arange(N)[::-1]
    ids = [f"r{i}" for i in range(N)]
    runs = [_run(tmp_path / "A", a), tmp_path / "B"]
    _run(runs[1], b[order], ids=[ids[i] for i in order], folds=(np.arange(N) % 2)[order])
    # targets follow the rows: rewrite B's with the reordered targets
    saved = load_predictions(runs[1])
    save_predictions(runs[1], train_ids=saved["train_ids"], targets=(np.arange(N) % 3)[order], oof=saved["oof"],
                     test_ids=saved["test_ids"], test=saved["test"], candidate="deep", sample=sample)
    assert blend_runs(runs, tmp_path / "blend").score == 1.0


def test_runs_that_differ_cannot_be_blended(tmp_path, sample):
    a, b = _oofs()
    base = _run(tmp_path / "A", a)
    with pytest.raises(ValueError, match=r"run B .* different classes"):
        blend_runs([base, _run(tmp_path / "B", b, classes=["cat", "dog", "fox"])], tmp_path / "o")
    ids = [f"r{i}" for i in range(N - 1)] + ["other"]
    with pytest.raises(ValueError, match=r"run C .* different training ids: 1 only in C \(other\), 1 only in A \(r39\)"):
        blend_runs([base, _run(tmp_path / "C", b, ids=ids)], tmp_path / "o")
    with pytest.raises(ValueError, match=r"run D .* use different folds .*40 ids in another fold"):
        blend_runs([base, _run(tmp_path / "D", b, folds=1 - np.arange(N) % 2)], tmp_path / "o")
    with pytest.raises(ValueError, match="different metrics"):
        blend_runs([base, _run(tmp_path / "E", b, metric="log_loss")], tmp_path / "o")
    assert blend_runs([base, tmp_path / "E"], tmp_path / "o", metric="accuracy").score == 1.0
    (tmp_path / "F").mkdir()
    with pytest.raises(FileNotFoundError, match="labels.json is missing"):
        blend_runs([base, tmp_path / "F"], tmp_path / "o")
    with pytest.raises(ValueError, match="at least two run folders"):
        blend_runs([base], tmp_path / "o")
