"""ISIC 2024 (skin-lesion detection from 3D total-body photos): metadata, HDF5 images, tabular features.

    train, test = read_metadata(data_dir)                      # the two metadata CSVs, checked
    images = HDF5Images(data_dir / "train-image.hdf5", train["isic_id"],
                        transform=ResizeToTensor(64))          # one JPEG per isic_id, read lazily
    loader = DataLoader(images, batch_size=64, num_workers=2)  # each worker opens the file itself
    X_train, X_test, names = make_features(train, test)        # never a train-only column

`Competition` is what the task module's `load` returns: both metadata files, the HDF5 files and the
sample submission.

The competition's images live in one HDF5 file per split: a flat root with one scalar dataset per
`isic_id` holding that lesion's JPEG bytes. Nothing here reads more than one image at a time, so
memory stays flat when Kaggle swaps in the ~500k-image hidden test set on a rerun.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..._atomic import write_atomic

__all__ = [
    "CATEGORICAL_COLUMNS",
    "ENGINEERED_FEATURES",
    "ID_COLUMNS",
    "NUMERIC_COLUMNS",
    "TEST_COLUMNS",
    "TRAIN_COLUMNS",
    "TRAIN_ONLY_COLUMNS",
    "Competition",
    "HDF5Images",
    "ResizeToTensor",
    "collate_skip_none",
    "make_features",
    "read_metadata",
]

TRAIN_FILE = "train-metadata.csv"
TEST_FILE = "test-metadata.csv"
TRAIN_IMAGES = "train-image.hdf5"
TEST_IMAGES = "test-image.hdf5"
SAMPLE_FILE = "sample_submission.csv"

# The 55 columns of train-metadata.csv, in the competition's order.
TRAIN_COLUMNS = (
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general",
    "clin_size_long_diam_mm", "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B",
    "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext", "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext",
    "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean", "tbp_lv_deltaA",
    "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity",
    "tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence",
    "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM", "tbp_lv_radial_color_std_max",
    "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle", "tbp_lv_x",
    "tbp_lv_y", "tbp_lv_z", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1",
    "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm",
    "tbp_lv_dnn_lesion_confidence",
)
# Known only for training lesions (diagnosis, histology, the label itself): never features.
TRAIN_ONLY_COLUMNS = (
    "target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
    "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
)
TEST_COLUMNS = tuple(c for c in TRAIN_COLUMNS if c not in TRAIN_ONLY_COLUMNS)  # the 44 of test-metadata.csv
ID_COLUMNS = ("isic_id", "patient_id")
CATEGORICAL_COLUMNS = (
    "sex", "anatom_site_general", "tbp_tile_type", "tbp_lv_location", "tbp_lv_location_simple",
    "attribution",
)
# Raw measurements used as features; image_type is constant and copyright_license follows attribution.
NUMERIC_COLUMNS = ("age_approx", "clin_size_long_diam_mm") + tuple(
    c for c in TEST_COLUMNS
    if c.startswith("tbp_lv_") and c not in ("tbp_lv_location", "tbp_lv_location_simple")
)
# Constant within a patient, so a per-patient z-score of them carries nothing.
_PATIENT_LEVEL = ("age_approx",)


def _safe_div(a: pd.Series, b: pd.Series) -> pd.Series:
    return a / b.where(b != 0)


# name -> (source columns, formula): ratios and contrasts of the lesion measurements.
_ENGINEERED: dict[str, tuple[tuple[str, ...], Callable[[pd.DataFrame], pd.Series]]] = {
    "lesion_size_ratio": (("tbp_lv_minorAxisMM", "clin_size_long_diam_mm"),
                          lambda d: _safe_div(d.tbp_lv_minorAxisMM, d.clin_size_long_diam_mm)),
    "lesion_shape_index": (("tbp_lv_areaMM2", "tbp_lv_perimeterMM"),
                           lambda d: _safe_div(d.tbp_lv_areaMM2, d.tbp_lv_perimeterMM ** 2)),
    "hue_contrast": (("tbp_lv_H", "tbp_lv_Hext"), lambda d: (d.tbp_lv_H - d.tbp_lv_Hext).abs()),
    "luminance_contrast": (("tbp_lv_L", "tbp_lv_Lext"), lambda d: (d.tbp_lv_L - d.tbp_lv_Lext).abs()),
    "lesion_color_difference": (("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"),
                                lambda d: np.sqrt(d.tbp_lv_deltaA ** 2 + d.tbp_lv_deltaB ** 2
                                                  + d.tbp_lv_deltaL ** 2)),
    "border_complexity": (("tbp_lv_norm_border", "tbp_lv_symm_2axis"),
                          lambda d: d.tbp_lv_norm_border + d.tbp_lv_symm_2axis),
    "color_uniformity": (("tbp_lv_color_std_mean", "tbp_lv_radial_color_std_max"),
                         lambda d: _safe_div(d.tbp_lv_color_std_mean, d.tbp_lv_radial_color_std_max)),
    "position_distance_3d": (("tbp_lv_x", "tbp_lv_y", "tbp_lv_z"),
                             lambda d: np.sqrt(d.tbp_lv_x ** 2 + d.tbp_lv_y ** 2 + d.tbp_lv_z ** 2)),
    "perimeter_to_area_ratio": (("tbp_lv_perimeterMM", "tbp_lv_areaMM2"),
                                lambda d: _safe_div(d.tbp_lv_perimeterMM, d.tbp_lv_areaMM2)),
    "area_to_perimeter_ratio": (("tbp_lv_areaMM2", "tbp_lv_perimeterMM"),
                                lambda d: _safe_div(d.tbp_lv_areaMM2, d.tbp_lv_perimeterMM)),
    "log_lesion_area": (("tbp_lv_areaMM2",), lambda d: np.log1p(d.tbp_lv_areaMM2.clip(lower=0))),
    "lesion_visibility_score": (("tbp_lv_deltaLBnorm", "tbp_lv_norm_color"),
                                lambda d: d.tbp_lv_deltaLBnorm + d.tbp_lv_norm_color),
    "symmetry_border_consistency": (("tbp_lv_symm_2axis", "tbp_lv_norm_border"),
                                    lambda d: d.tbp_lv_symm_2axis * d.tbp_lv_norm_border),
    "border_color_interaction": (("tbp_lv_norm_border", "tbp_lv_norm_color"),
                                 lambda d: d.tbp_lv_norm_border * d.tbp_lv_norm_color),
    "lesion_severity_index": (("tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_eccentricity"),
                              lambda d: (d.tbp_lv_norm_border + d.tbp_lv_norm_color
                                         + d.tbp_lv_eccentricity) / 3),
    "color_consistency": (("tbp_lv_stdL", "tbp_lv_stdLExt"),
                          lambda d: _safe_div(d.tbp_lv_stdL, d.tbp_lv_stdLExt)),
    "color_contrast_index": (("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLBnorm"),
                             lambda d: d.tbp_lv_deltaA + d.tbp_lv_deltaB + d.tbp_lv_deltaL
                             + d.tbp_lv_deltaLBnorm),
    "size_age_interaction": (("clin_size_long_diam_mm", "age_approx"),
                             lambda d: d.clin_size_long_diam_mm * d.age_approx),
    "normalized_lesion_size": (("clin_size_long_diam_mm", "age_approx"),
                               lambda d: _safe_div(d.clin_size_long_diam_mm, d.age_approx)),
    "age_normalized_nevi_confidence": (("tbp_lv_nevi_confidence", "age_approx"),
                                       lambda d: _safe_div(d.tbp_lv_nevi_confidence, d.age_approx)),
}
# Public view: each engineered feature and the raw columns it is computed from.
ENGINEERED_FEATURES: dict[str, tuple[str, ...]] = {k: v[0] for k, v in _ENGINEERED.items()}
_CHOICES = {"decoder": ("cv2", "pil"), "on_error": ("raise", "skip")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_choice(name: str, value: Any) -> None:
    if value not in _CHOICES[name]:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(_CHOICES[name])}.")


def read_metadata(data_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (train, test) metadata frames of an ISIC 2024 folder, with ids read as text."""
    data_dir = Path(data_dir)
    frames = []
    for name, required in ((TRAIN_FILE, (*ID_COLUMNS, "target")), (TEST_FILE, ID_COLUMNS)):
        path = data_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; an ISIC 2024 folder holds {TRAIN_FILE}, {TEST_FILE}, "
                f"{TRAIN_IMAGES}, {TEST_IMAGES} and {SAMPLE_FILE}."
            )
        # low_memory=False: the sparse iddx_*/mel_* columns would otherwise get mixed chunk dtypes.
        frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS}, low_memory=False)
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(missing)}; it has {', '.join(frame.columns[:8])}, …."
            )
        if frame["isic_id"].duplicated().any():
            dup = frame.loc[frame["isic_id"].duplicated(), "isic_id"].iloc[0]
            raise ValueError(f"{path} lists isic_id {dup!r} more than once; each lesion must appear once.")
        frames.append(frame)
    train, test = frames
    leaked = [c for c in TRAIN_ONLY_COLUMNS if c in test.columns]
    if leaked:
        warnings.warn(f"{data_dir / TEST_FILE} has train-only column(s) {', '.join(leaked)}; they are ignored.")
    return train, test


class HDF5Images(Dataset):
    """The images of `ids` from an ISIC HDF5 file, one JPEG decoded per item, as HWC uint8 RGB.

    The file is opened lazily in the process that reads (each DataLoader worker opens its own handle,
    also after a fork) and the handle is never pickled. `decoder` is "cv2" (faster) or "pil".
    A missing `isic_id` or a corrupt JPEG raises ValueError naming both; with on_error="skip" the item
    is None, a warning is issued and (isic_id, reason) is appended to `.skipped` in the reading
    process. Batch such items with `collate_skip_none`; with workers, set return_index=True to get
    (image, index) items and tell from the indices seen which rows were skipped.
    """

    def __init__(
        self,
        path: str | Path,
        ids: Iterable[str],
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        decoder: str = "cv2",
        on_error: str = "raise",
        return_index: bool = False,
    ):
        _check_choice("decoder", decoder)
        _check_choice("on_error", on_error)
        if isinstance(ids, (str, bytes)):
            raise ValueError(f"ids={ids!r} must be a sequence of isic_ids, not a single string.")  # noqa: TRY004
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist; pass the train-image.hdf5 or test-image.hdf5 file.")
        if decoder == "cv2":
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise ImportError(
                    "decoder='cv2' needs OpenCV: pip install opencv-python-headless, or use decoder='pil'."
                ) from None
        # A fixed-width numpy string array, not a list: list items are refcounted Python objects whose
        # pages fork-started workers copy one by one as they read them (memory grows with the ids).
        self.ids = np.asarray(list(ids) if not isinstance(ids, (np.ndarray, pd.Series)) else ids, dtype=str)
        self.transform = transform
        self.decoder = decoder
        self.on_error = on_error
        self.return_index = return_index
        self.skipped: list[tuple[str, str]] = []
        self._file = None
        self._pid: int | None = None
        self._handle().close()  # fail now, not in a worker, if the file is not HDF5
        self._file = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        # An h5py handle must not travel to another process (spawned workers, pickling).
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def _handle(self):
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            import h5py

            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise OSError(f"{self.path} is not a readable HDF5 file ({err}).") from err
            self._pid = pid
        return self._file

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def read_bytes(self, isic_id: str) -> bytes:
        """The stored JPEG bytes of `isic_id`; ValueError naming the id and file if it is absent."""
        try:
            raw = self._handle()[isic_id][()]
        except KeyError:
            raise ValueError(
                f"isic_id {isic_id!r} is not in {self.path}; check that the metadata CSV and the HDF5 "
                "file belong to the same split."
            ) from None
        return raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)

    def decode(self, raw: bytes, isic_id: str = "?") -> np.ndarray:
        """HWC uint8 RGB pixels of JPEG bytes; ValueError naming `isic_id` if they do not decode."""
        image = None
        if raw[:2] == b"\xff\xd8":  # every JPEG starts with the SOI marker
            if self.decoder == "cv2":
                import cv2

                flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # pixels as stored, like PIL
                bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), flags)
                image = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            else:
                from PIL import Image

                try:
                    with Image.open(io.BytesIO(raw)) as img:
                        image = np.asarray(img.convert("RGB"))
                except (OSError, SyntaxError, ValueError):
                    image = None
        if image is None:
            raise ValueError(
                f"the image of isic_id {isic_id!r} in {self.path} is not a readable JPEG "
                f"({len(raw)} bytes, starting {raw[:4].hex() or 'with nothing'}); it is corrupt or truncated."
            )
        return image

    def __getitem__(self, index: int) -> Any:
        isic_id = str(self.ids[index])
        try:
            image = self.decode(self.read_bytes(isic_id), isic_id)
        except ValueError as err:
            if self.on_error == "raise":
                raise
            self.skipped.append((isic_id, str(err)))
            warnings.warn(f"skipped: {err}", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return (image, index) if self.return_index else image


def collate_skip_none(batch: Sequence[Any]) -> Any:
    """default_collate of the items that are not None (skipped); None if the whole batch was skipped."""
    from torch.utils.data import default_collate

    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


class ResizeToTensor:
    """HWC uint8 RGB → float32 CHW tensor of `size`×`size`, normalised by mean/std (picklable)."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
            raise ValueError(f"size={size!r} must be an integer number of pixels between 8 and 4096.")
        self.size = size
        self.scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(3, 1, 1)
        self.shift = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        try:
            import cv2

            small = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        except ImportError:
            from PIL import Image

            small = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
        chw = small.transpose(2, 0, 1).astype(np.float32)
        return torch.from_numpy(chw * self.scale - self.shift)


def _as_text(values: pd.Series) -> pd.Series:
    return values.astype(str).where(values.notna()).astype(object)


def _check_feature_columns(frame: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {', '.join(missing)} that the features are built from.")


def _frame_features(frame: pd.DataFrame, numeric: Sequence[str], extra: Sequence[str],
                    normalise_extra: bool) -> pd.DataFrame:
    """Raw, engineered and patient-normalised features of one split, from its own rows only.

    float32 throughout (what LightGBM bins anyway): the frames are a few columns x every row, so
    at 400k rows their arithmetic is bound by memory traffic, which float64 doubles."""
    raw = frame[list(numeric)].apply(pd.to_numeric, errors="coerce").astype(np.float32)
    engineered = pd.DataFrame({k: f(raw) for k, (_, f) in _ENGINEERED.items()}, index=frame.index)
    base = pd.concat([raw, engineered], axis=1).replace([np.inf, -np.inf], np.nan).astype(np.float32)
    extra_frame = frame[list(extra)].apply(pd.to_numeric, errors="coerce").astype(np.float32)

    # "Ugly duckling": how far each lesion sits from the same patient's other lesions.
    to_normalise = [c for c in base.columns if c not in _PATIENT_LEVEL]
    source = pd.concat([base[to_normalise], extra_frame if normalise_extra else None], axis=1)
    groups = source.groupby(frame["patient_id"].to_numpy(), sort=False)
    mean = groups.transform("mean").astype(np.float32)
    std = groups.transform("std", ddof=0).astype(np.float32)
    z = ((source - mean) / std.where(std > 1e-9)).fillna(0.0).where(source.notna()).astype(np.float32)
    z.columns = [f"{c}_patient_z" for c in source.columns]

    counts = pd.DataFrame(index=frame.index)
    counts["patient_lesion_count"] = frame.groupby("patient_id")["isic_id"].transform("size").astype(np.float32)
    site = frame["anatom_site_general"].fillna("(missing)")
    counts["patient_site_lesion_count"] = (
        frame.groupby([frame["patient_id"], site])["isic_id"].transform("size").astype(np.float32)
    )
    return pd.concat([base, extra_frame, z, counts], axis=1)


def make_features(
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    *,
    extra_columns: Sequence[str] = (),
    normalise_extra: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(X_train, X_test, feature_names): tabular features of both splits, never from a train-only column.

    Raw measurements, engineered ratios and contrasts (`ENGINEERED_FEATURES`), per-patient z-scores
    (each split normalised with its own rows; no target is read), lesion counts per patient and per
    patient and site, and the categorical columns as pandas categories fixed from train ∪ test.
    `extra_columns` (e.g. image-model scores present in both frames) are passed through, and also
    patient-normalised when `normalise_extra`.
    """
    for name, frame in (("train_df", train_df), ("test_df", test_df)):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}.")  # noqa: TRY004
    if isinstance(extra_columns, str):
        raise ValueError(f"extra_columns={extra_columns!r} must be a list of column names.")  # noqa: TRY004
    extra = list(extra_columns)
    forbidden = [c for c in extra if c in TRAIN_ONLY_COLUMNS or c in ID_COLUMNS]
    if forbidden:
        raise ValueError(
            f"extra_columns holds {', '.join(forbidden)}: train-only columns ({', '.join(TRAIN_ONLY_COLUMNS)}) "
            f"and ids ({', '.join(ID_COLUMNS)}) are never features (they are unknown for test lesions)."
        )
    fixed = set(NUMERIC_COLUMNS) | set(CATEGORICAL_COLUMNS)
    clash = [c for c in extra if c in fixed]
    if clash:
        raise ValueError(f"extra_columns holds {', '.join(clash)}, which are features already.")
    needed = (*ID_COLUMNS, *NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, "anatom_site_general", *extra)
    _check_feature_columns(train_df, "train_df", needed)
    _check_feature_columns(test_df, "test_df", needed)

    X_train = _frame_features(train_df, NUMERIC_COLUMNS, extra, normalise_extra)
    X_test = _frame_features(test_df, NUMERIC_COLUMNS, extra, normalise_extra)
    for col in CATEGORICAL_COLUMNS:
        train_text, test_text = _as_text(train_df[col]), _as_text(test_df[col])
        dtype = pd.CategoricalDtype(sorted(set(train_text.dropna()) | set(test_text.dropna())))
        X_train[col] = train_text.astype(dtype)
        X_test[col] = test_text.astype(dtype)
    names = list(X_train.columns)
    leaked = [n for n in names if n in TRAIN_ONLY_COLUMNS]
    if leaked:  # unreachable by construction; a guard for future edits of the column lists
        raise ValueError(f"features {leaked} are train-only columns.")
    return X_train, X_test[names], names


# ----------------------------------------------------------------------------- the competition


@dataclass
class Competition:
    """The competition's files: metadata of both splits, the HDF5 images, the sample submission."""

    data_dir: Path
    train: pd.DataFrame          # train-metadata.csv
    test: pd.DataFrame           # test-metadata.csv, in the sample submission's row order
    sample: pd.DataFrame         # sample_submission.csv as text
    sample_path: Path
    images: dict[str, Path]      # split -> its HDF5 file

    @property
    def y(self) -> np.ndarray:
        return self.train["target"].to_numpy(dtype=np.int64)


def _balanced_rows(y: np.ndarray, rows: np.ndarray, neg_per_pos: int | None, rng: np.random.Generator) -> np.ndarray:
    """Every positive of `rows` and at most `neg_per_pos` negatives per positive (drawn with `rng`)."""
    pos, neg = rows[y[rows] == 1], rows[y[rows] == 0]
    if neg_per_pos is not None and len(neg) > neg_per_pos * max(1, len(pos)):
        neg = rng.choice(neg, neg_per_pos * max(1, len(pos)), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically: a temp file in the same folder, fsync, then `os.replace`."""
    write_atomic(path, lambda fh: np.savez(fh, **arrays), binary=True)
