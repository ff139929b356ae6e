"""The glacier notebooks end to end through `kagglekit run`: pretrain on HKH patches, then fine-tune
with the pretrained weights, killed mid-fold and resumed, ending in a verified code package."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_resume import _kill_when, _step_files

from conftest import glacier_finetune_command, run_cli
from kagglekit_nb.tasks.glacier import HACK_BANDS, HACK_CHANNELS
from kagglekit_nb.tasks.glacier.finetune import TTA_CHOICES

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

    # `kagglekit blend` of the two runs: one split, the same held-out tiles and the same models, so the
    # merged package (when they hold models) scores what each does and is the blend; NDSI packages hold
    # no models, and the blend is then a copy of the first
    proc = run_cli("blend", str(straight), str(killed), "--out", str(tmp_path / "blend"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    blended = json.loads((tmp_path / "blend" / "blend.json").read_text())
    shipped_score = scores["package_mcc_holdout"] if trained_wins else scores["ndsi_mcc_holdout"]
    assert blended["runs"]["finetune"]["holdout_mcc"] == blended["runs"]["killed"]["holdout_mcc"]
    assert blended["runs"]["killed"]["holdout_mcc"] == pytest.approx(shipped_score, abs=1e-6)
    assert blended["submitted"] == ("blend" if trained_wins else "finetune") and blended["valid"]
    assert blended["holdout_tiles"] == sorted(p.name for p in (killed / "holdout" / "labels").iterdir())
    merged = torch.load(tmp_path / "blend" / "package" / "model.pth", weights_only=True)
    assert len(merged["models"]) == 2 * len(shipped["models"])
    assert "held-out tile(s); blend:" in proc.stdout and "holdout_mcc" in proc.stdout

    # the trained fold model, two copies that call every pixel a lake, and the NDSI rule: the merged
    # package (trained + 2 lake models; NDSI adds none) calls every pixel a lake, scores below the best
    # single package, and the blend is a copy of that package
    from kagglekit_nb.cv import load_fold_model
    from kagglekit_nb.tasks.glacier.merge import blend_packages
    from kagglekit_nb.tasks.glacier.package import export_code_package, write_ndsi_package

    weights, meta = load_fold_model(straight / "checkpoints" / "fold0" / "best.ckpt")
    config = straight_record["config"]
    lake = {**weights, "segmentation_head.0.bias": torch.tensor([0.0, 0.0, 0.0, 100.0])}
    runs = {}
    for name, states in (("trained", [weights]), ("lake", [lake, lake]), ("ndsi", [])):  # lake: 2 of 3 votes
        folder = tmp_path / name
        folder.mkdir()
        shutil.copyfile(straight / "folds.csv", folder / "folds.csv")
        shutil.copytree(straight / "holdout", folder / "holdout")
        if states:
            export_code_package(folder / "package", states, encoder=config["ENCODER"], band_folders=list(HACK_BANDS),
                                band_names=list(HACK_CHANNELS), stats=meta["stats"], window=config["WINDOW"],
                                overlap=config["OVERLAP"], tta=TTA_CHOICES[config["TTA"]], log=lambda m: None)
        else:
            write_ndsi_package(folder / "package")
        runs[name] = folder
    result = blend_packages(list(runs.values()), tmp_path / "blend2", log=lambda m: None)
    report = json.loads((tmp_path / "blend2" / "blend.json").read_text())
    assert report["runs"]["trained"]["holdout_mcc"] == pytest.approx(scores["package_mcc_holdout"], abs=1e-6)
    assert report["runs"]["ndsi"]["holdout_mcc"] == pytest.approx(scores["ndsi_mcc_holdout"], abs=1e-6)
    assert report["runs"]["lake"]["holdout_mcc"] == pytest.approx(0.0, abs=1e-6)
    assert report["merged_score"] == pytest.approx(0.0, abs=1e-6)
    best = "trained" if trained_wins else "ndsi"
    assert report["submitted"] == best and result.valid and result.score == report["runs"][best]["holdout_mcc"]
    assert (tmp_path / "blend2" / "package" / "model.pth").read_bytes() == \
        (runs[best] / "package" / "model.pth").read_bytes()
