"""Tests for tests/layouts.py: every generated competition is reproducible, in its published file
layout, and its answer key, submission rules, metric and baseline agree with one another."""
from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import py7zr
import pydicom
import pytest
from layouts import LAYOUTS, METRICS, Layout, _map_at_k, is_better, make
from PIL import Image

SEED = 3
N_TRAIN, N_TEST = 120, 40
NAMES = sorted(LAYOUTS)
PIXELS = [f"pixel{i}" for i in range(784)]
RANZCR = ["ETT - Abnormal", "ETT - Borderline", "ETT - Normal", "NGT - Abnormal", "NGT - Borderline",
          "NGT - Incompletely Imaged", "NGT - Normal", "CVC - Abnormal", "CVC - Borderline", "CVC - Normal",
          "Swan Ganz Catheter Present"]
LEAF_FEATURES = [f"{family}{k}" for family in ("margin", "shape", "texture") for k in range(1, 9)]
DOG_BREEDS = ["affenpinscher", "afghan_hound", "beagle", "boxer", "chihuahua", "pug"]
LEAF_SPECIES = ["Acer_Capillipes", "Acer_Circinatum", "Acer_Mono", "Acer_Opalus", "Acer_Palmatum", "Acer_Pictum"]

# The published layout of each competition, written from its data page: the header of every CSV,
# and how many files each folder pattern (or archive member pattern, "archive:pattern") holds.
PUBLISHED = {
    "digit-recognizer": {
        "csv": {"train.csv": ["label", *PIXELS], "test.csv": PIXELS, "sample_submission.csv": ["ImageId", "Label"]},
        "files": {"*.csv": 3}},
    "aerial-cactus-identification": {
        "csv": {"train.csv": ["id", "has_cactus"], "sample_submission.csv": ["id", "has_cactus"]},
        "files": {"train.zip:train/*.jpg": N_TRAIN, "test.zip:test/*.jpg": N_TEST, "train": 0, "test": 0}},
    "histopathologic-cancer-detection": {
        "csv": {"train_labels.csv": ["id", "label"], "sample_submission.csv": ["id", "label"]},
        "files": {"train/*.tif": N_TRAIN, "test/*.tif": N_TEST}},
    "dog-breed-identification": {
        "csv": {"labels.csv": ["id", "breed"],
                "sample_submission.csv": ["id", *DOG_BREEDS]},
        "files": {"train/*.jpg": N_TRAIN, "test/*.jpg": N_TEST}},
    "plant-seedlings-classification": {
        "csv": {"sample_submission.csv": ["file", "species"]},
        "files": {"train/*/*.png": N_TRAIN, "test/*.png": N_TEST, "train/Loose Silky-bent": 1,
                  "train/Common Chickweed": 1, "train/*.png": 0}},
    "dogs-vs-cats-redux-kernels-edition": {
        "csv": {"sample_submission.csv": ["id", "label"]},
        "files": {"train.zip:train/cat.*.jpg": N_TRAIN // 2, "train.zip:train/dog.*.jpg": N_TRAIN // 2,
                  "test.zip:test/*.jpg": N_TEST, "*.csv": 1}},
    "plant-pathology-2020-fgvc7": {
        "csv": {"train.csv": ["image_id", "healthy", "multiple_diseases", "rust", "scab"], "test.csv": ["image_id"],
                "sample_submission.csv": ["image_id", "healthy", "multiple_diseases", "rust", "scab"]},
        "files": {"images/Train_*.jpg": N_TRAIN, "images/Test_*.jpg": N_TEST}},
    "plant-pathology-2021-fgvc8": {
        "csv": {"train.csv": ["image", "labels"], "sample_submission.csv": ["image", "labels"]},
        "files": {"train_images/*.jpg": N_TRAIN, "test_images/*.jpg": N_TEST, "test.csv": 0}},
    "cassava-leaf-disease-classification": {
        "csv": {"train.csv": ["image_id", "label"], "sample_submission.csv": ["image_id", "label"]},
        "files": {"train_images/*.jpg": N_TRAIN, "test_images/*.jpg": N_TEST, "train_tfrecords/*.tfrec": 2,
                  "test_tfrecords/*.tfrec": 1, "label_num_to_disease_map.json": 1}},
    "aptos2019-blindness-detection": {
        "csv": {"train.csv": ["id_code", "diagnosis"], "test.csv": ["id_code"],
                "sample_submission.csv": ["id_code", "diagnosis"]},
        "files": {"train_images/*.png": N_TRAIN, "test_images/*.png": N_TEST}},
    "siim-isic-melanoma-classification": {
        "csv": {"train.csv": ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
                              "diagnosis", "benign_malignant", "target"],
                "test.csv": ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge"],
                "sample_submission.csv": ["image_name", "target"]},
        "files": {"jpeg/train/ISIC_*.jpg": N_TRAIN, "jpeg/test/ISIC_*.jpg": N_TEST,
                  "train/ISIC_*.dcm": N_TRAIN, "test/ISIC_*.dcm": N_TEST}},
    "ranzcr-clip-catheter-line-classification": {
        "csv": {"train.csv": ["StudyInstanceUID", *RANZCR, "PatientID"],
                "train_annotations.csv": ["StudyInstanceUID", "label", "data"],
                "sample_submission.csv": ["StudyInstanceUID", *RANZCR]},
        "files": {"train/1.2.826.0.1.3680043.8.498.*.jpg": N_TRAIN, "test/1.2.826.0.1.3680043.8.498.*.jpg": N_TEST}},
    "humpback-whale-identification": {
        "csv": {"train.csv": ["Image", "Id"], "sample_submission.csv": ["Image", "Id"]},
        "files": {"train/*.jpg": N_TRAIN, "test/*.jpg": N_TEST}},
    "cifar-10": {
        "csv": {"trainLabels.csv": ["id", "label"], "sample_submission.csv": ["id", "label"]},
        "files": {"train.7z:train/*.png": N_TRAIN, "test.7z:test/*.png": N_TEST, "train": 0, "test": 0}},
    "planet-understanding-the-amazon-from-space": {
        "csv": {"train_v2.csv": ["image_name", "tags"], "sample_submission_v2.csv": ["image_name", "tags"]},
        "files": {"train-jpg/train_*.jpg": N_TRAIN, "test-jpg/test_*.jpg": N_TEST, "sample_submission.csv": 0}},
    "leaf-classification": {
        "csv": {"train.csv": ["id", "species", *LEAF_FEATURES], "test.csv": ["id", *LEAF_FEATURES],
                "sample_submission.csv": ["id", *LEAF_SPECIES]},
        "files": {"images/*.jpg": N_TRAIN + N_TEST}},
}
# Image colour where a competition's images are grey; all others are RGB. Sizes where they are fixed.
GREY = {"ranzcr-clip-catheter-line-classification", "leaf-classification"}
SIZES = {"aerial-cactus-identification": (32, 32), "histopathologic-cancer-detection": (96, 96), "cifar-10": (32, 32)}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Layout]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: make(name, root, SEED) for name in NAMES}


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _archive_members(path: Path) -> dict[str, str]:
    """Member name -> a fingerprint of its bytes (7z records write times, so not the archive's bytes)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            return {m.filename: f"{m.CRC:08x}/{m.file_size}" for m in archive.infolist()}
    with py7zr.SevenZipFile(path) as archive:
        return {m.filename: f"{m.crc32:08x}/{m.uncompressed}" for m in archive.list()}


def _contents(folder: Path) -> dict[str, object]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = path.relative_to(folder).as_posix()
        files[key] = _archive_members(path) if path.suffix == ".7z" else hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _count(data_dir: Path, pattern: str) -> int:
    if ":" in pattern:
        archive, inside = pattern.split(":")
        return sum(Path(m).match(inside) for m in _archive_members(data_dir / archive))
    return len(list(data_dir.glob(pattern)))


def _labels(cells: pd.Series, target: str) -> list[str]:
    """The labels in a label column: space-separated lists for "label_list", else whole cells."""
    return [t for cell in cells for t in cell.split()] if target == "label_list" else list(cells)


# --------------------------------------------------------------------------- the registry

def test_the_sixteen_competitions_are_registered():
    assert set(LAYOUTS) == set(PUBLISHED)


def test_an_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="'mnist'.*cifar-10.*digit-recognizer"):
        make("mnist", tmp_path)


def test_a_folder_that_holds_files_is_refused(tmp_path):
    (tmp_path / "cifar-10").mkdir()
    (tmp_path / "cifar-10" / "old.csv").write_text("id\n")
    with pytest.raises(FileExistsError, match="cifar-10"):
        make("cifar-10", tmp_path)


@pytest.mark.parametrize("sizes, message", [
    ({"n_train": 20}, r"n_train=20.*>= 25"), ({"n_test": 3}, r"n_test=3.*>= 5"),
    ({"n_train": 2000}, "exceeds"), ({"n_train": 60.0}, "n_train=60.0")])
def test_sizes_too_small_or_large_are_errors(tmp_path, sizes, message):
    with pytest.raises(ValueError, match=message):
        make("cifar-10", tmp_path, **sizes)


def test_other_sizes_are_honoured(tmp_path):
    layout = make("aptos2019-blindness-detection", tmp_path, n_train=50, n_test=10)
    assert len(list((layout.data_dir / "train_images").glob("*.png"))) == 50
    assert len(layout.answers) == 10 and layout.expect["n_test"] == 10


# --------------------------------------------------------------------------- generation

@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_writes_the_same_files(name, layouts, tmp_path):
    first, again = layouts[name], make(name, tmp_path / "again", SEED)
    assert _contents(again.data_dir) == _contents(first.data_dir)
    pd.testing.assert_frame_equal(again.answers, first.answers)
    assert again.expect == first.expect
    other = make(name, tmp_path / "other", SEED + 1)
    assert _contents(other.data_dir) != _contents(first.data_dir)


@pytest.mark.parametrize("name", NAMES)
def test_the_published_files_and_headers(name, layouts):
    data_dir = layouts[name].data_dir
    for csv, header in PUBLISHED[name]["csv"].items():
        assert list(pd.read_csv(data_dir / csv, nrows=0).columns) == header, csv
    for pattern, n in PUBLISHED[name]["files"].items():
        assert _count(data_dir, pattern) == n, pattern


@pytest.mark.parametrize("name", NAMES)
def test_expect_agrees_with_the_files(name, layouts):
    layout = layouts[name]
    e, data_dir = layout.expect, layout.data_dir
    sample = pd.read_csv(data_dir / e["sample_submission"], dtype=str)
    assert sample.columns[0] == e["id_col"] and len(sample) == e["n_test"] == N_TEST
    assert list(layout.answers.columns) == list(sample.columns)
    assert list(layout.answers[e["id_col"]].astype(str)) == list(sample[e["id_col"]])
    assert all((data_dir / a).is_file() for a in e["archives"])
    if e["labels_file"] is not None:
        labels = pd.read_csv(data_dir / e["labels_file"], dtype=str)
        assert len(labels) == e["n_train"] == N_TRAIN
        if e["label_column"] is not None:
            assert sorted(set(_labels(labels[e["label_column"]], layout.target))) == sorted(e["classes"])
        else:  # one-hot / multi-hot columns are the classes
            assert set(e["classes"]) <= set(labels.columns)


@pytest.mark.parametrize("name", NAMES)
def test_every_class_has_five_training_images(name, layouts):
    layout = layouts[name]
    values = layout.train_key.iloc[:, 1:]
    if layout.target in ("class_proba", "multilabel_proba"):
        counts = values.astype(int).sum()
    elif layout.target == "binary_proba":
        counts = values.iloc[:, 0].value_counts()
        assert len(counts) == 2
    else:
        counts = pd.Series(_labels(values.iloc[:, 0].astype(str), layout.target)).value_counts()
        assert sorted(map(str, counts.index)) == sorted(layout.expect["classes"])
    assert counts.min() >= 5


@pytest.mark.parametrize("name", NAMES)
def test_images_are_grey_or_rgb_as_published(name, layouts, tmp_path):
    layout = layouts[name]
    data_dir, fmt = layout.data_dir, layout.expect["image_format"]
    if fmt is None:  # digit-recognizer: 28x28 grey ints in the CSV
        pixels = pd.read_csv(data_dir / "train.csv").drop(columns="label").to_numpy()
        assert pixels.dtype.kind == "i" and pixels.min() >= 0 and 200 < pixels.max() <= 255
        return
    archives = layout.expect["archives"]
    if archives:
        archive = data_dir / next(a for a in archives if a.startswith("train"))
        member = next(m for m in _archive_members(archive) if m.endswith(fmt))
        if archive.suffix == ".zip":
            zipfile.ZipFile(archive).extract(member, tmp_path)
        else:
            with py7zr.SevenZipFile(archive) as seven:
                seven.extract(tmp_path, targets=[member])
        path = tmp_path / member
    else:
        path = next(p for p in sorted(data_dir.rglob(f"*{fmt}")) if "test" not in p.parts)
    with Image.open(path) as image:
        assert image.mode == ("L" if name in GREY else "RGB")
        assert image.size == SIZES.get(name, image.size)


def test_colour_is_random_per_image_not_per_class(layouts):
    """The tint must carry no label: the same class comes in clearly different hues."""
    layout = layouts["dog-breed-identification"]
    breed = pd.read_csv(layout.data_dir / "labels.csv").query("breed == 'pug'")["id"]
    hues = [np.asarray(Image.open(layout.data_dir / "train" / f"{i}.jpg")).reshape(-1, 3).max(0) for i in breed]
    assert np.ptp(np.stack(hues), axis=0).min() > 60


def test_siim_lesions_come_as_jpeg_and_dicom_of_the_same_pixels(layouts):
    data_dir = layouts["siim-isic-melanoma-classification"].data_dir
    for split in ("train", "test"):
        dicom, jpeg = (data_dir / split).glob("*.dcm"), (data_dir / "jpeg" / split).glob("*.jpg")
        assert {p.stem for p in dicom} == {p.stem for p in jpeg}
    train = pd.read_csv(data_dir / "train.csv")
    assert ((train["target"] == 1) == (train["benign_malignant"] == "malignant")).all()
    assert set(train.loc[train["target"] == 1, "diagnosis"]) == {"melanoma"}
    name = train["image_name"].iloc[0]
    ds = pydicom.dcmread(data_dir / "train" / f"{name}.dcm")
    assert ds.Modality == "OT" and ds.PatientID == train["patient_id"].iloc[0]
    jpeg = np.asarray(Image.open(data_dir / "jpeg" / "train" / f"{name}.jpg"), dtype=float)
    assert ds.pixel_array.shape == jpeg.shape == (64, 64, 3)
    assert np.abs(ds.pixel_array - jpeg).mean() < 8  # the same picture, up to JPEG loss


def test_side_files_that_are_not_labels(layouts):
    cassava = layouts["cassava-leaf-disease-classification"].data_dir
    assert json.loads((cassava / "label_num_to_disease_map.json").read_text())["4"] == "Healthy"
    ranzcr = layouts["ranzcr-clip-catheter-line-classification"].data_dir
    notes = pd.read_csv(ranzcr / "train_annotations.csv")
    assert len(notes) >= 3 and set(notes["label"]) <= set(RANZCR)
    assert set(notes["StudyInstanceUID"]) <= set(pd.read_csv(ranzcr / "train.csv")["StudyInstanceUID"])
    assert notes["data"].str.match(r"^\[\[\d+, \d+\](, \[\d+, \d+\])+\]$").all()


def test_leaf_ids_are_shared_out_between_train_and_test(layouts):
    data_dir = layouts["leaf-classification"].data_dir
    train, test = pd.read_csv(data_dir / "train.csv"), pd.read_csv(data_dir / "test.csv")
    assert sorted([*train["id"], *test["id"]]) == list(range(1, N_TRAIN + N_TEST + 1))
    assert train["id"].is_monotonic_increasing and test["id"].is_monotonic_increasing
    features = train[LEAF_FEATURES[:8]]
    assert np.allclose(features.sum(axis=1), 1, atol=1e-5)  # each family is a normalised histogram


def test_cats_and_dogs_are_numbered_from_zero_and_test_from_one(layouts):
    data_dir = layouts["dogs-vs-cats-redux-kernels-edition"].data_dir
    names = set(_archive_members(data_dir / "train.zip"))
    assert {"train/cat.0.jpg", "train/dog.0.jpg", f"train/cat.{N_TRAIN // 2 - 1}.jpg"} <= names
    assert {f"test/{i}.jpg" for i in range(1, N_TEST + 1)} == set(_archive_members(data_dir / "test.zip")) - {"test/"}


# --------------------------------------------------------------------------- answers, baseline, metric

@pytest.mark.parametrize("name", NAMES)
def test_the_answer_key_is_valid_and_perfect(name, layouts, tmp_path):
    layout = layouts[name]
    path = _write(layout.answers, tmp_path / "answers.csv")
    assert layout.validate(path) == []
    assert layout.score(path) == pytest.approx(METRICS[layout.metric].perfect, abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_the_sample_submission_is_valid(name, layouts):
    layout = layouts[name]
    assert layout.validate(layout.sample_path) == []


@pytest.mark.parametrize("name", NAMES)
def test_the_baseline_is_valid_and_worse_than_the_answers(name, layouts, tmp_path):
    layout = layouts[name]
    baseline = layout.baseline()
    sample = pd.read_csv(layout.sample_path, dtype=str)
    assert list(baseline.columns) == list(sample.columns)
    assert list(baseline.iloc[:, 0]) == list(sample.iloc[:, 0])
    assert baseline.iloc[:, 1:].nunique().max() == 1  # one value per column: a constant submission
    path = _write(baseline, tmp_path / "baseline.csv")
    assert layout.validate(path) == []
    score = layout.baseline_score()
    assert score == layout.score(path)
    assert is_better(layout.metric, METRICS[layout.metric].perfect, score)
    if layout.metric in ("roc_auc", "mean_column_auc"):
        assert score == pytest.approx(0.5)  # a constant ranks nothing
    if layout.metric == "qwk":
        assert score == pytest.approx(0.0)


def test_baselines_are_the_training_prior(layouts):
    cactus = layouts["aerial-cactus-identification"]
    rate = pd.read_csv(cactus.data_dir / "train.csv")["has_cactus"].mean()
    assert float(cactus.baseline()["has_cactus"].iloc[0]) == pytest.approx(rate)
    assert 0.6 < rate < 0.8
    whales = layouts["humpback-whale-identification"].baseline()["Id"].iloc[0].split()
    assert len(whales) == 5 and whales[0] == "new_whale"
    planet = layouts["planet-understanding-the-amazon-from-space"].baseline()["tags"].iloc[0]
    assert set(planet.split()) == {"primary", "clear"}  # the tags on at least half the training chips


def test_map_at_5_counts_the_rank_of_the_one_true_label():
    truth = ["a", "b", "c", "d"]
    predicted = [["a", "x"], ["x", "b"], ["x", "y", "z", "w", "v", "c"], ["x", "x", "d"]]
    assert _map_at_k(truth, predicted) == pytest.approx((1 + 1 / 2 + 0 + 1 / 3) / 4)


def test_log_loss_clips_and_renormalises_rows(layouts, tmp_path):
    breeds = layouts["dog-breed-identification"]
    zeros = breeds.answers.copy()
    zeros.iloc[:, 1:] = 0
    assert breeds.score(_write(zeros, tmp_path / "zeros.csv")) == pytest.approx(math.log(6))
    halved = breeds.baseline()
    halved.iloc[:, 1:] = halved.iloc[:, 1:].astype(float) / 2  # rows sum to 0.5
    assert breeds.score(_write(halved, tmp_path / "halved.csv")) == pytest.approx(breeds.baseline_score())
    cats = layouts["dogs-vs-cats-redux-kernels-edition"]
    wrong = cats.answers.assign(label=1 - cats.answers["label"])
    assert cats.score(_write(wrong, tmp_path / "wrong.csv")) == pytest.approx(-math.log(1e-15), rel=1e-4)


def test_qwk_rewards_near_misses(layouts, tmp_path):
    aptos = layouts["aptos2019-blindness-detection"]
    truth = aptos.answers["diagnosis"]
    near = aptos.score(_write(aptos.answers.assign(diagnosis=(truth + 1).clip(upper=4)), tmp_path / "near.csv"))
    far = aptos.score(_write(aptos.answers.assign(diagnosis=4 - truth), tmp_path / "far.csv"))
    assert 0.5 < near < 1 and far < 0


def test_f2_is_the_per_row_mean_weighted_to_recall(layouts, tmp_path):
    planet = layouts["planet-understanding-the-amazon-from-space"]
    tags = planet.expect["classes"]
    everything = planet.answers.assign(tags=" ".join(tags))
    n_true = planet.answers["tags"].str.split().map(len)
    precision = n_true / len(tags)  # recall is 1 on every row
    expected = (5 * precision / (4 * precision + 1)).mean()
    assert planet.score(_write(everything, tmp_path / "all.csv")) == pytest.approx(expected)


def test_mean_column_auc_averages_the_columns(layouts, tmp_path):
    ranzcr = layouts["ranzcr-clip-catheter-line-classification"]
    half_wrong = ranzcr.answers.copy()
    flipped = RANZCR[:4]
    half_wrong[flipped] = 1 - half_wrong[flipped]  # AUC 0 on 4 of the 11 columns, 1 on the others
    assert ranzcr.score(_write(half_wrong, tmp_path / "flip.csv")) == pytest.approx(7 / 11)


# --------------------------------------------------------------------------- broken submissions

def _text(layout: Layout) -> pd.DataFrame:
    return layout.answers.astype(str)


def _renamed(layout):
    frame = _text(layout)
    return frame.rename(columns={frame.columns[-1]: "prediction"}), "prediction"


def _reordered(layout):
    frame = _text(layout)
    return frame[[*frame.columns[1:], frame.columns[0]]], "another order"


def _missing_id(layout):
    frame = _text(layout)
    return frame.iloc[1:], repr(frame.iloc[0, 0])


def _repeated_id(layout):
    frame = _text(layout)
    frame.iloc[-1, 0] = frame.iloc[0, 0]
    return frame, "more than once"


def _unknown_id(layout):
    frame = _text(layout)
    frame.iloc[0, 0] = "no-such-id"
    return frame, "no-such-id"


def _empty_cell(layout):
    frame = _text(layout)
    frame.iloc[3, 1] = ""
    return frame, "empty"


BREAKAGES = {"renamed column": _renamed, "columns reordered": _reordered, "missing id": _missing_id,
             "repeated id": _repeated_id, "unknown id": _unknown_id, "empty cell": _empty_cell}
# per target: cells Kaggle rejects in a value column, each with a word its message must show
BAD_VALUES = {
    "label": [("not-a-class", "not-a-class"), ("", "empty")],
    "binary_proba": [("1.5", "'1.5'"), ("-0.1", "'-0.1'"), ("abc", "'abc'"), ("nan", "'nan'")],
    "class_proba": [("1.5", "'1.5'"), ("-0.1", "'-0.1'"), ("abc", "'abc'")],
    "multilabel_proba": [("1.5", "'1.5'"), ("inf", "'inf'"), ("yes", "'yes'")],
    "label_list": [("healthy not-a-label", "not-a-label"), ("clear forest", "forest")],
    "topk": [("new_whale " + " ".join(f"w_{i:07d}" for i in range(5)), "1 to 5"),
             ("new_whale w_0000000", "w_0000000")],
}


@pytest.mark.parametrize("breakage", BREAKAGES)
@pytest.mark.parametrize("name", NAMES)
def test_a_broken_submission_is_rejected_with_a_reason(name, breakage, layouts, tmp_path):
    layout = layouts[name]
    frame, shown = BREAKAGES[breakage](layout)
    path = _write(frame, tmp_path / "broken.csv")
    problems = layout.validate(path)
    assert problems and shown in " ".join(problems), problems
    with pytest.raises(ValueError, match="not a valid"):
        layout.score(path)


@pytest.mark.parametrize("name", NAMES)
def test_an_illegal_value_is_rejected_with_a_reason(name, layouts, tmp_path):
    layout = layouts[name]
    for cell, shown in BAD_VALUES[layout.target]:
        frame = _text(layout)
        frame.iloc[2, -1] = cell
        problems = layout.validate(_write(frame, tmp_path / "bad.csv"))
        assert problems and shown in " ".join(problems), (cell, problems)
        assert str(frame.columns[-1]) in " ".join(problems)


def test_a_missing_or_unreadable_file_is_reported(layouts, tmp_path):
    layout = layouts["cifar-10"]
    assert "no such file" in layout.validate(tmp_path / "nothing.csv")[0]
    (tmp_path / "empty.csv").write_text("")
    assert "not a readable CSV" in layout.validate(tmp_path / "empty.csv")[0]
