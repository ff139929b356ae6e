"""Tests for the synthetic ISIC 2024 demo: the real layout, dtypes and encodings, and its signal."""

from __future__ import annotations

import hashlib
import io

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kagglekit_nb.demo.isic import make_isic_demo
from kagglekit_nb.metrics import partial_auc
from kagglekit_nb.tasks.isic import (
    TEST_COLUMNS, TRAIN_COLUMNS, TRAIN_ONLY_COLUMNS, HDF5Images, make_features, read_metadata,
)

FILES = ["sample_submission.csv", "solution.csv", "test-image.hdf5", "test-metadata.csv",
         "train-image.hdf5", "train-metadata.csv"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """600 training lesions (18 positives), 150 test lesions; read-only."""
    return make_isic_demo(tmp_path_factory.mktemp("isic") / "data", seed=0, n_train=600)


@pytest.fixture(scope="module")
def frames(demo):
    return (pd.read_csv(demo / "train-metadata.csv", low_memory=False),
            pd.read_csv(demo / "test-metadata.csv", low_memory=False))


def test_files_and_columns(demo, frames):
    train, test = frames
    assert sorted(p.name for p in demo.iterdir()) == FILES
    assert tuple(train.columns) == TRAIN_COLUMNS and tuple(test.columns) == TEST_COLUMNS
    assert (len(train), len(test)) == (600, 150)


def test_dtypes_are_those_of_the_real_files(frames):
    train, test = frames
    numeric = [c for c in TRAIN_COLUMNS if c.startswith("tbp_lv_") and "location" not in c] + \
        ["age_approx", "clin_size_long_diam_mm", "mel_thick_mm"]
    for col in numeric:
        expected = np.int64 if col == "tbp_lv_symm_2axis_angle" else np.float64
        assert train[col].dtype == expected, col
    assert train["target"].dtype == np.int64
    text = ["isic_id", "patient_id", "sex", "anatom_site_general", "image_type", "tbp_tile_type",
            "tbp_lv_location", "tbp_lv_location_simple", "attribution", "copyright_license", "lesion_id",
            "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index"]
    for col in text:
        assert pd.api.types.is_string_dtype(train[col]), col
    assert (train["age_approx"].dropna() % 5 == 0).all()
    for col in ("age_approx", "sex", "anatom_site_general", "lesion_id", "iddx_2", "mel_thick_mm"):
        assert train[col].isna().any(), f"{col} should have missing values, as in the real data"


def test_values_look_like_the_real_ones(frames):
    train, test = frames
    assert train["isic_id"].str.fullmatch(r"ISIC_\d{7}").all() and train["isic_id"].is_monotonic_increasing
    assert train["patient_id"].str.fullmatch(r"IP_\d{7}").all()
    assert set(train["sex"].dropna()) == {"male", "female"}
    assert set(train["image_type"]) == {"TBP tile: close-up"}
    assert set(train["tbp_tile_type"]) == {"3D: white", "3D: XP"}
    assert set(train["anatom_site_general"].dropna()) == {
        "lower extremity", "head/neck", "posterior torso", "anterior torso", "upper extremity"}
    assert {"Benign", "Malignant"} <= set(train["iddx_1"]) <= {"Benign", "Malignant", "Indeterminate"}
    assert (train.loc[train["target"] == 1, "iddx_1"] == "Malignant").all()
    assert (train.loc[train["target"] == 0, "iddx_1"] != "Malignant").all()
    assert (train["iddx_full"].str.split("::").str[0] == train["iddx_1"]).all()
    assert train.loc[train["target"] == 1, "lesion_id"].str.fullmatch(r"IL_\d{7}").all()
    assert all(loc.startswith(simple) for loc, simple in zip(train["tbp_lv_location"], train["tbp_lv_location_simple"]))
    # The colour columns are mutually consistent, as measured in CIELAB.
    np.testing.assert_allclose(train["tbp_lv_C"], np.hypot(train["tbp_lv_A"], train["tbp_lv_B"]))
    np.testing.assert_allclose(train["tbp_lv_deltaA"], train["tbp_lv_A"] - train["tbp_lv_Aext"])
    np.testing.assert_allclose(train["tbp_lv_area_perim_ratio"],
                               train["tbp_lv_perimeterMM"] ** 2 / train["tbp_lv_areaMM2"])
    assert (train["tbp_lv_minorAxisMM"] <= train["clin_size_long_diam_mm"] + 0.01).all()
    assert train["tbp_lv_nevi_confidence"].between(0, 100).all()


def test_patients_and_positives(frames, demo):
    train, test = frames
    assert train["target"].sum() == 18  # 3%
    assert train["patient_id"].nunique() >= 20
    assert train.groupby("patient_id").size().min() >= 3
    assert train.loc[train["target"] == 1, "patient_id"].nunique() >= 5  # enough for grouped 5-fold CV
    assert not set(train["patient_id"]) & set(test["patient_id"])  # test lesions are other people's
    solution = pd.read_csv(demo / "solution.csv")
    assert list(solution.columns) == ["isic_id", "target"]
    assert solution["isic_id"].tolist() == test["isic_id"].tolist()
    assert 2 <= solution["target"].sum() <= 10


def test_sample_submission(frames, demo):
    _, test = frames
    sample = pd.read_csv(demo / "sample_submission.csv")
    assert list(sample.columns) == ["isic_id", "target"]
    assert sample["isic_id"].tolist() == test["isic_id"].tolist()
    assert (sample["target"] == 0.3).all()


def test_hdf5_holds_one_scalar_jpeg_per_isic_id(demo, frames):
    train, test = frames
    for name, frame in (("train-image.hdf5", train), ("test-image.hdf5", test)):
        with h5py.File(demo / name, "r") as f:
            assert sorted(f.keys()) == sorted(frame["isic_id"])
            sizes = set()
            for isic_id in frame["isic_id"][:40]:
                ds = f[isic_id]
                assert isinstance(ds, h5py.Dataset) and ds.shape == ()
                raw = ds[()]
                assert bytes(raw)[:3] == b"\xff\xd8\xff"
                with Image.open(io.BytesIO(raw)) as img:
                    assert img.format == "JPEG" and img.mode == "RGB"
                    assert 100 <= img.width <= 200 and 100 <= img.height <= 200
                    sizes.add(img.size)
            assert len(sizes) > 10  # variable sizes


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    def digest(path):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
                if p.suffix == ".csv"}
    a = make_isic_demo(tmp_path / "a", seed=5, n_train=120, n_patients=20)
    b = make_isic_demo(tmp_path / "b", seed=5, n_train=120, n_patients=20)
    c = make_isic_demo(tmp_path / "c", seed=6, n_train=120, n_patients=20)
    assert digest(a) == digest(b) and digest(a)["train-metadata.csv"] != digest(c)["train-metadata.csv"]
    with h5py.File(a / "train-image.hdf5") as fa, h5py.File(b / "train-image.hdf5") as fb:
        assert all(bytes(fa[k][()]) == bytes(fb[k][()]) for k in fa)


def _lesion_colour_spread(image: np.ndarray) -> float:
    """Colour spread of the pixels that differ from the skin at the top and bottom edges."""
    image = image.astype(np.float32)
    skin = np.median(np.concatenate([image[:4].reshape(-1, 3), image[-4:].reshape(-1, 3)]), axis=0)
    lesion = image[np.linalg.norm(image - skin, axis=2) > 25]
    return float(lesion.std(axis=0).mean()) if len(lesion) > 10 else 0.0


def test_both_modalities_carry_signal(demo):
    train, test = read_metadata(demo)
    y = train["target"].to_numpy()
    X, _, _ = make_features(train, test)
    # Ugly duckling: malignant lesions are larger than the same patient's other lesions.
    z = X["tbp_lv_areaMM2_patient_z"]
    assert z[y == 1].mean() - z[y == 0].mean() > 0.5
    # A hand-made tabular score clearly beats a constant (0.02, the diagonal) on pAUC.
    score = (X["tbp_lv_areaMM2_patient_z"] + X["tbp_lv_deltaLBnorm_patient_z"]
             + X["tbp_lv_color_std_mean_patient_z"] - X["tbp_lv_nevi_confidence_patient_z"])
    assert partial_auc(y, score.to_numpy()) > 0.07
    # Malignant lesions show more colours in the image.
    images = HDF5Images(demo / "train-image.hdf5", train["isic_id"])
    spread = np.array([_lesion_colour_spread(images[i]) for i in range(len(images))])
    assert spread[y == 1].mean() > spread[y == 0].mean() + 3


def test_the_train_only_columns_are_the_eleven(frames):
    train, test = frames
    assert set(train.columns) - set(test.columns) == set(TRAIN_ONLY_COLUMNS)


@pytest.mark.parametrize("options, message", [
    ({"n_train": 50}, "n_train=50 must be an integer >= 100"),
    ({"n_train": 200, "n_test": 5}, "n_test=5 must be an integer >= 20"),
    ({"n_train": 200, "n_patients": 90}, "n_patients=90 leaves fewer than 3 lesions per patient; use at most 66"),
    ({"positive_rate": 0.5}, r"positive_rate=0.5 must be a float in \(0, 0.2\]"),
    ({"seed": -1}, "seed=-1 must be an integer >= 0"),
])
def test_bad_options_are_rejected(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        make_isic_demo(tmp_path / "x", **options)
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_demo(tmp_path, capsys):
    from kagglekit_nb.cli import main

    assert main(["demo", "isic", "--out", str(tmp_path / "d"), "--seed", "3", "--images", "150"]) == 0
    assert "wrote the isic demo" in capsys.readouterr().out
    train, test = read_metadata(tmp_path / "d")
    assert (len(train), len(test)) == (150, 37)
