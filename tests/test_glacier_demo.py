"""Tests for kagglekit_nb.demo.glacier: both layouts, their encodings, and physically plausible values."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from kagglekit_nb.demo import glacier as demo
from kagglekit_nb.demo.glacier import make_glacier_demo
from kagglekit_nb.tasks import glacier as task

from kagglekit_nb.cli import main

TILE = 64
N_PATCHES, N_TRAIN, N_TEST = 10, 8, 3
BANDS = ("Band1", "Band2", "Band3", "Band4", "Band5")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_glacier_demo(tmp_path_factory.mktemp("glacier") / "demo", seed=1, tile_size=TILE,
                             n_patches=N_PATCHES, n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def train(out):
    """Training tiles as (N, 5, H, W) float32 and class indices (N, H, W)."""
    root = out / "glacierhack" / "Train"
    names = sorted(p.name for p in (root / "labels").iterdir())
    x = np.stack([np.stack([tifffile.imread(root / b / n) for b in BANDS]) for n in names])
    y = np.stack([tifffile.imread(root / "labels" / n) for n in names])
    return x, np.searchsorted(task.LABEL_VALUES, y)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_layout_and_file_names(out):
    hack = out / "glacierhack"
    assert sorted(p.name for p in hack.iterdir()) == ["Test", "Train", "solution"]
    assert _names(hack / "Train") == [*BANDS, "labels"]
    assert _names(hack / "Test") == list(BANDS)  # no labels next to the test tiles
    train_names = [f"img{i:03d}.tif" for i in range(1, N_TRAIN + 1)]
    test_names = [f"img{i:03d}.tif" for i in range(N_TRAIN + 1, N_TRAIN + N_TEST + 1)]
    for folder in [*BANDS, "labels"]:
        assert _names(hack / "Train" / folder) == train_names
    for band in BANDS:
        assert _names(hack / "Test" / band) == test_names
    assert _names(hack / "solution") == test_names

    patches = _names(out / "hkh" / "patches")
    assert len(patches) == 2 * N_PATCHES
    assert all(re.fullmatch(r"slice_\d+_(img|mask)_\d{3}\.npy", p) for p in patches)
    images = [p for p in patches if "_img_" in p]
    assert sorted(p.replace("_img_", "_mask_") for p in images) == [p for p in patches if "_mask_" in p]
    assert {p.split("_img_")[0] for p in images} == {"slice_0", "slice_1"}  # 8 + 2 patches


def test_hkh_patches_have_15_channels_and_2_mask_channels(out):
    pairs = task.find_hkh_patches(out / "hkh")
    assert len(pairs) == N_PATCHES
    nan_patches = 0
    for img_path, mask_path in pairs:
        img, mask = np.load(img_path), np.load(mask_path)
        assert img.shape == (TILE, TILE, 15) and img.dtype == np.float32
        assert mask.shape == (TILE, TILE, 2) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert not (mask[..., 0] & mask[..., 1]).any()  # a pixel is clean ice or debris, not both
        nodata = np.isnan(img[..., 0])
        nan_patches += nodata.any()
        assert not mask[nodata].any()  # no-data pixels are unlabelled
        assert (img[nodata][:, demo.HKH_CHANNEL_IDS.index("BQA")] == 1.0).all()  # flagged as fill
        v = img[~nodata]
        ch = dict(zip(demo.HKH_CHANNEL_IDS, v.T))
        assert (ch["B1"] >= 0).all() and (ch["B7"] <= 1).all()
        assert 230 < ch["B6_VCID_1"].min() and ch["B6_VCID_1"].max() < 320  # kelvin
        assert np.abs(ch["B6_VCID_2"] - ch["B6_VCID_1"]).max() < 0.5
        assert 2000 < ch["elevation"].min() and ch["elevation"].max() < 8500  # metres
        assert 0 <= ch["slope"].min() and ch["slope"].max() < 90  # degrees
        assert set(np.unique(ch["BQA"])) <= {672.0, 752.0, 3744.0}
        np.testing.assert_allclose(ch["NDSI"], (ch["B2"] - ch["B5"]) / (ch["B2"] + ch["B5"]), atol=1e-6)
        np.testing.assert_allclose(ch["NDWI"], (ch["B2"] - ch["B4"]) / (ch["B2"] + ch["B4"]), atol=1e-6)
        np.testing.assert_allclose(ch["NDVI"], (ch["B4"] - ch["B3"]) / (ch["B4"] + ch["B3"]), atol=1e-6)
    assert nan_patches >= 1  # the scene corner wedge


def test_glacierhack_dtypes_and_label_encoding(out, train):
    hack = out / "glacierhack"
    band = tifffile.imread(hack / "Train" / "Band1" / "img001.tif")
    assert band.shape == (TILE, TILE) and band.dtype == np.float32
    for folder in (hack / "Train" / "labels", hack / "solution"):
        for path in folder.iterdir():
            label = tifffile.imread(path)
            assert label.dtype == np.uint8 and label.shape == (TILE, TILE)
            assert set(np.unique(label)) <= {0, 85, 170, 255}
    x, y = train
    assert set(np.unique(y)) == {0, 1, 2, 3}  # every class is present in training
    finite = np.isfinite(x)
    assert finite.mean() > 0.98 and not finite.all()  # one training tile has a no-data corner
    assert (x[:, :4][finite[:, :4]] >= 0).all() and (x[:, :4][finite[:, :4]] <= 1).all()
    assert 230 < np.nanmin(x[:, 4]) and np.nanmax(x[:, 4]) < 320


def test_spectra_are_plausible(train):
    x, y = train
    with np.errstate(invalid="ignore", divide="ignore"):
        ndsi = (x[:, 1] - x[:, 3]) / (x[:, 1] + x[:, 3])
    mean = {c: np.nanmean(ndsi[y == c]) for c in range(4)}
    assert mean[1] > 0.6          # clean ice: bright green, dark SWIR
    assert mean[0] < 0.2          # background
    assert mean[2] < 0.0          # debris is rock-like
    assert mean[3] > 0.4          # water is dark in SWIR too
    thermal = {c: np.nanmean(x[:, 4][y == c]) for c in range(4)}
    assert thermal[1] + 3 < thermal[2] < thermal[0] - 5  # ice coldest, debris colder than rock
    green = {c: np.nanmean(x[:, 1][y == c]) for c in range(4)}
    assert green[3] < 0.3 < green[1]  # a lake is dark, ice is bright


def test_lakes_have_high_ndwi():
    rng = np.random.default_rng(0)
    scene = demo._scene(rng, (128, 128), 128.0, force_lake=True)
    image, mask = demo._hkh_patch(scene)
    lake = scene["classes"] == 3
    ndwi = image[..., demo.HKH_CHANNEL_IDS.index("NDWI")]
    assert lake.any()
    assert ndwi[lake].mean() > 0.5 > ndwi[scene["classes"] == 0].mean() + 0.5
    assert not mask[lake].any()  # HKH has no lake class


def test_ndsi_threshold_misses_debris_and_lakes(train):
    x, y = train
    cm = task.StreamingConfusion(4)
    for tile, label in zip(x, y):
        cm.update(task.ndsi_baseline(tile, task.HACK_CHANNELS), label)
    m = cm.matrix
    assert m[1, 1] / m[1].sum() > 0.95       # finds clean ice
    assert m[2, 0] / m[2].sum() > 0.95       # calls debris background
    assert m[3, 1] / m[3].sum() > 0.9        # calls lakes glacier
    assert 0.5 < cm.mcc() < 0.8


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = make_glacier_demo(tmp_path / "a", seed=5, tile_size=32, n_patches=2, n_train=4, n_test=1)
    b = make_glacier_demo(tmp_path / "b", seed=5, tile_size=32, n_patches=2, n_train=4, n_test=1)
    c = make_glacier_demo(tmp_path / "c", seed=6, tile_size=32, n_patches=2, n_train=4, n_test=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 + 5 * 4 + 4 + 5 + 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    band = "glacierhack/Train/Band2/img001.tif"
    assert (a / band).read_bytes() != (c / band).read_bytes()


def test_demo_constants_match_the_task_registry():
    assert demo.HKH_CHANNEL_IDS == task.HKH_CHANNEL_IDS
    assert demo.LABEL_VALUES == task.LABEL_VALUES
    assert {k: task.L8_BANDS[v] for k, v in demo.HACK_BAND_IDS.items()} == task.HACK_BANDS


@pytest.mark.parametrize("kwargs, word", [
    ({"tile_size": 16}, "tile_size=16"),
    ({"tile_size": 64.0}, "tile_size=64.0"),
    ({"n_train": 2}, "n_train=2"),
    ({"n_test": 0}, "n_test=0"),
    ({"seed": -1}, "seed=-1"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=re.escape(word)):
        make_glacier_demo(tmp_path, **kwargs)


def test_cli_writes_the_demo(tmp_path, capsys):
    assert main(["demo", "glacier", "--out", str(tmp_path / "g"), "--tile-size", "32", "--seed", "3"]) == 0
    assert "glacier" in capsys.readouterr().out
    assert len(list((tmp_path / "g/glacierhack/Train/labels").iterdir())) == 25
    assert len(list((tmp_path / "g/glacierhack/solution").iterdir())) == 10
    assert len(list((tmp_path / "g/hkh/patches").glob("*_img_*.npy"))) == 32
    assert np.load(tmp_path / "g/hkh/patches/slice_0_img_000.npy").shape == (32, 32, 15)


def test_a_small_tile_shows_the_same_scene_as_a_large_one(tmp_path):
    small = make_glacier_demo(tmp_path / "s", seed=2, tile_size=32, n_patches=1, n_train=4, n_test=1)
    large = make_glacier_demo(tmp_path / "l", seed=2, tile_size=64, n_patches=1, n_train=4, n_test=1)
    for name in ("img001.tif", "img002.tif", "img003.tif"):
        a = tifffile.imread(small / "glacierhack/Train/labels" / name)
        b = tifffile.imread(large / "glacierhack/Train/labels" / name)[1::2, 1::2]
        assert (a == b).mean() > 0.85
    a = np.load(small / "hkh/patches/slice_0_img_000.npy")[..., -2]
    b = np.load(large / "hkh/patches/slice_0_img_000.npy")[1::2, 1::2, -2]
    ok = np.isfinite(a) & np.isfinite(b)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.95  # elevation
