"""Tests for kagglekit_nb.tasks.isic: metadata reading, the HDF5 image reader, tabular features."""

from __future__ import annotations

import io
import pickle
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kagglekit_nb.tasks import isic
from kagglekit_nb.tasks.isic import (
    ENGINEERED_FEATURES,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    TRAIN_ONLY_COLUMNS,
    HDF5Images,
    ResizeToTensor,
    collate_skip_none,
    make_features,
    read_metadata,
)


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    """A small demo competition (read-only: copy to mutate)."""
    from kagglekit_nb.demo.isic import make_isic_demo

    return make_isic_demo(tmp_path_factory.mktemp("isic") / "data", seed=1, n_train=200, n_test=40)


@pytest.fixture(scope="module")
def frames(comp):
    return read_metadata(comp)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def odd_file(tmp_path):
    """An HDF5 file with good JPEGs stored three ways, and broken entries."""
    def smooth(h, w, colour):  # a gradient: JPEG keeps it within a few levels
        ramp = np.linspace(0.6, 1.0, w)[None, :, None] * np.ones((h, 1, 1))
        return (ramp * np.array(colour)).astype(np.uint8)
    pixels = {"ISIC_0000001": smooth(30, 40, (200, 40, 40)), "ISIC_0000002": smooth(25, 25, (40, 200, 40)),
              "ISIC_0000003": smooth(20, 31, (40, 40, 200))}
    path = tmp_path / "images.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("ISIC_0000001", data=np.void(jpeg_bytes(pixels["ISIC_0000001"])))   # opaque bytes
        f.create_dataset("ISIC_0000002", data=np.bytes_(jpeg_bytes(pixels["ISIC_0000002"])))  # fixed-length string
        f.create_dataset("ISIC_0000003", data=np.frombuffer(jpeg_bytes(pixels["ISIC_0000003"]), np.uint8))
        f.create_dataset("ISIC_0000004", data=np.void(b"not a jpeg at all"))
        f.create_dataset("ISIC_0000005", data=np.void(jpeg_bytes(pixels["ISIC_0000001"])[:300]))  # truncated
    return path, pixels


# --- constants and metadata -------------------------------------------------------------------

def test_column_lists_follow_the_competition():
    assert len(TRAIN_COLUMNS) == 55 and len(set(TRAIN_COLUMNS)) == 55
    assert len(TRAIN_ONLY_COLUMNS) == 11 and set(TRAIN_ONLY_COLUMNS) <= set(TRAIN_COLUMNS)
    assert len(TEST_COLUMNS) == 44 and not set(TEST_COLUMNS) & set(TRAIN_ONLY_COLUMNS)
    assert TRAIN_COLUMNS[:3] == ("isic_id", "target", "patient_id")
    assert TRAIN_COLUMNS[-1] == "tbp_lv_dnn_lesion_confidence"
    assert [c for c in TRAIN_COLUMNS if c in TEST_COLUMNS] == list(TEST_COLUMNS)  # same order


def test_read_metadata(frames):
    train, test = frames
    assert list(train.columns) == list(TRAIN_COLUMNS) and list(test.columns) == list(TEST_COLUMNS)
    assert (len(train), len(test)) == (200, 40)
    assert train["isic_id"].str.fullmatch(r"ISIC_\d{7}").all()
    assert train["target"].dtype == np.int64


def test_read_metadata_errors(comp, tmp_path):
    data = shutil.copytree(comp, tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="nowhere/train-metadata.csv does not exist"):
        read_metadata(tmp_path / "nowhere")
    test = pd.read_csv(data / "test-metadata.csv")
    test.drop(columns="patient_id").to_csv(data / "test-metadata.csv", index=False)
    with pytest.raises(ValueError, match="test-metadata.csv lacks the column.s. patient_id"):
        read_metadata(data)
    pd.concat([test, test.head(1)]).to_csv(data / "test-metadata.csv", index=False)
    with pytest.raises(ValueError, match=f"lists isic_id '{test['isic_id'][0]}' more than once"):
        read_metadata(data)


# --- HDF5 images ------------------------------------------------------------------------------

def test_images_decode_to_rgb_uint8_with_both_decoders(comp, frames):
    train, _ = frames
    ids = train["isic_id"].head(20)
    with h5py.File(comp / "train-image.hdf5") as f:
        expected = [np.asarray(Image.open(io.BytesIO(f[i][()])).convert("RGB")) for i in ids]
    for decoder in ("cv2", "pil"):
        ds = HDF5Images(comp / "train-image.hdf5", ids, decoder=decoder)
        assert len(ds) == 20
        for i, want in enumerate(expected):
            got = ds[i]
            assert got.dtype == np.uint8 and got.shape == want.shape and got.shape[2] == 3
            assert 100 <= got.shape[0] <= 200 and 100 <= got.shape[1] <= 200
            assert np.abs(got.astype(int) - want).max() <= 1  # both use libjpeg; allow rounding


@pytest.mark.parametrize("decoder", ["cv2", "pil"])
def test_bytes_stored_as_void_string_or_uint8_all_read(odd_file, decoder):
    path, pixels = odd_file
    ds = HDF5Images(path, list(pixels), decoder=decoder)
    for i, (isic_id, original) in enumerate(pixels.items()):
        image = ds[i]
        assert image.shape == original.shape
        assert np.abs(image.astype(int) - original).mean() < 4  # RGB order kept; JPEG loss is small


@pytest.mark.parametrize("decoder", ["cv2", "pil"])
def test_missing_and_corrupt_images_raise_naming_the_id_and_file(odd_file, decoder):
    path, _ = odd_file
    ds = HDF5Images(path, ["ISIC_0000009", "ISIC_0000004", "ISIC_0000005"], decoder=decoder)
    with pytest.raises(ValueError, match=r"isic_id 'ISIC_0000009' is not in .*images.hdf5"):
        ds[0]
    with pytest.raises(ValueError, match=r"isic_id 'ISIC_0000004' in .*images.hdf5 is not a readable JPEG"):
        ds[1]
    with pytest.raises(ValueError, match=r"isic_id 'ISIC_0000005' .* is not a readable JPEG \(300 bytes"):
        ds[2]


def test_skip_mode_returns_none_records_and_warns(odd_file):
    path, _ = odd_file
    ds = HDF5Images(path, ["ISIC_0000001", "ISIC_0000009", "ISIC_0000004", "ISIC_0000002"], on_error="skip")
    with pytest.warns(UserWarning) as record:
        items = [ds[i] for i in range(4)]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith("skipped: isic_id 'ISIC_0000009' is not in ")
    assert messages[1].startswith("skipped: the image of isic_id 'ISIC_0000004' in ")
    assert [item is None for item in items] == [False, True, True, False]
    assert [isic_id for isic_id, _ in ds.skipped] == ["ISIC_0000009", "ISIC_0000004"]
    assert "not a readable JPEG" in ds.skipped[1][1]


def test_collate_skip_none():
    batch = collate_skip_none([torch.ones(2), None, torch.zeros(2)])
    assert torch.equal(batch, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert collate_skip_none([None, None]) is None
    _, index = collate_skip_none([(torch.ones(1), 0), None, (torch.ones(1), 2)])
    assert index.tolist() == [0, 2]


def test_workers_open_their_own_handle_and_report_skips_by_index(odd_file):
    path, _ = odd_file
    ids = ["ISIC_0000001", "ISIC_0000009", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"] * 4
    ds = HDF5Images(path, ids, transform=ResizeToTensor(16), on_error="skip", return_index=True)
    ds[0]  # the parent holds an open handle when the workers fork
    parent_handle = ds._file
    seen = []
    with pytest.warns(UserWarning):  # the parent's own read below; workers warn on their side
        ds[1]
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_skip_none)
    for batch in loader:
        if batch is not None:
            images, index = batch
            assert images.shape[1:] == (3, 16, 16)
            seen += index.tolist()
    bad = {i for i, k in enumerate(ids) if k in ("ISIC_0000009", "ISIC_0000004")}
    assert sorted(seen) == sorted(set(range(len(ids))) - bad)
    assert ds._file is parent_handle and ds._file.id.valid  # the parent's handle was left alone


def test_the_handle_is_never_pickled_and_reopens_in_a_new_process(odd_file):
    path, _ = odd_file
    ds = HDF5Images(path, ["ISIC_0000001"])
    first = ds[0]
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and np.array_equal(clone[0], first)
    handle = ds._file
    ds._pid = -1  # as if this object had been copied into a forked worker
    assert np.array_equal(ds[0], first) and ds._file is not handle
    ds.close()
    assert ds._file is None and np.array_equal(ds[0], first)


def test_hdf5images_rejects_bad_arguments(odd_file, tmp_path):
    path, _ = odd_file
    with pytest.raises(ValueError, match="decoder='turbo' is not valid; choose one of cv2, pil"):
        HDF5Images(path, ["ISIC_0000001"], decoder="turbo")
    with pytest.raises(ValueError, match="on_error='ignore' is not valid; choose one of raise, skip"):
        HDF5Images(path, ["ISIC_0000001"], on_error="ignore")
    with pytest.raises(FileNotFoundError, match="missing.hdf5 does not exist"):
        HDF5Images(tmp_path / "missing.hdf5", ["ISIC_0000001"])
    with pytest.raises(ValueError, match="must be a sequence of isic_ids, not a single string"):
        HDF5Images(path, "ISIC_0000001")
    (tmp_path / "fake.hdf5").write_bytes(b"plain text")
    with pytest.raises(OSError, match="fake.hdf5 is not a readable HDF5 file"):
        HDF5Images(tmp_path / "fake.hdf5", ["ISIC_0000001"])


def test_ids_are_kept_as_a_compact_string_array(odd_file):
    path, _ = odd_file
    ds = HDF5Images(path, pd.Series(["ISIC_0000001", "ISIC_0000002"]))
    assert ds.ids.dtype.kind == "U" and ds.ids.tolist() == ["ISIC_0000001", "ISIC_0000002"]


def test_resize_to_tensor():
    image = np.zeros((30, 50, 3), np.uint8)
    image[..., 0] = 255
    out = ResizeToTensor(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(8, 8)) and torch.allclose(out[1], -torch.ones(8, 8))
    with pytest.raises(ValueError, match="size=0 must be an integer"):
        ResizeToTensor(0)


# --- features ---------------------------------------------------------------------------------

def test_features_never_use_a_train_only_column(frames):
    train, test = frames
    X_train, X_test, names = make_features(train, test)
    assert list(X_train.columns) == names == list(X_test.columns)
    assert len(names) > 100
    for name in names:
        base = name.removesuffix("_patient_z")
        assert base not in TRAIN_ONLY_COLUMNS
        assert not set(ENGINEERED_FEATURES.get(base, ())) & set(TRAIN_ONLY_COLUMNS)
        assert base in ENGINEERED_FEATURES or base in isic.NUMERIC_COLUMNS or base in isic.CATEGORICAL_COLUMNS \
            or base in ("patient_lesion_count", "patient_site_lesion_count")

    # The same features from a frame whose train-only columns hold the answer, or noise.
    rng = np.random.default_rng(0)
    leaky, noisy = train.copy(), train.copy()
    for col in TRAIN_ONLY_COLUMNS:
        leaky[col] = train["target"]
        noisy[col] = rng.normal(size=len(train))
    for frame in (leaky, noisy):
        X_other, X_test_other, _ = make_features(frame, test)
        pd.testing.assert_frame_equal(X_other, X_train)
        pd.testing.assert_frame_equal(X_test_other, X_test)


def test_asking_for_a_train_only_column_is_an_error(frames):
    train, test = frames
    for col in ("target", "tbp_lv_dnn_lesion_confidence", "iddx_1"):
        with pytest.raises(ValueError, match=f"extra_columns holds {col}: train-only columns"):
            make_features(train, test.assign(**{col: 0}), extra_columns=[col])
    with pytest.raises(ValueError, match="extra_columns holds patient_id"):
        make_features(train, test, extra_columns=["patient_id"])


def tiny_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two patients in train, one in test, every feature column filled."""
    columns = [c for c in TEST_COLUMNS]
    def frame(patients, areas, sites):
        n = len(patients)
        d = {c: np.linspace(1.0, 2.0, n) for c in columns}
        d.update(isic_id=[f"ISIC_{i:07d}" for i in range(n)], patient_id=patients, tbp_lv_areaMM2=areas,
                 sex="male", anatom_site_general=sites, tbp_tile_type="3D: XP", image_type="TBP tile: close-up",
                 tbp_lv_location="Head & Neck", tbp_lv_location_simple="Head & Neck", attribution="A",
                 copyright_license="CC-BY", age_approx=50.0, tbp_lv_H=[10.0] * n, tbp_lv_Hext=[14.0] * n)
        return pd.DataFrame(d)[columns]
    train = frame(["IP_1", "IP_1", "IP_1", "IP_2", "IP_2"], [1.0, 2.0, 6.0, 5.0, 5.0],
                  ["head/neck", "head/neck", None, "head/neck", "head/neck"])
    test = frame(["IP_3", "IP_3"], [10.0, 30.0], ["anterior torso", "anterior torso"])
    test["sex"] = ["female", None]
    return train.assign(target=0), test


def test_patient_normalised_features_and_counts():
    train, test = tiny_frames()
    X_train, X_test, names = make_features(train, test)
    # IP_1 areas 1, 2, 6: mean 3, population std sqrt(14/3)
    z = (np.array([1.0, 2.0, 6.0]) - 3.0) / np.sqrt(14 / 3)
    np.testing.assert_allclose(X_train["tbp_lv_areaMM2_patient_z"][:3], z)
    assert X_train["tbp_lv_areaMM2_patient_z"][3:].tolist() == [0.0, 0.0]  # no spread: zero, not NaN
    np.testing.assert_allclose(X_test["tbp_lv_areaMM2_patient_z"], [-1.0, 1.0])  # from test rows only
    assert X_train["patient_lesion_count"].tolist() == [3, 3, 3, 2, 2]
    assert X_train["patient_site_lesion_count"].tolist() == [2, 2, 1, 2, 2]
    assert X_train["hue_contrast"].tolist() == [4.0] * 5
    assert "age_approx_patient_z" not in names  # constant within a patient


def test_test_features_do_not_depend_on_train_rows():
    train, test = tiny_frames()
    _, X_test, _ = make_features(train, test)
    shifted = train.assign(tbp_lv_areaMM2=train["tbp_lv_areaMM2"] * 100, tbp_lv_L=-5.0)
    _, X_test_again, _ = make_features(shifted, test)
    pd.testing.assert_frame_equal(X_test, X_test_again)


def test_categories_are_fixed_from_train_and_test():
    train, test = tiny_frames()
    X_train, X_test, _ = make_features(train, test)
    for col in isic.CATEGORICAL_COLUMNS:
        assert X_train[col].dtype == X_test[col].dtype and X_train[col].dtype.name == "category"
    assert list(X_train["sex"].cat.categories) == ["female", "male"]
    assert list(X_train["anatom_site_general"].cat.categories) == ["anterior torso", "head/neck"]
    assert X_test["sex"].isna().tolist() == [False, True]
    assert X_train["anatom_site_general"].isna().sum() == 1


def test_extra_columns_pass_through_and_can_be_patient_normalised():
    train, test = tiny_frames()
    train["image_score"], test["image_score"] = [0.1, 0.2, 0.6, 0.3, 0.3], [0.5, 0.7]
    X_train, _, names = make_features(train, test, extra_columns=["image_score"])
    assert X_train["image_score"].dtype == np.float32 and "image_score_patient_z" not in names  # float32 features
    np.testing.assert_array_equal(X_train["image_score"], np.float32([0.1, 0.2, 0.6, 0.3, 0.3]))
    X_train, X_test, names = make_features(train, test, extra_columns=["image_score"], normalise_extra=True)
    np.testing.assert_allclose(X_test["image_score_patient_z"], [-1.0, 1.0], rtol=1e-6)  # float32


def test_make_features_names_missing_columns():
    train, test = tiny_frames()
    with pytest.raises(ValueError, match="test_df lacks the column.s. tbp_lv_x"):
        make_features(train, test.drop(columns="tbp_lv_x"))
    with pytest.raises(ValueError, match="train_df must be a pandas DataFrame; got list"):
        make_features([], test)
