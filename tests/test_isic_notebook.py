"""The ISIC notebook end to end through `kagglekit run isic` on a small demo, under a 90 s budget."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import run_cli

from kagglekit_nb.metrics import partial_auc

pytestmark = pytest.mark.notebook

BUDGET_S = 90
# A random ranking scores 0.02 (the diagonal's area above 80% TPR). On this small demo (18 malignant
# lesions) the combined model does not beat both single ones for every demo seed (it lost to the
# tabular one for 1 of 4 seeds tried), so each model is only required to clearly beat chance here; on
# the default-size demo (60 malignant lesions) it won for each of the 3 seeds tried.
CHANCE = 0.02


@pytest.fixture(scope="module")
def isic_run(tmp_path_factory):
    from kagglekit_nb.demo.isic import make_isic_demo

    root = tmp_path_factory.mktemp("isic_notebook")
    data = make_isic_demo(root / "data", seed=0, n_train=600, n_test=150)
    out = root / "out"
    proc = run_cli("run", "isic", "--data", str(data), "--out", str(out), "--budget", f"{BUDGET_S}s")
    return proc, data, out


def test_isic_run_reports_three_oof_scores_and_a_verified_submission(isic_run):
    proc, data, out = isic_run
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    verification = json.loads((out / "verification.json").read_text())
    assert verification["valid"] is True and verification["kind"] == "binary_proba"
    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    assert list(sub.columns) == ["isic_id", "target"] and sub["isic_id"].tolist() == sample["isic_id"].tolist()
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 10
    solution = pd.read_csv(data / "solution.csv").set_index("isic_id").loc[sub["isic_id"], "target"]
    assert partial_auc(solution.to_numpy(), sub["target"].to_numpy()) > 2 * CHANCE

    record = json.loads((out / "run.json").read_text())
    assert record["budget_s"] == BUDGET_S and record["elapsed_s"] <= BUDGET_S
    assert set(record["oof_pauc"]) == {"tabular", "image", "combined"}
    for name, score in record["oof_pauc"].items():
        assert 2.5 * CHANCE < score <= 0.2, (name, score)
    assert record["submitted_model"] == "combined" and record["cv_score"] == record["oof_pauc"]["combined"]
    assert record["embeddings"]["train_rows"] == 600 and record["embeddings"]["test_rows"] == 150
    assert set(record["phases"]) >= {"setup", "embeddings", "features", "train", "predict", "verify"}
    for name in ("tabular", "image", "combined"):
        assert f"{name} " in proc.stdout  # the OOF table is printed
    assert (out / "folds.csv").exists()


def test_isic_rerun_reuses_folds_embeddings_and_fits(isic_run):
    _, data, out = isic_run
    before = json.loads((out / "run.json").read_text())
    folds = (out / "folds.csv").read_bytes()
    again = run_cli("run", "isic", "--data", str(data), "--out", str(out), "--budget", f"{BUDGET_S}s")
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads((out / "run.json").read_text())
    assert after["sessions"] == before["sessions"] + 1
    assert after["embeddings"]["computed"] == 0 and after["embeddings"]["cached"] == 750
    assert "fit(s) reused" in again.stdout
    assert after["oof_pauc"] == before["oof_pauc"]
    assert (out / "folds.csv").read_bytes() == folds
