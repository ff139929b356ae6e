"""Tests for kagglekit_nb.tasks.glacier's building blocks: bands, tile I/O, statistics, MCC, sampling,
the package's sliding-window inference, transfer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
import torch
from sklearn.metrics import matthews_corrcoef
from torch import nn

from kagglekit_nb.tasks import glacier as G
from kagglekit_nb.tasks.glacier.solution_template import _sliding_window as sliding_window

HACK = list(G.HACK_CHANNELS)


def _write_tiles(root, tiles, labels=None, folders=("Band1", "Band2", "Band3", "Band4", "Band5")):
    """Write {name: CHW array} as one single-band TIFF per band folder (and labels as class indices)."""
    for name, tile in tiles.items():
        for folder, plane in zip(folders, tile):
            (root / folder).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / folder / name, plane.astype(np.float32))
        if labels is not None:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "labels" / name, G.encode_label(labels[name]))
    return root


# --------------------------------------------------------------------------------------------- bands

def test_band_registries_map_sensor_numbers_to_physical_names():
    assert G.physical_names(["B2", "B3", "B4", "B6", "B10"], "L8") == HACK
    assert G.physical_names(["B1", "B2", "B3", "B5", "B6_VCID_1"], "L7") == HACK
    assert G.physical_names(list(G.HACK_BANDS)) == HACK
    assert G.physical_names(["Green", "SWIR1"]) == ["green", "swir1"]
    assert G.L7_BANDS["B2"] == G.L8_BANDS["B3"] == "green"
    assert G.L7_BANDS["B6_VCID_1"] == G.L8_BANDS["B10"] == "thermal"
    assert G.HKH_CHANNELS[:10] == ("blue", "green", "red", "nir", "swir1", "thermal", "thermal_high_gain",
                                   "swir2", "pan", "qa")
    assert G.HKH_CHANNELS[10:] == ("ndwi", "ndsi", "ndvi", "elevation", "slope")


def test_physical_names_errors():
    with pytest.raises(ValueError, match="band 'B2' is not known"):
        G.physical_names(["B2"])  # blue on Landsat-8, green on Landsat-7: the sensor must be given
    with pytest.raises(ValueError, match="sensor='L9'"):
        G.physical_names(["B2"], "L9")
    with pytest.raises(ValueError, match="thermal"):
        G.physical_names(["B6", "B6_VCID_1"], "L7")


def test_find_band_dirs_by_name_case_insensitive(tmp_path):
    for name in ("band1", "BAND_2", "Band3", "band-4", "Band5", "Labels", "notes"):
        (tmp_path / name).mkdir()
    dirs = G.find_band_dirs(tmp_path, require_labels=True)
    assert {k: v.name for k, v in dirs.items()} == {
        "Band1": "band1", "Band2": "BAND_2", "Band3": "Band3", "Band4": "band-4", "Band5": "Band5", "labels": "Labels"}
    assert list(dirs) == ["Band1", "Band2", "Band3", "Band4", "Band5", "labels"]


def test_find_band_dirs_missing_band_lists_what_is_there(tmp_path):
    for name in ("Band1", "Band2", "B3"):
        (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError) as err:
        G.find_band_dirs(tmp_path)
    msg = str(err.value)
    assert "Band3, Band4, Band5" in msg and "B3, Band1, Band2" in msg
    with pytest.raises(FileNotFoundError, match="labels"):
        G.find_band_dirs(tmp_path, ("Band1",), require_labels=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        G.find_band_dirs(tmp_path / "nope")


def test_read_tile_and_labels_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tile = rng.random((5, 6, 7)).astype(np.float32)
    classes = rng.integers(0, 4, (6, 7)).astype(np.uint8)
    dirs = G.find_band_dirs(_write_tiles(tmp_path, {"img001.tif": tile}, {"img001.tif": classes}))
    assert G.list_tiles(dirs) == ["img001.tif"]
    np.testing.assert_array_equal(G.read_tile(dirs, "img001.tif"), tile)
    raw = tifffile.imread(dirs["labels"] / "img001.tif")
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 85, 170, 255}
    np.testing.assert_array_equal(G.read_label(dirs["labels"] / "img001.tif"), classes)
    np.testing.assert_array_equal(G.encode_label(classes), np.array([0, 85, 170, 255])[classes])
    with pytest.raises(FileNotFoundError, match="img002.tif.*Band1"):
        G.read_tile(dirs, "img002.tif")


def test_read_label_unknown_values_name_file_and_values(tmp_path):
    tifffile.imwrite(tmp_path / "img009.tif", np.array([[0, 85], [100, 254]], np.uint8))
    with pytest.raises(ValueError, match=r"img009.tif holds values 100, 254.*0, 85, 170, 255"):
        G.read_label(tmp_path / "img009.tif")
    with pytest.raises(ValueError, match="valid class indices are 0..3"):
        G.encode_label(np.array([0, 4]))


def test_list_tiles_reports_files_missing_from_a_band(tmp_path):
    tiles = {n: np.zeros((5, 4, 4)) for n in ("a.tif", "b.tif")}
    dirs = G.find_band_dirs(_write_tiles(tmp_path, tiles))
    (dirs["Band3"] / "b.tif").unlink()
    with pytest.raises(FileNotFoundError, match="Band3 lacks b.tif"):
        G.list_tiles(dirs)


# ------------------------------------------------------------------------------------- normalisation

def test_band_stats_equal_numpy_over_all_training_pixels_ignoring_nan():
    rng = np.random.default_rng(1)
    tiles = [rng.normal(loc=[[[1.0]], [[300.0]]], scale=[[[0.2]], [[5.0]]], size=(2, 9, 11 + i)) for i in range(4)]
    tiles[1][0, :3] = np.nan
    tiles[2][1, 0, 0] = np.inf
    stats = G.BandStats.fit(iter(tiles), ["green", "thermal"])  # a one-pass iterator is enough
    for b in range(2):
        pixels = np.concatenate([t[b].ravel() for t in tiles])
        pixels = pixels[np.isfinite(pixels)]
        assert stats.count[b] == pixels.size
        assert stats.mean[b] == pytest.approx(pixels.mean(), rel=1e-12)
        assert stats.std[b] == pytest.approx(pixels.std(), rel=1e-10)
    with pytest.raises(ValueError, match="tile 1 holds 36 NaN/inf"):
        G.BandStats.fit(tiles, ["green", "thermal"], nan_policy="raise")
    with pytest.raises(ValueError, match="nan_policy='drop'"):
        G.BandStats.fit(tiles, ["green", "thermal"], nan_policy="drop")


def test_normalise_centres_scales_and_zeroes_nan():
    x = np.array([[[1.0, 3.0], [np.nan, 5.0]], [[10.0, 10.0], [10.0, 10.0]]], np.float32)
    stats = G.BandStats.fit([x], ["green", "qa"])
    out = stats.normalise(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[-np.sqrt(1.5), 0], [0, np.sqrt(1.5)]], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0)  # a constant band is centred, not divided by 0
    np.testing.assert_allclose(stats.normalise(torch.from_numpy(x)[None]).numpy()[0], out, rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 2, H, W\)"):
        stats.normalise(np.zeros((3, 2, 2)))


def test_band_stats_save_and_load_through_json():
    stats = G.BandStats.fit([np.arange(24, dtype=np.float32).reshape(2, 3, 4)], ["red", "swir1"])
    again = G.BandStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again.bands == ["red", "swir1"]
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.std, stats.std)
    with pytest.raises(ValueError, match="lack std"):
        G.BandStats.from_dict({"bands": ["red"], "mean": [0.0]})


def test_band_stats_come_from_the_training_fold_only(tmp_path):
    """Validation tiles are wildly different and then corrupted: neither may change the statistics."""
    rng = np.random.default_rng(2)
    train = {f"img{i:03d}.tif": rng.normal(0.3, 0.1, (5, 8, 8)) for i in (1, 2, 3)}
    val = {f"img{i:03d}.tif": rng.normal(500.0, 50.0, (5, 8, 8)) for i in (4, 5)}
    dirs = G.find_band_dirs(_write_tiles(tmp_path, {**train, **val}))
    stats = G.BandStats.from_files(dirs, sorted(train))
    expected = np.stack(list(train.values())).astype(np.float32)
    np.testing.assert_allclose(stats.mean, expected.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats.std, expected.std(axis=(0, 2, 3)), rtol=1e-5)
    assert (stats.mean < 1).all()
    for name in val:  # not even opened
        for band in G.HACK_BANDS:
            (dirs[band] / name).write_bytes(b"not a tiff")
    again = G.BandStats.from_files(dirs, sorted(train))
    np.testing.assert_array_equal(again.mean, stats.mean)
    assert again.bands == list(G.HACK_BANDS)
    with pytest.raises(ValueError, match="training fold"):
        G.BandStats.from_files(dirs, [])


# ------------------------------------------------------------------------------------------- metric

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_mcc_equals_sklearn_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    cm = G.StreamingConfusion(4)
    targets, preds = [], []
    for _ in range(5):
        t = rng.choice(4, size=(17, 23), p=[0.6, 0.2, 0.15, 0.05])
        p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 4, t.shape))
        cm.update(torch.from_numpy(p) if seed == 1 else p, t)
        targets.append(t.ravel())
        preds.append(p.ravel())
    expected = matthews_corrcoef(np.concatenate(targets), np.concatenate(preds))
    assert cm.mcc() == pytest.approx(expected, abs=1e-12)
    assert cm.matrix.dtype == np.int64 and cm.matrix.sum() == 5 * 17 * 23


def test_mcc_edge_cases_and_huge_counts():
    t = np.array([0, 1, 2, 3, 3, 0])
    cm = G.StreamingConfusion(4)
    cm.update(t, t)
    assert cm.mcc() == 1.0
    cm.reset()
    cm.update(np.zeros_like(t), t)
    assert cm.mcc() == 0.0 == matthews_corrcoef(t, np.zeros_like(t))
    rng = np.random.default_rng(3)
    small = G.StreamingConfusion(4)
    small.update(rng.integers(0, 4, 500), rng.integers(0, 4, 500))
    big = G.StreamingConfusion(4)
    big.matrix = small.matrix * 10**9  # ~10^11 pixels: the products would overflow int64
    assert big.mcc() == pytest.approx(small.mcc(), abs=1e-12)


def test_confusion_validates_and_ignores():
    cm = G.StreamingConfusion(4, ignore_index=255)
    cm.update(np.array([1, 2, 0]), np.array([1, 255, 0]))
    assert cm.matrix.sum() == 2 and cm.mcc() == 1.0
    with pytest.raises(ValueError, match="pred has shape"):
        cm.update(np.zeros((4, 2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="target holds class 7"):
        cm.update(np.zeros(2), np.array([0, 7]))
    with pytest.raises(ValueError, match="n_classes=1"):
        G.StreamingConfusion(1)


def test_ndsi_baseline():
    green = np.array([[0.6, 0.12], [0.1, np.nan]])
    swir = np.array([[0.05, 0.2], [0.01, 0.1]])
    tile = np.stack([np.zeros((2, 2)), green, np.zeros((2, 2)), swir, np.zeros((2, 2))])
    np.testing.assert_array_equal(G.ndsi_baseline(tile, HACK), [[1, 0], [1, 0]])
    with pytest.raises(ValueError, match="lack swir1"):
        G.ndsi_baseline(tile[:3], ["blue", "green", "red"])


# ----------------------------------------------------------------------------------------- sampling

def _rare_labels(rng):
    labels = []
    for _ in range(3):
        lab = np.zeros((40, 40), np.uint8)
        lab[:, :12] = 1
        lab[:, 12:16] = 2
        labels.append(lab)
    labels[1][20:22, 30:32] = 3  # 4 lake pixels out of 4,800
    return labels


def test_balanced_sampler_sees_rare_classes_as_often_as_common_ones():
    labels = _rare_labels(None)
    sampler = G.BalancedCropSampler(labels, crop=1, seed=0)  # crop 1: the centre is the sampled pixel
    centres = [labels[t][y, x] for t, y, x in (sampler.sample() for _ in range(4000))]
    freq = np.bincount(centres, minlength=4) / 4000
    np.testing.assert_allclose(freq, 0.25, atol=0.03)
    uniform = G.BalancedCropSampler(labels, crop=1, seed=0, power=0.0)
    centres = [labels[t][y, x] for t, y, x in (uniform.sample() for _ in range(4000))]
    assert np.bincount(centres, minlength=4)[3] < 20  # pixel frequency: lakes almost never


def test_balanced_sampler_crops_stay_inside_and_resume_exactly():
    labels = _rare_labels(None)
    sampler = G.BalancedCropSampler(labels, crop=16, seed=7)
    first = [sampler.sample() for _ in range(50)]
    assert all(0 <= y <= 24 and 0 <= x <= 24 for _, y, x in first)
    assert any(labels[t][y:y + 16, x:x + 16].max() == 3 for t, y, x in first)
    again = G.BalancedCropSampler(labels, crop=16, seed=7)
    assert [again.sample() for _ in range(50)] == first
    state = sampler.state_dict()
    ahead = [sampler.sample() for _ in range(5)]
    resumed = G.BalancedCropSampler(labels, crop=16, seed=123)
    resumed.load_state_dict(state)
    assert [resumed.sample() for _ in range(5)] == ahead
    with pytest.raises(ValueError, match="labels\\[0\\] holds class 4"):
        G.BalancedCropSampler([np.full((4, 4), 4)], crop=2)
    with pytest.raises(ValueError, match="crop=11 is larger than the tile"):
        G.BalancedCropSampler([np.zeros((10, 12), np.uint8)], crop=11)


class _MapsOnDemand:
    """A lazy sequence of class maps, made when indexed (as `MaskFiles` reads them), counting the reads."""

    def __init__(self, n, size, seed=0):
        self.n, self.size, self.seed, self.reads = n, size, seed, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.reads += 1
        rng = np.random.default_rng([self.seed, i])
        lab = np.zeros((self.size, self.size), np.uint8)
        lab[: self.size // 3] = 1
        lab[rng.integers(self.size), : self.size // 4] = 2  # one short debris row
        if i % 7 == 3:
            lab[-2:, -2:] = 3  # a few lake pixels in some tiles
        return lab


def test_balanced_sampler_draws_each_pixel_of_the_drawn_class_alike():
    """The crop centre is the k-th pixel of the drawn class over all tiles (tile by tile, row-major),
    k uniform: the same draws as an index of every class position would give."""
    labels = _MapsOnDemand(9, 24)
    maps = [labels[i] for i in range(len(labels))]
    flat = np.concatenate([m.reshape(-1) for m in maps])
    where = [np.flatnonzero(flat == c) for c in range(4)]  # reference: every position of every class
    sampler = G.BalancedCropSampler(labels, crop=1, seed=3)
    np.testing.assert_array_equal(sampler.counts, [[np.sum(m == c) for m in maps] for c in range(4)])
    np.testing.assert_allclose(sampler.class_probs, [0.25] * 4)
    rng = np.random.default_rng(3)
    for _ in range(300):
        c = int(rng.choice(4, p=sampler.class_probs))
        pos = int(where[c][int(rng.integers(len(where[c])))])
        tile, rest = divmod(pos, 24 * 24)
        assert sampler.sample() == (tile, *divmod(rest, 24))


def test_balanced_sampler_keeps_no_class_map_and_reads_each_once_to_start():
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        labels = _MapsOnDemand(400, 128)  # 6.5 MB of uint8 maps, 26 MB as an int32 index of positions
        sampler = G.BalancedCropSampler(labels, crop=32, seed=0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert labels.reads == 400  # counted once, one map at a time
    assert held < 100_000  # counts and shapes: a few numbers per tile, no map
    first = [sampler.sample() for _ in range(20)]
    assert labels.reads == 420  # each draw reads only its own tile's map
    assert all(0 <= top <= 96 and 0 <= left <= 96 for _, top, left in first)


def test_balanced_sampler_rejects_a_class_map_of_floats():
    with pytest.raises(ValueError, match=r"labels\[0\] holds float64 values; a class map holds integer"):
        G.BalancedCropSampler([np.zeros((8, 8))], crop=4)


# ---------------------------------------------------------------------------------------- inference
# The sliding-window inference of the shipped solution.py (self-contained, so it has its own copy).

def _pointwise_model(in_ch=3, n_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_ch, 8, 1), nn.ReLU(), nn.Conv2d(8, n_classes, 1)).eval()


def _windows(model, image, *, window, overlap, blend="cosine"):
    with torch.inference_mode():
        return sliding_window(lambda batch: model(batch).softmax(1), np.asarray(image, np.float32), window=window,
                              overlap=overlap, n_classes=4, blend=blend, device=torch.device("cpu"))


@pytest.mark.parametrize("blend", ["cosine", "linear", "uniform"])
@pytest.mark.parametrize("shape, overlap", [((70, 45), 8), ((100, 33), 16), ((20, 90), 0)])
def test_sliding_window_equals_whole_tile_for_a_translation_equivariant_model(blend, shape, overlap):
    model = _pointwise_model()
    image = torch.randn(3, *shape).numpy()
    whole = model(torch.from_numpy(image)[None]).softmax(1)[0].detach().numpy()
    probs = _windows(model, image, window=32, overlap=overlap, blend=blend)
    assert probs.shape == (4, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, whole, atol=1e-6)


def test_sliding_window_equals_whole_tile_where_the_tile_fits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1)).eval()
    image = torch.randn(1, 5, 64, 64)
    whole = model(image).softmax(1)[0].detach().numpy()
    np.testing.assert_allclose(_windows(model, image[0], window=64, overlap=16), whole, atol=1e-6)
    # With 3x3 convolutions a tiled 96x96 tile differs only near window borders: blending keeps it close.
    image = torch.randn(1, 5, 96, 96)
    tiled = _windows(model, image[0], window=64, overlap=32)
    whole = model(image).softmax(1)[0].detach().numpy()
    assert np.abs(tiled - whole).mean() < 0.01


def test_sliding_window_with_a_unet_on_a_tile_that_fits():
    model = G.build_unet("resnet18", in_channels=5, n_classes=4).eval()
    image = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        whole = model(image).softmax(1)[0].numpy()
    probs = _windows(model, image[0].numpy(), window=64, overlap=16)
    np.testing.assert_allclose(probs, whole, atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


# -------------------------------------------------------------------------------------------- model

def test_build_unet_shapes_and_encoder_errors():
    model = G.build_unet("resnet18", in_channels=5, n_classes=4)
    assert model(torch.zeros(2, 5, 64, 64)).shape == (2, 4, 64, 64)
    with pytest.raises(ValueError, match="encoder='resnet343'.*resnet34"):
        G.build_unet("resnet343", in_channels=5, n_classes=4)


SOURCES = {
    7: G.physical_names(["B1", "B2", "B3", "B4", "B5", "B6", "B7"], "L7"),
    11: G.physical_names([f"B{i}" for i in range(1, 12)], "L8"),
    15: list(G.HKH_CHANNELS),
}


@pytest.mark.parametrize("n_src", [7, 11, 15])
def test_transfer_maps_first_layer_kernels_by_band_name(n_src):
    src_bands = SOURCES[n_src]
    assert len(src_bands) == n_src
    torch.manual_seed(n_src)
    src = G.build_unet("resnet18", in_channels=n_src, n_classes=3)  # pretraining: bg, clean ice, debris
    dst = G.build_unet("resnet18", in_channels=5, n_classes=4)
    src_state = src.state_dict()
    report = G.transfer_first_layer(src_state, src_bands, dst, HACK)
    w_src, w_dst = src_state["encoder.conv1.weight"], dst.state_dict()["encoder.conv1.weight"]
    assert w_dst.shape == (64, 5, 7, 7)
    for j, band in enumerate(HACK):
        torch.testing.assert_close(w_dst[:, j], w_src[:, src_bands.index(band)], rtol=0, atol=0)
    assert report.first_layer == "encoder.conv1.weight"
    assert report.mapped == {band: src_bands.index(band) for band in HACK}
    assert report.initialised == []
    assert sorted(report.unused) == sorted(set(src_bands) - set(HACK))
    dst_state = dst.state_dict()
    for key in ("encoder.layer1.0.conv1.weight", "encoder.bn1.running_mean", "decoder.blocks.0.conv1.0.weight"):
        torch.testing.assert_close(dst_state[key], src_state[key], rtol=0, atol=0)
        assert key in report.copied
    # The 3-class head cannot carry over to 4 classes: it keeps its fresh weights.
    assert set(report.skipped) == {"segmentation_head.0.weight", "segmentation_head.0.bias"}
    assert "3, 16, 3, 3" in report.skipped["segmentation_head.0.weight"]
    assert "source channel" in str(report)


def test_transfer_initialises_an_unseen_band_with_the_scaled_mean_kernel():
    src_bands = ["blue", "green", "red", "nir", "swir1", "swir2"]  # a surface-reflectance stack: no thermal
    src = G.build_unet("resnet18", in_channels=6, n_classes=4)
    dst = G.build_unet("resnet18", in_channels=5, n_classes=4)
    report = G.transfer_first_layer(src.encoder.state_dict(), src_bands, dst, HACK)  # encoder-only file
    w_src, w_dst = src.state_dict()["encoder.conv1.weight"], dst.state_dict()["encoder.conv1.weight"]
    assert report.initialised == ["thermal"] and report.unused == ["nir", "swir2"]
    torch.testing.assert_close(w_dst[:, 4], w_src.mean(1) * 6 / 5)
    torch.testing.assert_close(w_dst[:, 3], w_src[:, 4], rtol=0, atol=0)  # swir1 is source channel 4
    assert report.skipped.keys() >= {"segmentation_head.0.weight"}  # not in an encoder-only file
    assert "decoder.blocks.0.conv1.0.weight" in report.skipped


def test_transfer_maps_rgb_by_name_not_position():
    src = G.build_unet("resnet18", in_channels=3, n_classes=4)
    dst = G.build_unet("resnet18", in_channels=5, n_classes=4)
    G.transfer_first_layer({f"module.{k}": v for k, v in src.state_dict().items()}, ["red", "green", "blue"],
                           dst, HACK)
    w_src, w_dst = src.state_dict()["encoder.conv1.weight"], dst.state_dict()["encoder.conv1.weight"]
    torch.testing.assert_close(w_dst[:, 0], w_src[:, 2], rtol=0, atol=0)  # blue
    torch.testing.assert_close(w_dst[:, 2], w_src[:, 0], rtol=0, atol=0)  # red
    torch.testing.assert_close(w_dst[:, 3], w_src.sum(1) / 5)  # swir1, unseen
    torch.testing.assert_close(dst.state_dict()["segmentation_head.0.weight"],
                               src.state_dict()["segmentation_head.0.weight"], rtol=0, atol=0)


def test_transfer_errors_name_the_problem():
    src = G.build_unet("resnet18", in_channels=7, n_classes=3).state_dict()
    dst = G.build_unet("resnet18", in_channels=5, n_classes=4)
    with pytest.raises(ValueError, match="band ids \\['b2'\\]"):
        G.transfer_first_layer(src, SOURCES[7], dst, ["blue", "B2", "red", "swir1", "thermal"])
    with pytest.raises(ValueError, match=re.escape("7 input channels, but src_band_names lists 6")):
        G.transfer_first_layer(src, SOURCES[7][:6], dst, HACK)
    with pytest.raises(ValueError, match="takes 5 channels but dst_band_names has 4"):
        G.transfer_first_layer(src, SOURCES[7], dst, HACK[:4])
    with pytest.raises(ValueError, match="repeats a band"):
        G.transfer_first_layer(src, SOURCES[7], dst, ["blue", "blue", "red", "swir1", "thermal"])
