"""The glacier notebooks end to end through `kagglekit run`: pretrain on HKH patches, then fine-tune
with the pretrained weights, killed mid-fold and resumed, ending in a verified code package."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
from test_resume import _kill_when, _step_files

from conftest import glacier_finetune_command

pytestmark = pytest.mark.notebook


def test_pretrain_saves_weights_with_band_names_and_statistics(glacier_pretrained):
    pretrained = glacier_pretrained.out
    assert "using the generated demo (64px)" in glacier_pretrained.stdout  # DATA_DIR = None: the demo
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


def _best_weights(out: Path, k: int) -> dict[str, torch.Tensor]:
    from kagglekit_nb.cv import load_fold_model

    return load_fold_model(out / "checkpoints" / f"fold{k}" / "best.ckpt")[0]


def test_finetune_killed_mid_fold_resumes_exactly_and_exports_a_verified_package(glacier_workdir, glacier_pretrained,
                                                                                glacier_finetuned, tmp_path):
    straight = glacier_finetuned.out
    assert "initialised from glacier_pretrained.pth" in glacier_finetuned.stdout

    killed = tmp_path / "killed"
    command = glacier_finetune_command(killed, glacier_pretrained.out)
    proc = subprocess.Popen(command, cwd=glacier_workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, killed, lambda out: any("fold0" in str(p) for p in _step_files(out)), random.Random(7))
    # killed mid-training: the emergency baseline (the NDSI package, written before any tile was read)
    # is there, with no trained model in it
    early = torch.load(killed / "package" / "model.pth", weights_only=True)
    assert early["models"] == [] and early["encoder"] is None
    again = subprocess.run(command, cwd=glacier_workdir, capture_output=True, text=True, timeout=900)
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
    assert 0 < scores["ndsi_mcc_holdout"] < 1 and scores["package_mcc_holdout"] > 0
    # the package submitted is the trained one only when it beats the NDSI rule on the held-out tiles
    trained_wins = round(scores["package_mcc_holdout"], 6) > round(scores["ndsi_mcc_holdout"], 6)
    assert record["submitted"] == ("model" if trained_wins else "ndsi")
    assert record["submitted"] == straight_record["submitted"]
    shipped = torch.load(package / "model.pth", weights_only=True)
    assert (len(shipped["models"]) > 0) == trained_wins
    assert (package / "model.pth").stat().st_size <= 300 * 2**20
