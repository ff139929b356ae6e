"""Tests for kagglekit_nb.demo: the digits competition in the real Kaggle layout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kagglekit_nb.demo import DEMO_KINDS, make_classification_demo, make_demo

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_DIGITS = 1797  # scikit-learn's bundled digits


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_classification_demo(tmp_path_factory.mktemp("demo") / "digits", image_size=16)


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    return make_classification_demo(tmp_path_factory.mktemp("variant") / "digits", image_size=20, seed=3,
                                    id_style="int", label_style="int", color="rgb", image_format="jpg")


def _csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_demo_kinds():
    assert "classification" in DEMO_KINDS


def test_same_seed_same_competition_by_either_entry_point(tmp_path):
    a = make_demo("classification", tmp_path / "a", image_size=8, seed=2)
    b = make_classification_demo(tmp_path / "b", image_size=8, seed=2)
    assert a == tmp_path / "a"
    for name in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    first = _csv(a / "train.csv")["id"].iloc[0]
    assert (a / "train" / f"{first}.png").read_bytes() == (b / "train" / f"{first}.png").read_bytes()


def test_make_demo_unknown_kind_lists_the_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"unknown demo 'segmentation'; choose one of .*classification"):
        make_demo("segmentation", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_files_and_columns(demo):
    for name in ("train.csv", "test.csv", "sample_submission.csv", "solution.csv"):
        assert (demo / name).is_file(), name
    assert list(_csv(demo / "train.csv").columns) == ["id", "label"]
    assert list(_csv(demo / "test.csv").columns) == ["id"]
    assert list(_csv(demo / "sample_submission.csv").columns) == ["id", "label"]
    assert list(_csv(demo / "solution.csv").columns) == ["id", "label"]


def test_ids_are_unique_disjoint_and_cover_every_digit(demo):
    train, test = _csv(demo / "train.csv"), _csv(demo / "test.csv")
    sample, solution = _csv(demo / "sample_submission.csv"), _csv(demo / "solution.csv")
    assert len(train) + len(test) == N_DIGITS
    assert len(test) == 360  # test_fraction 0.2, rounded up by train_test_split
    assert train["id"].is_unique and test["id"].is_unique
    assert not set(train["id"]) & set(test["id"])
    assert sample["id"].tolist() == test["id"].tolist()
    assert solution["id"].tolist() == test["id"].tolist()
    assert train["id"].str.fullmatch(r"[0-9a-f]{10}").all()


def test_labels_are_the_real_digit_counts(demo):
    from sklearn.datasets import load_digits

    train, solution = _csv(demo / "train.csv"), _csv(demo / "solution.csv")
    expected = Counter(DIGIT_NAMES[t] for t in load_digits().target)
    assert Counter(train["label"]) + Counter(solution["label"]) == expected
    assert set(train["label"]) == set(DIGIT_NAMES)
    assert set(solution["label"]) == set(DIGIT_NAMES)  # stratified: every class in test
    sample = _csv(demo / "sample_submission.csv")
    assert sample["label"].nunique() == 1 and sample["label"].iloc[0] in DIGIT_NAMES


def test_one_image_per_id(demo):
    train, test = _csv(demo / "train.csv"), _csv(demo / "test.csv")
    assert sorted(p.name for p in (demo / "train").iterdir()) == sorted(f"{i}.png" for i in train["id"])
    assert sorted(p.name for p in (demo / "test").iterdir()) == sorted(f"{i}.png" for i in test["id"])


def test_gray_images_of_the_asked_size(demo):
    train = _csv(demo / "train.csv")
    for i in train["id"].head(5):
        with Image.open(demo / "train" / f"{i}.png") as img:
            assert img.format == "PNG"
            assert img.mode == "L"
            assert img.size == (16, 16)
            arr = np.asarray(img)
            assert arr.max() > 100 and arr.min() < 50  # a drawn digit, not a blank image


def _pixels(folder, ids):
    return np.stack([np.asarray(Image.open(folder / f"{i}.png"), dtype=np.float32).ravel() / 255 for i in ids])


def test_images_show_their_labels(demo):
    """The images are real digits: each test image's nearest train image mostly has its label."""
    train, solution = _csv(demo / "train.csv"), _csv(demo / "solution.csv")
    x_train, x_test = _pixels(demo / "train", train["id"]), _pixels(demo / "test", solution["id"])
    dist = (x_test**2).sum(1)[:, None] - 2 * x_test @ x_train.T + (x_train**2).sum(1)[None, :]
    predicted = train["label"].to_numpy()[dist.argmin(1)]
    assert (predicted == solution["label"].to_numpy()).mean() > 0.9


def test_int_ids_int_labels_rgb_jpg(variant):
    train = pd.read_csv(variant / "train.csv")
    test = pd.read_csv(variant / "test.csv")
    assert pd.api.types.is_integer_dtype(train["id"]) and pd.api.types.is_integer_dtype(test["id"])
    assert pd.api.types.is_integer_dtype(train["label"])
    assert set(train["label"]) == set(range(10))
    all_ids = set(train["id"]) | set(test["id"])
    assert len(all_ids) == N_DIGITS and all_ids == set(range(1000, 1000 + N_DIGITS))
    assert sorted(p.name for p in (variant / "train").iterdir()) == sorted(f"{i}.jpg" for i in train["id"])
    with Image.open(variant / "train" / f"{train['id'].iloc[0]}.jpg") as img:
        assert img.format == "JPEG"
        assert img.mode == "RGB"
        assert img.size == (20, 20)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(id_style="uuid"), "id_style"),
        (dict(label_style="float"), "label_style"),
        (dict(color="cmyk"), "color"),
        (dict(image_format="gif"), "image_format"),
        (dict(test_fraction=0.9), "test_fraction"),
        (dict(test_fraction=0.0), "test_fraction"),
        (dict(image_size=4), "image_size"),
        (dict(image_size=4096), "image_size"),
    ],
)
def test_bad_choices(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        make_classification_demo(tmp_path / "out", **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written before the check
