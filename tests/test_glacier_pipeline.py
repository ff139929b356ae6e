"""The glacier training pipeline: configs, folds with a holdout, training-fold statistics, crops,
losses and the pixel MCC."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from kagglekit_nb.demo.glacier import make_glacier_demo
from kagglekit_nb.loaders import make_loader
from kagglekit_nb.run import start_run
from kagglekit_nb.tasks.glacier import BandStats, finetune, pretrain, training
from kagglekit_nb.tasks.glacier.bands import read_hkh_patch
from kagglekit_nb.tasks.glacier.data import CropDataset, MaskFiles, TileData, TileDataset
from kagglekit_nb.tasks.glacier.metrics import IGNORE, PIXEL_MCC
from kagglekit_nb.tasks.glacier.model import SegLoss, boundary_distance


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_glacier_demo(tmp_path_factory.mktemp("glacier") / "demo", seed=1, tile_size=64, n_patches=16,
                             n_train=10, n_test=2)


def _run(tmp_path, cfg):
    return start_run(cfg.as_dict(), run_name=cfg.RUN_NAME, output_dir=tmp_path / "out", budget=None,
                     seed=cfg.SEED, echo=lambda _m: None)


def _finetune(demo, **kw):
    base = dict(DATA_DIR=str(demo / "glacierhack"), ENCODER="resnet18", FOLDS=3, HOLDOUT=2)
    return finetune.Config(**{**base, **kw})


# --------------------------------------------------------------------------------------- metric


@pytest.mark.parametrize("seed", range(4))
def test_pixel_mcc_equals_sklearn_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 4, (3, 17, 23))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 4, target.shape))
    expected = matthews_corrcoef(target.ravel(), pred.ravel())
    assert PIXEL_MCC(target, pred) == pytest.approx(expected, abs=1e-12)
    probs = np.eye(4)[pred].transpose(0, 3, 1, 2) + rng.random((3, 4, 17, 23)) * 0.1  # argmax = pred
    assert PIXEL_MCC(target, probs) == pytest.approx(expected, abs=1e-12)


def test_pixel_mcc_ignores_padding():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (2, 8, 8))
    pred = np.where(rng.random(target.shape) < 0.7, target, 0)
    padded_t = np.full((2, 8, 12), IGNORE)
    padded_t[:, :, :8] = target
    padded_p = np.zeros((2, 8, 12), np.int64)  # whatever the model says about padding does not count
    padded_p[:, :, :8] = pred
    assert PIXEL_MCC(padded_t, padded_p) == pytest.approx(matthews_corrcoef(target.ravel(), pred.ravel()))


# --------------------------------------------------------------------------------------- config


def test_notebook_configs_check_values():
    with pytest.raises(ValueError, match="TTA='rot'"):
        finetune.Config(TTA="rot")
    with pytest.raises(ValueError, match="WINDOW=500 must be a multiple of 32"):
        finetune.Config(WINDOW=500)
    with pytest.raises(ValueError, match="BANDS='blue,ultraviolet'"):
        pretrain.Config(BANDS="blue,ultraviolet")
    with pytest.raises(ValueError, match="BALANCE"):
        finetune.Config(BALANCE=2.0)
    with pytest.raises(ValueError, match="EPOCHS='3' has the wrong type"):
        finetune.Config(EPOCHS="3")
    assert finetune.Config(TRAIN_FOLDS=2, SEEDS=3).n_models == 6


# --------------------------------------------------------------------------------------- folds


def test_holdout_tiles_are_never_trained_on_and_the_split_is_reused(demo, tmp_path):
    cfg = _finetune(demo)
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    folds = finetune.make_folds(data, cfg, run)
    assert (folds == training.HOLDOUT_FOLD).sum() == 2
    assert sorted(set(folds[folds >= 0])) == [0, 1, 2]
    held = set(np.asarray(data.names)[folds == training.HOLDOUT_FOLD])
    # every class present in the data is still in training
    train_classes = set().union(*(np.unique(data.labels[i]).tolist() for i in np.flatnonzero(folds >= 0)))
    assert train_classes == set().union(*(np.unique(lab).tolist() for lab in data.labels))
    for v in range(cfg.FOLDS):
        setup = training._setup(data, folds, cfg, run, v, None, set())
        used = {data.names[i] for i in setup.train_loader.dataset.dataset.tiles} | set(setup.val_ids)
        assert not used & held
    assert finetune.make_folds(data, cfg, run).equals(folds)  # read back from folds.csv
    with pytest.raises(ValueError, match="another split"):
        finetune.make_folds(data, dataclasses.replace(cfg, HOLDOUT=3), run)


# --------------------------------------------------------------------------------------- statistics


def test_band_statistics_come_from_the_training_fold_only(demo, tmp_path):
    cfg = _finetune(demo)
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    folds = finetune.make_folds(data, cfg, run)
    before = training._setup(data, folds, cfg, run, 0, None, set()).meta["stats"]
    val = np.flatnonzero(folds.to_numpy() == 0)
    held = np.flatnonzero(folds.to_numpy() == training.HOLDOUT_FOLD)
    for i in [*val, *held]:  # validation and held-out pixels must not move the statistics
        data.images[i] = data.images[i] * 50 + 1000
    assert training._setup(data, folds, cfg, run, 0, None, set()).meta["stats"] == before
    train = np.flatnonzero(folds.to_numpy() == 1)[0]  # a training tile of fold 0 does
    data.images[train] = data.images[train] * 50 + 1000
    assert training._setup(data, folds, cfg, run, 0, None, set()).meta["stats"] != before


def test_band_statistics_of_many_tiles_come_from_a_fixed_random_sample_of_them(demo, tmp_path, monkeypatch):
    cfg = _finetune(demo)
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    folds = finetune.make_folds(data, cfg, run)
    train = np.flatnonzero((folds.to_numpy() != 0) & (folds.to_numpy() != training.HOLDOUT_FOLD))
    monkeypatch.setattr(training, "STATS_TILES", 2)
    stats = training._setup(data, folds, cfg, run, 0, None, set()).meta["stats"]
    picked = training._stats_tiles(train, cfg, 0)
    assert len(picked) == 2 and set(picked) <= set(train)
    assert stats["count"][0] == sum(int(np.isfinite(data.read(i)[0]).sum()) for i in picked)  # two tiles' pixels
    assert stats == BandStats.fit([data.read(i) for i in picked], data.bands).to_dict()
    assert training._setup(data, folds, cfg, run, 0, None, set()).meta["stats"] == stats  # a resume matches
    monkeypatch.setattr(training, "STATS_TILES", 256)
    assert training._stats_tiles(train, cfg, 0).tolist() == train.tolist()  # fewer tiles: all of them


# --------------------------------------------------------------------------------------- data


def test_training_crops_are_a_function_of_seed_epoch_and_index(demo, tmp_path):
    cfg = _finetune(demo, CROP=32)
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    stats = BandStats.fit([data.read(i) for i in range(4)], data.bands)
    ds = CropDataset(data, range(4), stats, 32, 12, power=1.0)
    loader = make_loader(ds, 4, train=True, seed=5)
    first = [(x.clone(), y.clone()) for x, y in loader]
    again = [(x.clone(), y.clone()) for x, y in loader]
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert first[0][0].shape == (4, 5, 32, 32) and first[0][1].dtype == torch.int64
    loader.sampler.set_epoch(1)
    other = [x for x, _ in loader]
    assert not all(torch.equal(a, b) for (a, _), b in zip(first, other))


def test_balanced_crops_oversample_the_rare_class(demo, tmp_path):
    cfg = _finetune(demo)
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    stats = BandStats.fit([data.read(0)], data.bands)

    def lake_share(power):
        ds = CropDataset(data, range(len(data)), stats, 32, 200, power=power)
        rng_state = np.random.get_state()
        np.random.seed(0)
        share = np.mean([(ds[i][1] == 3).float().mean().item() for i in range(len(ds))])  # lake pixels
        np.random.set_state(rng_state)
        return share

    assert lake_share(1.0) > 1.5 * lake_share(0.0)  # lakes are small: 1/4 of centres is diluted


def test_validation_tiles_of_odd_size_are_padded_with_ignored_pixels(tmp_path):
    labels = [np.zeros((40, 50), np.uint8), np.ones((45, 33), np.uint8)]
    images = [np.random.default_rng(0).random((5, *lab.shape)).astype(np.float32) for lab in labels]
    data = TileData(names=["a", "b"], labels=labels, bands=["blue", "green", "red", "swir1", "thermal"],
                      classes=training.FINETUNE_CLASSES, groups=["a", "b"], source=tmp_path, images=images)
    ds = TileDataset(data, [0, 1], BandStats.fit(images, data.bands))
    x, y = ds[1]
    assert x.shape == (5, 64, 64) and y.shape == (64, 64)
    assert (y[:45, :33] == 1).all() and (y[45:] == IGNORE).all() and (y[:, 33:] == IGNORE).all()
    assert (x[:, 45:] == 0).all()


# --------------------------------------------------------------------------------------- loss


def test_boundary_distance_signs():
    y = np.zeros((1, 8, 8), np.int64)
    y[0, 2:6, 2:6] = 1
    y[0, 0, 0] = IGNORE
    d = boundary_distance(y, 3)
    assert d.shape == (1, 3, 8, 8)
    assert (d[0, 1, 3:5, 3:5] < 0).all()           # inside class 1: negative
    assert (d[0, 1, 7, :] > 0).all()               # outside: positive, growing with distance
    assert d[0, 1, 7, 7] > d[0, 1, 6, 6]
    assert (d[0, 2] == 1).sum() == 63              # class 2 absent: +1 everywhere but the ignored pixel
    assert (d[0, :, 0, 0] == 0).all()


def test_boundary_term_ramps_with_the_optimizer_step_count():
    model = torch.nn.Conv2d(3, 3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = SegLoss(3, focal=1.0, dice=1.0, boundary=0.5, ramp_steps=4, optimizer=opt)
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    weights = []
    for _ in range(6):
        weights.append(loss.boundary_weight())
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    assert weights == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    # the ramp lives in the optimizer's state, so a restored optimizer continues it
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(opt.state_dict())
    assert SegLoss(3, boundary=0.5, ramp_steps=4, optimizer=fresh).boundary_weight() == 0.5


def test_ndsi_score_matches_sklearn(demo, tmp_path):
    from kagglekit_nb.tasks.glacier import ndsi_baseline

    cfg = _finetune(demo)
    data = finetune.load(cfg, _run(tmp_path, cfg))
    pred = np.concatenate([ndsi_baseline(data.read(i), data.bands).ravel() for i in range(3)])
    true = np.concatenate([data.labels[i].ravel() for i in range(3)])
    assert finetune.ndsi_score(data, range(3)) == pytest.approx(matthews_corrcoef(true, pred), abs=1e-12)


# --------------------------------------------------------------------------------------- pretrained


def test_pretrained_file_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the glacier_pretrain notebook first"):
        pretrain.load_pretrained(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / pretrain.PRETRAINED_FILE)
    with pytest.raises(ValueError, match="not a glacier_pretrain output"):
        pretrain.load_pretrained(tmp_path)


def test_hkh_patches_load_by_band_name_and_group_by_scene(demo, tmp_path):
    cfg = pretrain.Config(DATA_DIR=str(demo / "hkh"), BANDS="green,swir1,elevation", FOLDS=2)
    run = _run(tmp_path, cfg)
    data = pretrain.load(cfg, run)
    assert data.bands == ["green", "swir1", "elevation"]
    full = np.load(data.patch_files[0])
    x = data.read(0, (3, 5, 32))
    assert x.shape == (3, 32, 32)
    np.testing.assert_array_equal(x[1], full[3:35, 5:37, 4])  # swir1 is Landsat-7 B5, file channel 4
    folds = pretrain.make_folds(data, cfg, run)
    by_scene = pd.DataFrame({"scene": data.groups, "fold": folds}).groupby("scene")["fold"].nunique()
    assert (by_scene == 1).all()


def test_hkh_class_maps_are_read_from_disk_when_used_not_held(demo, tmp_path):
    cfg = pretrain.Config(DATA_DIR=str(demo / "hkh"), FOLDS=2)
    data = pretrain.load(cfg, _run(tmp_path, cfg))
    assert isinstance(data.labels, MaskFiles) and len(data.labels) == len(data) == 16
    for i, (image, mask) in enumerate(zip(data.patch_files, data.labels.paths)):
        np.testing.assert_array_equal(data.labels[i], read_hkh_patch(image, mask)[1])
        assert data.shape(i) == data.labels[i].shape == (64, 64)
    np.testing.assert_array_equal(data.labels[-1], data.labels[15])
    with pytest.raises(IndexError):
        data.labels[16]
    with pytest.raises(ValueError, match="read-only"):
        data.labels[0][0, 0] = 1  # the kept map is shared: nobody may change it
    # Nothing is cached beyond the map read last: a changed mask file is what the next read sees.
    copy = tmp_path / "mask.npy"
    np.save(copy, np.ones((64, 64, 2), np.uint8))
    data.labels.paths[3] = copy
    assert data.labels[3].max() == 2 and data.labels[4].shape == (64, 64)


def test_hkh_crops_from_maps_on_disk_equal_those_from_maps_in_memory(demo, tmp_path):
    cfg = pretrain.Config(DATA_DIR=str(demo / "hkh"), FOLDS=2)
    data = pretrain.load(cfg, _run(tmp_path, cfg))
    in_memory = dataclasses.replace(data, labels=[data.labels[i].copy() for i in range(len(data))])
    stats = BandStats.fit([data.read(0)], data.bands)
    tiles = [1, 2, 5, 8, 13]
    lazy = make_loader(CropDataset(data, tiles, stats, 32, 24, power=1.0), 8, train=True, seed=2)
    held = make_loader(CropDataset(in_memory, tiles, stats, 32, 24, power=1.0), 8, train=True, seed=2)
    pairs = list(zip(lazy, held))
    assert len(pairs) == 3
    for (x1, y1), (x2, y2) in pairs:
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    seen = torch.cat([y for (_, y), _ in pairs])
    assert set(torch.unique(seen).tolist()) == {0, 1, 2}  # background, clean ice and debris all drawn


def test_fewer_scenes_than_folds_splits_patches_and_warns(demo, tmp_path):
    logged = []
    cfg = pretrain.Config(DATA_DIR=str(demo / "hkh"), FOLDS=5)
    run = start_run(cfg.as_dict(), run_name=cfg.RUN_NAME, output_dir=tmp_path / "out", seed=cfg.SEED,
                    echo=logged.append)
    data = pretrain.load(cfg, run)
    folds = pretrain.make_folds(data, cfg, run)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    assert any("only 2 scenes for FOLDS=5" in m for m in logged)


# --------------------------------------------------------------------------------------- the verbs


def test_nothing_trained_pretrain_hands_on_nothing_and_says_why(demo, tmp_path):
    cfg = pretrain.Config(DATA_DIR=str(demo / "hkh"), ENCODER="resnet18", FOLDS=2)
    run = _run(tmp_path, cfg)
    data = pretrain.load(cfg, run)
    folds = pretrain.make_folds(data, cfg, run)
    assert pretrain.predict(data, None, cfg, run) is None  # no checkpoint in the run folder
    assert pretrain.write_submission(data, None, cfg, run) is None
    report = pretrain.finish(data, None, cfg, run)
    assert report.valid is False and "no pretrained model" in report.errors[0]
    assert json.loads((run.dir / "verification.json").read_text())["valid"] is False
    assert set(pretrain.plot_results(run, data, None, folds)) <= {"time_bar"}


def test_nothing_trained_finetune_exports_and_verifies_the_ndsi_package(demo, tmp_path):
    cfg = _finetune(demo, TTA="none")
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    folds = finetune.make_folds(data, cfg, run)
    ensemble = finetune.predict(data, None, cfg, run)
    assert ensemble.states == [] and ensemble.members == []
    path = finetune.write_submission(data, ensemble, cfg, run)
    assert sorted(p.name for p in path.iterdir()) == ["model.pth", "solution.py"]
    assert torch.load(path / "model.pth", weights_only=True)["models"] == []  # the NDSI rule
    report = finetune.finish(data, path, cfg, run)  # the held-out tiles, read back from folds.csv
    assert report.valid and report.stats["tiles"] == 2 and report.stats["labelled_tiles"] == 2
    holdout = list(np.flatnonzero(folds.to_numpy() == training.HOLDOUT_FOLD))
    assert run.record["scores"]["ndsi_mcc_holdout"] == pytest.approx(finetune.ndsi_score(data, holdout))
    assert report.stats["mcc"] == pytest.approx(run.record["scores"]["ndsi_mcc_holdout"], abs=1e-5)
    figures = finetune.plot_results(run, data, None, folds)
    assert "overlays" in figures and figures["overlays"].is_file()


def test_the_ndsi_package_is_there_before_the_tiles_are_read(demo, tmp_path, monkeypatch):
    cfg = _finetune(demo, TTA="none")
    run = _run(tmp_path, cfg)

    def no_tiles(*args, **kwargs):
        raise ValueError("the tiles cannot be read")

    monkeypatch.setattr(finetune, "find_band_dirs", no_tiles)
    with pytest.raises(ValueError, match="the tiles cannot be read"):
        finetune.load(cfg, run)
    package = run.dir / finetune.PACKAGE_DIR
    assert sorted(p.name for p in package.iterdir()) == ["model.pth", "solution.py"]
    assert torch.load(package / "model.pth", weights_only=True)["models"] == []  # the NDSI rule


def test_a_package_that_does_not_beat_ndsi_is_replaced_by_it(demo, tmp_path, monkeypatch):
    cfg = _finetune(demo, TTA="none")
    run = _run(tmp_path, cfg)
    data = finetune.load(cfg, run)
    finetune.make_folds(data, cfg, run)  # folds.csv, which `finish` reads the held-out tiles from
    path = finetune.write_submission(data, finetune.predict(data, None, cfg, run), cfg, run)
    run.record["package"]["models"] = ["0 (best)"]  # as if trained: it scores what NDSI scores, no better
    finetune.finish(data, path, cfg, run)
    assert run.record["submitted"] == "ndsi" and run.record["package"]["replaced_by_ndsi"] is True
    assert torch.load(path / "model.pth", weights_only=True)["models"] == []
