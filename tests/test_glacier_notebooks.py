"""The glacier notebooks end to end through `kagglekit run`: pretrain on HKH patches, then fine-tune
with the pretrained weights, killed mid-fold and resumed, ending in a verified code package."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_resume import _env, _kill_when, _step_files

from conftest import ROOT, run_cli

pytestmark = pytest.mark.notebook

SMALL = ["-p", "ENCODER", "resnet18", "-p", "SAMPLES_PER_EPOCH", "48", "-p", "MIN_EPOCHS", "1"]
FINETUNE = [*SMALL, "-p", "FOLDS", "3", "-p", "TRAIN_FOLDS", "1", "-p", "EPOCHS", "2", "-p", "HOLDOUT", "3",
            "-p", "TTA", "none", "-p", "CHECKPOINT_EVERY", "1s", "-p", "RUN_NAME", "glacier_resume"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("glacier") / "demo"
    proc = run_cli("demo", "glacier", "--out", str(out), "--tile-size", "64")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def pretrained(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "out"
    proc = run_cli("run", "glacier_pretrain", "--data", str(demo / "hkh"), "--out", str(out), *SMALL,
                   "-p", "EPOCHS", "2", "-p", "BANDS", "blue,green,red,nir,swir1,swir2,thermal")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return out


def test_pretrain_saves_weights_with_band_names_and_statistics(pretrained):
    payload = torch.load(pretrained / "glacier_pretrained.pth", weights_only=True)
    assert payload["band_names"] == ["blue", "green", "red", "nir", "swir1", "swir2", "thermal"]
    assert len(payload["stats"]["mean"]) == 7 and payload["encoder"] == "resnet18"
    assert payload["state_dict"]["encoder.conv1.weight"].shape[1] == 7
    verification = json.loads((pretrained / "verification.json").read_text())
    assert verification["valid"] is True
    # four of the five GlacierHack bands are mapped by name; the fifth would come from the mean kernel
    assert set(verification["stats"]["mapped"]) == {"blue", "green", "red", "swir1", "thermal"}
    record = json.loads((pretrained / "run.json").read_text())
    assert record["folds_done"] == [0] and record["cv_score"] > 0


def _finetune(demo: Path, out: Path, pretrained: Path) -> list[str]:
    return [sys.executable, "-m", "kagglekit_nb", "run", "glacier_finetune", "--data", str(demo / "glacierhack"),
            "--out", str(out), "-p", "PRETRAINED", str(pretrained), *FINETUNE]


def _best_weights(out: Path, k: int) -> dict[str, torch.Tensor]:
    from kagglekit_nb.cv import load_fold_model

    return load_fold_model(out / "checkpoints" / f"fold{k}" / "best.ckpt")[0]


def test_finetune_killed_mid_fold_resumes_exactly_and_exports_a_verified_package(demo, pretrained, tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run(_finetune(demo, straight, pretrained), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "initialised from glacier_pretrained.pth" in done.stdout

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_finetune(demo, killed, pretrained), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, killed, lambda out: any("fold0" in str(p) for p in _step_files(out)), random.Random(7))
    assert not (killed / "package").exists()
    again = subprocess.run(_finetune(demo, killed, pretrained), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-3000:]
    assert "fold 0: resumed from" in again.stdout

    record = json.loads((killed / "run.json").read_text())
    assert record["resumed_from"][0]["fold"] == 0 and record["sessions"] == 2
    straight_record = json.loads((straight / "run.json").read_text())
    assert record["cv_score"] == straight_record["cv_score"]
    for k in (0,):
        a, b = _best_weights(killed, k), _best_weights(straight, k)
        assert all(torch.equal(a[name], b[name]) for name in a), k

    # the package: solution.py + model.pth, run in a fresh process on the three held-out tiles
    package = killed / "package"
    assert sorted(p.name for p in package.iterdir()) == ["model.pth", "solution.py"]
    verification = json.loads((killed / "verification.json").read_text())
    assert verification["valid"] is True and verification["kind"] == "glacier_code_package"
    assert verification["stats"]["tiles"] == 3 and verification["stats"]["labelled_tiles"] == 3
    scores = record["scores"]
    assert scores["package_mcc_holdout"] == verification["stats"]["mcc"]
    assert 0 < scores["ndsi_mcc_holdout"] < 1 and scores["package_mcc_holdout"] > 0
    assert (package / "model.pth").stat().st_size <= 300 * 2**20
