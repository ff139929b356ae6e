"""Tests for kagglekit_nb.tasks.glacier.package (code-package export and verification) and the
registered-baseline path of submission.finalize."""
from __future__ import annotations

import json
import runpy
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from kagglekit_nb import submission as sub
from kagglekit_nb import verification
from kagglekit_nb.demo.glacier import make_glacier_demo
from kagglekit_nb.submission import (
    SubmissionError,
    VerificationReport,
    finalize,
    register_baseline,
    verify,
)
from kagglekit_nb.tasks.glacier import (
    HACK_BANDS,
    HACK_CHANNELS,
    LABEL_VALUES,
    BandStats,
    StreamingConfusion,
    build_unet,
    find_band_dirs,
    list_tiles,
    ndsi_baseline,
    read_label,
    read_tile,
)
from kagglekit_nb.tasks.glacier.package import (
    KIND,
    MODEL_FILE,
    SOLUTION_FILE,
    export_code_package,
    solution_source,
    verify_code_package,
    write_ndsi_package,
)
from kagglekit_nb.tasks.glacier.solution_template import _sliding_window

BANDS = list(HACK_BANDS)
WINDOW, OVERLAP, TTA = 64, 16, ("none", "hflip", "rot90")
# Independent of the template: the transforms and their inverses on NCHW tensors.
REFERENCE_TTA = {
    "none": (lambda x: x, lambda y: y),
    "hflip": (lambda x: torch.flip(x, [3]), lambda y: torch.flip(y, [3])),
    "rot90": (lambda x: torch.rot90(x, 1, [2, 3]), lambda y: torch.rot90(y, 3, [2, 3])),
}
PACKAGE_KEYS = {"format", "arch", "encoder", "in_channels", "n_classes", "band_folders", "band_names", "stats",
                "model_stats", "label_values", "window", "overlap", "blend", "tta", "models", "dtype", "dropped_folds", "ndsi",
                "versions"}


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = make_glacier_demo(tmp_path_factory.mktemp("glacier") / "demo", tile_size=64, n_train=6, n_test=3,
                             n_patches=1)
    return root / "glacierhack"


def _write_tile(root: Path, name: str, bands_chw: np.ndarray, label: np.ndarray) -> None:
    for band, plane in zip(BANDS, bands_chw):
        tifffile.imwrite(root / band / name, np.ascontiguousarray(plane, np.float32))
    tifffile.imwrite(root / "labels" / name, np.ascontiguousarray(label, np.uint8))


@pytest.fixture(scope="module")
def data(demo, tmp_path_factory) -> Path:
    """Band1..Band5 + labels: two 64x64 demo tiles (one with a NaN corner) and two of odd sizes."""
    root = tmp_path_factory.mktemp("data")
    for folder in [*BANDS, "labels"]:
        (root / folder).mkdir()
    dirs = find_band_dirs(demo / "Train")
    bands = {b: dirs[b] for b in BANDS}
    for name in ("img001.tif", "img004.tif"):
        _write_tile(root, name, read_tile(bands, name), tifffile.imread(dirs["labels"] / name))
    x, y = read_tile(bands, "img004.tif"), tifffile.imread(dirs["labels"] / "img004.tif")
    _write_tile(root, "odd_70x45.tif", np.concatenate([x, x[:, :6]], 1)[:, :, :45],
                np.concatenate([y, y[:6]], 0)[:, :45])
    _write_tile(root, "odd_33x100.tif", np.concatenate([x, x], 2)[:, :33, :100],
                np.concatenate([y, y], 1)[:33, :100])
    return root


@pytest.fixture(scope="module")
def stats(demo) -> BandStats:
    dirs = find_band_dirs(demo / "Train")
    bands = {b: dirs[b] for b in BANDS}
    return BandStats.from_files(bands, list_tiles(bands))


@pytest.fixture(scope="module")
def states() -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [build_unet("resnet18", in_channels=5, n_classes=4).state_dict() for _ in range(2)]


def _export(out, states, band_stats, **kwargs):
    args = {"encoder": "resnet18", "band_folders": BANDS, "band_names": list(HACK_CHANNELS),
            "stats": band_stats.to_dict(), "window": WINDOW, "overlap": OVERLAP, "tta": TTA}
    return export_code_package(out, states, **{**args, **kwargs})


@pytest.fixture(scope="module")
def package(tmp_path_factory, states, stats) -> tuple[Path, list[str]]:
    lines: list[str] = []
    out = _export(tmp_path_factory.mktemp("pkg") / "submission", states, stats, log=lines.append)
    return out, lines


@pytest.fixture(scope="module")
def verified(package, data) -> VerificationReport:
    return verify_code_package(package[0], data)


def _run_in_process(package_dir: Path, imagepath, out_dir: Path) -> None:
    runpy.run_path(str(package_dir / SOLUTION_FILE))["maskgeration"](imagepath, out_dir)


def _imagepath(root: Path) -> dict[str, str]:
    return {band: str(root / band) for band in BANDS}


# ---------------------------------------------------------------------------------------- export

def test_export_writes_template_and_a_weights_only_model_file(package, states, stats):
    out, lines = package
    assert sorted(p.name for p in out.iterdir()) == [MODEL_FILE, SOLUTION_FILE]
    assert (out / SOLUTION_FILE).read_text() == solution_source()
    assert "kagglekit_nb" not in "".join(l for l in solution_source().splitlines() if "import" in l)
    saved = torch.load(out / MODEL_FILE, weights_only=True)
    assert set(saved) == PACKAGE_KEYS
    assert saved["format"] == "kagglekit_nb.glacier_package/1" and saved["dtype"] == "float32"
    assert (saved["arch"], saved["encoder"], saved["in_channels"], saved["n_classes"]) == ("Unet", "resnet18", 5, 4)
    assert saved["band_folders"] == BANDS and saved["band_names"] == list(HACK_CHANNELS)
    assert saved["stats"]["mean"] == pytest.approx(stats.mean.tolist())
    assert len(saved["model_stats"]) == 2
    for per_model in saved["model_stats"]:
        assert per_model["mean"] == pytest.approx(stats.mean.tolist())
    assert saved["label_values"] == [0, 85, 170, 255] and saved["tta"] == list(TTA)
    assert saved["ndsi"] == {"threshold": 0.4, "green_band": "Band2", "swir1_band": "Band4"}
    assert len(saved["models"]) == 2 and saved["dropped_folds"] == []
    for got, want in zip(saved["models"], states):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert "2 fold(s) of Unet/resnet18 in float32" in lines[-1]


def test_export_falls_back_to_fp16_then_drops_folds(tmp_path, package, states, stats, data):
    two_folds = (package[0] / MODEL_FILE).stat().st_size  # float32, both folds
    lines: list[str] = []
    out = _export(tmp_path / "fp16", states, stats, max_bytes=two_folds - 1, log=lines.append)
    saved = torch.load(out / MODEL_FILE, weights_only=True)
    assert saved["dtype"] == "float16" and len(saved["models"]) == 2 and saved["dropped_folds"] == []
    assert saved["models"][0]["encoder.conv1.weight"].dtype == torch.float16
    assert saved["models"][0]["encoder.bn1.num_batches_tracked"].dtype == torch.int64
    assert "storing float16" in lines[0] and (out / MODEL_FILE).stat().st_size < 0.55 * two_folds

    # fp16 weights are cast back and give (nearly) the float32 package's masks
    _run_in_process(out, _imagepath(data), tmp_path / "masks16")
    _run_in_process(package[0], _imagepath(data), tmp_path / "masks32")
    for name in list_tiles({b: data / b for b in BANDS}):
        a, b = tifffile.imread(tmp_path / "masks16" / name), tifffile.imread(tmp_path / "masks32" / name)
        assert (a == b).mean() > 0.95

    lines.clear()
    limit = int(0.375 * two_folds)  # one fold in fp16 (a quarter of two in fp32) fits, two do not
    out = _export(tmp_path / "dropped", [*states, states[1]], stats, max_bytes=limit, log=lines.append)
    saved = torch.load(out / MODEL_FILE, weights_only=True)
    assert saved["dtype"] == "float16" and len(saved["models"]) == 1 and saved["dropped_folds"] == [1, 2]
    assert any(l.startswith("WARNING") and "DROPPED fold(s) 1, 2 (states[1:])" in l for l in lines)
    assert torch.equal(saved["models"][0]["encoder.conv1.weight"], states[0]["encoder.conv1.weight"].half())


def test_export_raises_when_even_one_fp16_fold_does_not_fit(tmp_path, states, stats):
    with pytest.raises(ValueError, match="even with one fold in float16"):
        _export(tmp_path / "tiny", states, stats, max_bytes=2**20, log=lambda m: None)
    assert not (tmp_path / "tiny" / MODEL_FILE).exists()
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == []  # no temp file left behind


@pytest.mark.parametrize("kwargs, phrase", [
    ({"band_names": ["blue", "green", "red", "swir1"]}, "band_folders has 5 names"),
    ({"band_folders": ["Band1", "band1", "Band3", "Band4", "Band5"]}, "repeated name"),
    ({"band_names": ["blue", "green", "red", "swir1", "plasma"]}, "band 'plasma' is not known"),
    ({"stats": {"bands": ["a", "b", "c", "d", "e"], "mean": [0] * 5, "std": [1] * 5}}, "stats are for bands"),
    ({"stats": None}, "stats is None but the package holds models"),
    ({"tta": ("none", "mirror")}, r"unknown names \['mirror'\]"),
    ({"tta": "hflip"}, "non-empty list"),
    ({"window": 100}, "multiple of 32"),
    ({"overlap": 64}, "overlap=64 must be smaller than window=64"),
    ({"n_classes": 5}, "encodes only 4 classes"),
    ({"encoder": "resnet19"}, "not an smp encoder"),
    ({"encoder": "resnet34"}, r"states\[0\] does not fit"),
    ({"arch": "NoSuchNet"}, "not an smp architecture"),
])
def test_export_rejects_bad_input(tmp_path, states, stats, kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        _export(tmp_path / "pkg", states[:1], stats, log=lambda m: None, **kwargs)


def test_export_rejects_states_that_are_not_state_dicts(tmp_path, states, stats):
    with pytest.raises(ValueError, match="wrap a single one"):
        _export(tmp_path / "p", states[0], stats)
    with pytest.raises(ValueError, match=r"non-tensor entries: optimizer"):
        _export(tmp_path / "p", [{"model": states[0]["encoder.conv1.weight"], "optimizer": {}}], stats)
    with pytest.raises(ValueError, match="NDSI package .* needs both"):
        export_code_package(tmp_path / "p", [], encoder=None, band_folders=["Band1", "Band3"],
                            band_names=["blue", "red"], stats=None, window=64, overlap=0)


# ---------------------------------------------------------------------------------- round trip

def test_round_trip_verifies_valid(verified, package, data):
    assert verified.valid, verified.format()
    assert verified.kind == KIND and verified.errors == []
    assert verified.stats["tiles"] == 4 and verified.stats["labelled_tiles"] == 4
    assert -1.0 <= verified.stats["mcc"] <= 1.0 and verified.stats["seconds"] > 0
    assert verified.stats["model_mb"] == round((package[0] / MODEL_FILE).stat().st_size / 2**20, 2)
    assert sum(verified.stats["predicted_fraction"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "MCC" in verified.notes[-1]
    # the run writes nothing into the package (no __pycache__) nor into the data
    assert sorted(p.name for p in package[0].iterdir()) == [MODEL_FILE, SOLUTION_FILE]
    assert sorted(p.name for p in data.iterdir()) == sorted([*BANDS, "labels"])


def _windows(predict, tile_chw):
    """Class probabilities of a tile from `predict` (a batch -> probabilities) through the template's
    sliding window, which tests/test_glacier.py checks against whole-tile inference."""
    with torch.inference_mode():
        return _sliding_window(predict, tile_chw, window=WINDOW, overlap=OVERLAP, n_classes=4, blend="cosine",
                               device=torch.device("cpu"))


def _reference_classes(states, stats, tile_chw):
    models = []
    for state in states:
        model = build_unet("resnet18", in_channels=5, n_classes=4)
        model.load_state_dict(state)
        models.append(model.eval())

    def ensemble(batch):
        probs = [inverse(m(forward(batch)).softmax(1)) for m in models for forward, inverse in
                 (REFERENCE_TTA[t] for t in TTA)]
        return torch.stack(probs).mean(0)

    probs = _windows(ensemble, stats.normalise(tile_chw))
    top2 = np.sort(probs, axis=0)[-2:]
    return probs.argmax(0), top2[1] - top2[0]


def test_solution_masks_match_the_in_process_reference(package, data, states, stats, tmp_path):
    out = tmp_path / "masks"
    _run_in_process(package[0], _imagepath(data), out)
    bands = {b: data / b for b in BANDS}
    names = sorted(p.name for p in (data / "Band1").iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    seen = set()
    for name in names:
        mask, tile = tifffile.imread(out / name), read_tile(bands, name)
        assert mask.dtype == np.uint8 and mask.shape == tile.shape[1:]
        assert set(np.unique(mask)) <= set(LABEL_VALUES)
        classes, margin = _reference_classes(states, stats, tile)
        clear = margin > 1e-4  # pixels where float rounding cannot swap the top two classes
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(mask[clear], np.asarray(LABEL_VALUES, np.uint8)[classes][clear])
        seen.update(np.unique(mask).tolist())
    assert len(seen) >= 2  # the comparison is not between two constant masks
    assert {tuple(tifffile.imread(out / n).shape) for n in names} >= {(70, 45), (33, 100)}


def test_each_model_is_fed_with_its_own_fold_statistics(tmp_path, data, states, stats):
    """Fold models are trained on differently normalised inputs: the package keeps one set each."""
    other = BandStats(stats.bands, stats.mean * 1.5 + 0.1, stats.std * 0.5, stats.count)
    out = _export(tmp_path / "pkg", states, stats, stats=[stats.to_dict(), other.to_dict()], tta=("none",))
    saved = torch.load(out / MODEL_FILE, weights_only=True)
    for per_model, st in zip(saved["model_stats"], (stats, other), strict=True):
        assert per_model["mean"] == pytest.approx(st.mean.tolist())
    masks = tmp_path / "masks"
    _run_in_process(out, _imagepath(data), masks)
    name = sorted(p.name for p in (data / "Band1").iterdir())[0]
    tile = read_tile({b: data / b for b in BANDS}, name)
    models = []
    for state in states:
        model = build_unet("resnet18", in_channels=5, n_classes=4)
        model.load_state_dict(state)
        models.append(model.eval())
    probs = sum(_windows(lambda batch, m=m: m(batch).softmax(1), st.normalise(tile))
                for m, st in zip(models, (stats, other))) / 2
    top2 = np.sort(probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4
    expected = np.asarray(LABEL_VALUES, np.uint8)[probs.argmax(0)]
    np.testing.assert_array_equal(tifffile.imread(masks / name)[clear], expected[clear])
    with pytest.raises(ValueError, match="stats holds 1 entries for 2 models"):
        _export(tmp_path / "bad", states, stats, stats=[stats.to_dict()])


def test_solution_finds_bands_by_name_whatever_the_case(tmp_path, data):
    package = tmp_path / "ndsi"
    write_ndsi_package(package)
    _run_in_process(package, {band.lower(): str(data / band) for band in reversed(BANDS)}, tmp_path / "a")
    _run_in_process(package, str(data), tmp_path / "b")  # a folder holding the band folders
    for name in ("img001.tif", "odd_70x45.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / name), tifffile.imread(tmp_path / "b" / name))
    with pytest.raises(KeyError, match="no folder for Band5"):
        _run_in_process(package, {band: str(data / band) for band in BANDS[:4]}, tmp_path / "c")


# ------------------------------------------------------------------------------- broken packages

_WRITE_BAD_MASKS = """
import numpy as np
import tifffile
from pathlib import Path


def maskgeration(imagepath, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    band1 = Path(imagepath["Band1"])
    names = sorted(p.name for p in band1.iterdir())
    shape = tifffile.imread(band1 / names[0]).shape
    tifffile.imwrite(out / names[0], np.ones(shape, np.uint8))        # class indices, not 0/85/170/255
    tifffile.imwrite(out / names[2], np.zeros((10, 10), np.uint8))    # wrong shape; names[1] missing
    tifffile.imwrite(out / names[3], np.zeros(tifffile.imread(band1 / names[3]).shape, np.float32))
    tifffile.imwrite(out / "extra.tif", np.zeros(shape, np.uint8))
"""


def _broken_package(root: Path, solution: str | None, model: bool = True) -> Path:
    root.mkdir(parents=True)
    if solution is not None:
        (root / SOLUTION_FILE).write_text(textwrap.dedent(solution))
    if model:
        (root / MODEL_FILE).write_bytes(b"weights")
    return root


def test_wrong_masks_are_each_reported(tmp_path, data):
    report = verify_code_package(_broken_package(tmp_path / "pkg", _WRITE_BAD_MASKS), data)
    assert not report.valid and len(report.errors) == 5, report.format()
    text = "\n".join(report.errors)
    assert "1 of 4 masks are missing (img004.tif)" in text
    assert "do not match an input tile (extra.tif)" in text
    assert "1 masks hold values outside 0, 85, 170, 255 (img001.tif: 1): they look like class indices" in text
    assert "differ in shape from their input tile (odd_33x100.tif: (10, 10) vs (33, 100))" in text
    assert "not uint8 (odd_70x45.tif: float32)" in text


@pytest.mark.parametrize("solution, model, timeout, phrases", [
    pytest.param("def maskgeration(imagepath, out_dir):\n    raise RuntimeError('weights went missing')\n",
                 True, 60, ["maskgeration crashed (exit code 1)", "RuntimeError: weights went missing"], id="crash"),
    pytest.param("import kagglekit_nb\n\ndef maskgeration(imagepath, out_dir):\n    pass\n", True, 60,
                 ["crashed", "imports kagglekit_nb, which the graders' machine does not have"], id="needs-kagglekit_nb"),
    pytest.param("import time\n\ndef maskgeration(imagepath, out_dir):\n    time.sleep(60)\n", True, 1,
                 ["did not finish within timeout_s=1 s"], id="timeout"),
    pytest.param("def maskgeration(imagepath, out_dir):\n    pass\n", False, 60, ["model.pth is missing"],
                 id="no-model-file"),
    pytest.param("def mask_generation(imagepath, out_dir):\n    pass\n", True, 60,
                 ["does not define maskgeration"], id="misnamed-entry"),
    pytest.param(None, True, 60, ["solution.py is missing"], id="no-solution"),
    pytest.param("def maskgeration(imagepath, out_dir:\n", True, 60, ["cannot be parsed"], id="syntax-error"),
])
def test_broken_package_is_invalid_with_a_clear_reason(tmp_path, data, solution, model, timeout, phrases):
    package = _broken_package(tmp_path / "pkg", solution, model)
    report = verify_code_package(package, data, timeout_s=timeout)
    assert not report.valid and report.kind == KIND
    for phrase in phrases:
        assert any(phrase in e for e in report.errors), report.format()


_WRITE_BACKGROUND = """
import numpy as np
import tifffile
from pathlib import Path


def maskgeration(imagepath, out_dir):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for path in Path(imagepath["Band1"]).iterdir():
        tifffile.imwrite(Path(out_dir) / path.name, np.zeros(tifffile.imread(path).shape, np.uint8))
"""


def test_labels_folder_and_one_class_warning(tmp_path, data):
    labels = Path(shutil.copytree(data / "labels", tmp_path / "truth"))
    tifffile.imwrite(labels / "odd_70x45.tif", np.zeros((5, 5), np.uint8))
    (labels / "odd_33x100.tif").unlink()
    report = verify_code_package(_broken_package(tmp_path / "pkg", _WRITE_BACKGROUND), data, labels)
    assert report.valid and report.errors == [], report.format()
    assert report.stats["labelled_tiles"] == 2 and report.stats["mcc"] == 0.0  # a constant prediction
    assert report.stats["predicted_fraction"]["background"] == 1.0
    assert any("entirely background" in w for w in report.warnings)
    assert any("label odd_70x45.tif is (5, 5) but its tile is (70, 45)" in w for w in report.warnings)


def test_oversized_model_file_is_invalid(tmp_path, data):
    package = _broken_package(tmp_path / "pkg", "def maskgeration(imagepath, out_dir):\n    pass\n", model=False)
    with open(package / MODEL_FILE, "wb") as fh:  # sparse: no disk space used
        fh.truncate(300 * 2**20 + 1)
    report = verify_code_package(package, data)
    assert not report.valid and "the limit is 300.0 MB" in report.errors[0]


def test_verify_rejects_bad_arguments(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="no folder for"):
        verify_code_package(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="labels='nowhere' is not a folder"):
        verify_code_package(tmp_path, data, "nowhere")
    with pytest.raises(ValueError, match="timeout_s=0"):
        verify_code_package(tmp_path, data, timeout_s=0)
    with pytest.raises(ValueError, match="needs sample= the folder holding Band1"):
        verify(tmp_path, None, kind=KIND)
    report = verify_code_package(tmp_path / "nothing", data)
    assert not report.valid and "is not a folder" in report.errors[0]


# ------------------------------------------------------------------------- finalize and baseline

@pytest.fixture(scope="module")
def finalized(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    package = _broken_package(out / "submission", _WRITE_BAD_MASKS)
    with pytest.raises(SubmissionError) as info:
        finalize(package, data, out, kind=KIND)
    return out, info.value


def test_finalize_replaces_a_broken_package_by_the_ndsi_baseline(finalized):
    out, error = finalized
    assert error.report.valid is False and "masks are missing" in str(error)
    assert f"kept as {out / 'submission.invalid'}" in str(error)
    assert (out / "submission.invalid" / SOLUTION_FILE).read_text() == textwrap.dedent(_WRITE_BAD_MASKS)
    assert (out / "submission" / SOLUTION_FILE).read_text() == solution_source()
    assert torch.load(out / "submission" / MODEL_FILE, weights_only=True)["models"] == []
    record = json.loads((out / "verification.json").read_text())
    assert record["valid"] is False and record["kind"] == KIND and record["outcome"] == "baseline"
    assert record["baseline_written"] is True and record["baseline_valid"] is True
    assert record["baseline_errors"] == [] and "NDSI" in record["baseline_note"]
    assert "values outside" in record["baseline_reason"]
    assert record["invalid_copy"] == str(out / "submission.invalid")


def test_ndsi_package_scores_like_ndsi_baseline(finalized, data):
    confusion = StreamingConfusion(4)
    bands = {b: data / b for b in BANDS}
    for name in list_tiles(bands):
        confusion.update(ndsi_baseline(read_tile(bands, name), HACK_CHANNELS), read_label(data / "labels" / name))
    stats = json.loads((finalized[0] / "verification.json").read_text())["baseline_stats"]
    assert stats["labelled_tiles"] == 4 and stats["predicted_fraction"]["glacier"] > 0
    assert stats["mcc"] == pytest.approx(confusion.mcc(), abs=1e-6)
    assert stats["mcc"] > 0.2


def test_register_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match="CSV kind"):
        register_baseline("label", lambda path, sample: None)
    with pytest.raises(ValueError, match="must be callable"):
        register_baseline("other", "not a function")
    with pytest.raises(ValueError, match="already registered"):
        register_baseline(KIND, write_ndsi_package)


def test_failing_baseline_writer_leaves_the_submission_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(verification, "_VERIFIERS", dict(verification._VERIFIERS))
    monkeypatch.setattr(sub, "_BASELINES", dict(sub._BASELINES))

    def check(path, sample, labels):
        return VerificationReport(valid=False, kind="folder", submission=str(path), errors=["no good"])

    def write(path, sample):
        path.mkdir()
        raise OSError("disk full")

    sub.register_verifier("folder", check)
    register_baseline("folder", write)
    package = tmp_path / "submission"
    package.mkdir()
    (package / "file.txt").write_text("mine")
    with pytest.raises(SubmissionError, match=r"could not be written \(OSError: disk full\)"):
        finalize(package, None, tmp_path, kind="folder")
    assert (package / "file.txt").read_text() == "mine" and not (tmp_path / "submission.invalid").exists()
    record = json.loads((tmp_path / "verification.json").read_text())
    assert record["baseline_written"] is False and record["baseline_error"] == "OSError: disk full"


def test_finalize_keeps_a_valid_package_untouched(tmp_path, monkeypatch, data):
    monkeypatch.setattr(sub, "_BASELINES", dict(sub._BASELINES))
    calls = []
    register_baseline(KIND, lambda path, sample: calls.append(path), replace=True)
    package = tmp_path / "submission"
    write_ndsi_package(package)
    shutil.copytree(package, tmp_path / "copy")
    report = finalize(package, data, tmp_path, kind=KIND)
    assert report.valid and calls == []
    assert json.loads((tmp_path / "verification.json").read_text())["outcome"] == "valid"
    assert (package / MODEL_FILE).read_bytes() == (tmp_path / "copy" / MODEL_FILE).read_bytes()
    # the masks the check ran on are kept beside the package, one per tile, as the package wrote them
    kept = tmp_path / "submission_masks"
    assert report.stats["masks"] == str(kept)
    names = sorted(p.name for p in (data / "Band1").iterdir())
    assert sorted(p.name for p in kept.iterdir()) == names
    for name in names:
        mask = tifffile.imread(kept / name)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 85}  # the NDSI rule: glacier or not
