"""Tests for kagglekit_nb.tasks.glacier.merge (`kagglekit blend` of glacier runs): run folders laid out as
the fine-tune leaves them (package, folds.csv, holdout/) on the demo tiles, with small untrained models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from kagglekit_nb.demo.glacier import make_glacier_demo
from kagglekit_nb.ensemble import blend_runs
from kagglekit_nb.tasks.glacier import HACK_BANDS, HACK_CHANNELS, BandStats, build_unet, find_band_dirs, list_tiles
from kagglekit_nb.tasks.glacier.package import export_code_package, write_ndsi_package

BANDS = list(HACK_BANDS)


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> Path:
    root = make_glacier_demo(tmp_path_factory.mktemp("glacier") / "demo", tile_size=64, n_train=5, n_test=1,
                             n_patches=1)
    return root / "glacierhack" / "Train"


@pytest.fixture(scope="module")
def stats(train) -> dict:
    dirs = find_band_dirs(train)
    return BandStats.from_files({b: dirs[b] for b in BANDS}, list_tiles({b: dirs[b] for b in BANDS})).to_dict()


def make_run(folder: Path, train: Path, states: list, stats: dict, *, holdout: tuple[str, ...] = ("img001.tif",),
             **settings) -> Path:
    """A fine-tune run folder: package/ (these states, or the NDSI rule), folds.csv (`holdout` at fold -1),
    holdout/ (those tiles with their labels) and run.json."""
    names = sorted(p.name for p in (train / "Band1").iterdir())
    folder.mkdir(parents=True)
    pd.DataFrame({"id": names, "fold": [-1 if n in holdout else 0 for n in names]}).to_csv(folder / "folds.csv",
                                                                                           index=False)
    for sub in [*BANDS, "labels"]:
        (folder / "holdout" / sub).mkdir(parents=True)
        for n in holdout:
            shutil.copyfile(train / sub / n, folder / "holdout" / sub / n)
    if states:
        args = {"encoder": "resnet18", "band_folders": BANDS, "band_names": list(HACK_CHANNELS), "stats": stats,
                "window": 64, "overlap": 16, "tta": ("none",)}
        export_code_package(folder / "package", states, **{**args, **settings}, log=lambda m: None)
    else:
        write_ndsi_package(folder / "package")
    (folder / "run.json").write_text(json.dumps({"scores": {"ndsi_mcc_holdout": 0.5}}))
    return folder


def _states(seed: int, n: int = 1) -> list:
    torch.manual_seed(seed)
    return [build_unet("resnet18", in_channels=5, n_classes=4).state_dict() for _ in range(n)]


def test_blend_merges_the_fold_models_when_they_score_at_least_the_best_run(tmp_path, train, stats):
    """Two runs holding the same model: the merged package (both models, each with its statistics)
    predicts what each does, so it scores the same and is written as the blend, verified. (A merged
    package that scores lower, and a run holding the NDSI rule: tests/test_glacier_notebooks.py, on
    the fine-tune's own runs.)"""
    states = _states(0)
    a = make_run(tmp_path / "A", train, states, stats)
    b = make_run(tmp_path / "B", train, states, {**stats, "mean": [m + 1e-9 for m in stats["mean"]]})
    lines: list[str] = []
    from kagglekit_nb.tasks.glacier.merge import blend_packages

    result = blend_packages([a, b], tmp_path / "blend", log=lines.append)
    report = json.loads((tmp_path / "blend" / "blend.json").read_text())
    assert report["submitted"] == "blend" and report["valid"] and result.valid
    assert report["runs"]["A"]["holdout_mcc"] == report["runs"]["B"]["holdout_mcc"] == report["merged_score"]
    assert report["weights"] == {"A": 0.5, "B": 0.5} and report["holdout_tiles"] == ["img001.tif"]
    shipped = torch.load(tmp_path / "blend" / "package" / "model.pth", weights_only=True)
    assert len(shipped["models"]) == 2 and shipped["model_stats"][1]["mean"] == pytest.approx(
        [m + 1e-9 for m in stats["mean"]])
    assert all(torch.equal(shipped["models"][1][k], states[0][k].float()) for k in states[0])
    verification = json.loads((tmp_path / "blend" / "verification.json").read_text())
    assert verification["valid"] and verification["kind"] == "glacier_code_package"
    assert verification["stats"]["mcc"] == report["score"] and verification["stats"]["labelled_tiles"] == 1
    assert list(result.table.columns) == ["holdout_mcc", "weight"] and result.table.loc["blend", "weight"] == 1.0
    assert any("merged package (2 fold models of 2 runs)" in line for line in lines)


@pytest.mark.parametrize("settings, phrase", [
    ({"encoder": "resnet34"}, "ENCODER differs (encoder 'resnet18' vs 'resnet34')"),
    ({"window": 32}, "WINDOW differs (window 64 vs 32)"),
    ({"tta": ("none", "hflip")}, "TTA differs"),
])
def test_runs_whose_packages_differ_are_not_merged(tmp_path, train, stats, settings, phrase):
    a = make_run(tmp_path / "A", train, _states(0), stats)
    states = [build_unet("resnet34", in_channels=5, n_classes=4).state_dict()] if "encoder" in settings \
        else _states(0)
    b = make_run(tmp_path / "B", train, states, stats, **settings)
    with pytest.raises(ValueError, match="runs A and B cannot be merged into one package: " + phrase.replace("(", r"\(")
                       .replace(")", r"\)")):
        blend_runs([a, b], tmp_path / "blend")
    assert not (tmp_path / "blend").exists()


def test_runs_must_hold_out_the_same_tiles_and_be_of_one_notebook(tmp_path, train, stats):
    a = make_run(tmp_path / "A", train, [], stats)
    b = make_run(tmp_path / "B", train, [], stats, holdout=("img002.tif",))
    with pytest.raises(ValueError, match=r"runs A and B hold out different tiles \(img001.tif vs img002.tif\)"):
        blend_runs([a, b], tmp_path / "blend")
    c = tmp_path / "C"
    c.mkdir()
    (c / "labels.json").write_text("{}")
    with pytest.raises(ValueError, match="A submit a glacier code package, C do not"):
        blend_runs([a, c], tmp_path / "blend")
    with pytest.raises(ValueError, match="--metric and --sample do not apply"):
        blend_runs([a, b], tmp_path / "blend", metric="accuracy")
    none = make_run(tmp_path / "D", train, [], stats, holdout=())
    with pytest.raises(ValueError, match=r"run D holds out no tiles \(HOLDOUT = 0\)"):
        blend_runs([none, a], tmp_path / "blend")
