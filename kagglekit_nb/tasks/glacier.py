"""Multispectral glacier segmentation: band registry, tile I/O, statistics, metric, sampling, inference.

    dirs  = find_band_dirs("comp/Train")                  # {"Band1": …, …, "Band5": …, "labels": …}
    names = list_tiles(dirs)                              # ["img001.tif", …] present in every band
    stats = BandStats.from_files(dirs, train_names)       # mean/std per band from the training fold only
    x     = stats.normalise(read_tile(dirs, name))        # CHW float32, NaN -> 0
    y     = read_label(dirs["labels"] / name)             # HW class indices 0..3
    model = build_unet("resnet34", in_channels=5, n_classes=4)
    report = transfer_first_layer(pretrained_state, HKH_CHANNELS, model, HACK_CHANNELS)
    probs = sliding_window_predict(model, x, window=256, overlap=64, n_classes=4)
    cm = StreamingConfusion(4); cm.update(probs.argmax(0), y); cm.mcc()

Bands are matched by physical name (blue, green, red, nir, swir1, swir2, thermal, …), never by
position: Landsat-7 B2 and Landsat-8 B3 are both "green".
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CLASS_NAMES",
    "HACK_BANDS",
    "HACK_CHANNELS",
    "HKH_CHANNELS",
    "HKH_CHANNEL_IDS",
    "L7_BANDS",
    "L8_BANDS",
    "LABEL_VALUES",
    "SENSORS",
    "BalancedCropSampler",
    "BandStats",
    "StreamingConfusion",
    "TransferReport",
    "build_unet",
    "encode_label",
    "find_band_dirs",
    "find_hkh_patches",
    "list_tiles",
    "ndsi_baseline",
    "physical_names",
    "random_crop",
    "read_hkh_patch",
    "read_label",
    "read_tile",
    "sliding_window_predict",
    "transfer_first_layer",
]

# Band number -> physical band name, per sensor.
L7_BANDS: dict[str, str] = {
    "B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir1",
    "B6": "thermal", "B6_VCID_1": "thermal", "B6_VCID_2": "thermal_high_gain",  # same band, two gains
    "B7": "swir2", "B8": "pan", "BQA": "qa",
}
L8_BANDS: dict[str, str] = {
    "B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir", "B6": "swir1",
    "B7": "swir2", "B8": "pan", "B9": "cirrus", "B10": "thermal", "B11": "thermal2", "BQA": "qa",
}
SENSORS: dict[str, dict[str, str]] = {"L7": L7_BANDS, "L8": L8_BANDS}
# HKH patch channels, in file order: Landsat-7 bands, then spectral indices and terrain.
HKH_CHANNEL_IDS = ("B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8", "BQA",
                   "NDWI", "NDSI", "NDVI", "elevation", "slope")
HKH_CHANNELS: tuple[str, ...] = tuple(L7_BANDS.get(c, c.lower()) for c in HKH_CHANNEL_IDS)
# GlacierHack band folders (Landsat-8 B2, B3, B4, B6, B10) and their physical names.
HACK_BANDS: dict[str, str] = {"Band1": "blue", "Band2": "green", "Band3": "red", "Band4": "swir1",
                              "Band5": "thermal"}
HACK_CHANNELS: tuple[str, ...] = tuple(HACK_BANDS.values())
CLASS_NAMES = ("background", "glacier", "debris", "lake")
LABEL_VALUES = (0, 85, 170, 255)  # GlacierHack mask value of each class index

_PHYSICAL = frozenset(
    {*L7_BANDS.values(), *L8_BANDS.values(), *HKH_CHANNELS, *HACK_BANDS.values()}
)
_LABEL_DIR_NAMES = ("labels", "label", "masks", "mask")
_TIFF_SUFFIXES = (".tif", ".tiff")


def _fmt(values: Iterable[Any], limit: int = 12) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "") if values else "nothing"


# --------------------------------------------------------------------------------------------- bands

def physical_names(names: Sequence[str], sensor: str | None = None) -> list[str]:
    """Physical band names for `names`: band ids of `sensor` ("L7", "L8"), GlacierHack folders, or names.

    >>> physical_names(["B2", "B3", "B4", "B6", "B10"], "L8")
    ['blue', 'green', 'red', 'swir1', 'thermal']
    """
    if sensor is not None and sensor not in SENSORS:
        raise ValueError(f"sensor={sensor!r} is not known; choose one of {', '.join(SENSORS)} or None.")
    registry = SENSORS.get(sensor, {})
    result = []
    for name in names:
        key = str(name)
        if key in registry:
            result.append(registry[key])
        elif key in HACK_BANDS:
            result.append(HACK_BANDS[key])
        elif key.lower() in _PHYSICAL:
            result.append(key.lower())
        else:
            valid = sorted(_PHYSICAL | set(registry) | set(HACK_BANDS))
            raise ValueError(f"band {key!r} is not known (sensor={sensor!r}); use a physical name or a band "
                             f"id: {_fmt(valid, 60)}.")
    if len(set(result)) != len(result):
        dupes = sorted({n for n in result if result.count(n) > 1})
        raise ValueError(f"bands {list(names)} name the same physical band twice ({', '.join(dupes)}).")
    return result


def _normalise_dir_name(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def find_band_dirs(root: str | Path, bands: Sequence[str] = tuple(HACK_BANDS), *,
                   require_labels: bool = False) -> dict[str, Path]:
    """Band folders under `root` by name (case-insensitive: `band1`, `Band_1`), plus `labels` if present.

    Returns {"Band1": path, …, "labels": path}; a missing band raises FileNotFoundError listing the
    folders that are there.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"band folder root {str(root)!r} does not exist or is not a folder.")
    present = {_normalise_dir_name(p.name): p for p in sorted(root.iterdir()) if p.is_dir()}
    found: dict[str, Path] = {}
    missing = []
    for band in bands:
        path = present.get(_normalise_dir_name(band))
        if path is None:
            missing.append(band)
        else:
            found[band] = path
    label_dir = next((present[n] for n in _LABEL_DIR_NAMES if n in present), None)
    if missing or (require_labels and label_dir is None):
        wanted = [*missing, *(["labels"] if require_labels and label_dir is None else [])]
        there = sorted(p.name for p in present.values())
        raise FileNotFoundError(
            f"{root} has no folder for {', '.join(wanted)}; it holds: {_fmt(there)}. Point the data path "
            f"at the folder that contains {', '.join(bands)}" + (" and labels." if require_labels else ".")
        )
    if label_dir is not None:
        found["labels"] = label_dir
    return found


def _band_items(paths_by_band: Mapping[str, str | Path]) -> list[tuple[str, Path]]:
    items = [(band, Path(p)) for band, p in paths_by_band.items() if band != "labels"]
    if not items:
        raise ValueError(f"paths_by_band={dict(paths_by_band)!r} holds no band folders.")
    return items


def list_tiles(paths_by_band: Mapping[str, str | Path]) -> list[str]:
    """Tile file names present in every band folder (and in `labels` when given), sorted.

    A name that is missing from some folders raises FileNotFoundError naming them.
    """
    folders = [*_band_items(paths_by_band)]
    if "labels" in paths_by_band:
        folders.append(("labels", Path(paths_by_band["labels"])))
    sets = {band: {p.name for p in folder.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES}
            for band, folder in folders}
    union = set().union(*sets.values())
    gaps = {band: sorted(union - names) for band, names in sets.items() if union - names}
    if gaps:
        detail = "; ".join(f"{band} lacks {_fmt(names, 5)}" for band, names in gaps.items())
        raise FileNotFoundError(f"tile files differ between folders: {detail}. Every band (and labels) "
                                "needs one file per tile, with the same name.")
    if not union:
        raise FileNotFoundError(f"no .tif files in {', '.join(str(f) for _, f in folders)}.")
    return sorted(union)


def read_tile(paths_by_band: Mapping[str, str | Path], name: str) -> np.ndarray:
    """The tile `name` as a CHW float32 array, one channel per band folder (in the mapping's order)."""
    import tifffile

    planes = []
    for band, folder in _band_items(paths_by_band):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"tile {name!r} is missing from band {band} ({path}).")
        plane = np.squeeze(tifffile.imread(path))
        if plane.ndim != 2:
            raise ValueError(f"{path} has shape {plane.shape}; a band file must hold one 2-D band.")
        if planes and plane.shape != planes[0].shape:
            raise ValueError(f"{path} is {plane.shape} but the tile's first band is {planes[0].shape}.")
        planes.append(plane.astype(np.float32, copy=False))
    return np.stack(planes)


def read_label(path: str | Path) -> np.ndarray:
    """A GlacierHack mask (values 0, 85, 170, 255) as HW uint8 class indices 0..3."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist.")
    raw = np.squeeze(tifffile.imread(path))
    lut = np.full(256, 255, np.uint8)
    lut[list(LABEL_VALUES)] = np.arange(len(LABEL_VALUES), dtype=np.uint8)
    if raw.dtype != np.uint8:
        if not np.issubdtype(raw.dtype, np.number) or not np.isin(raw, LABEL_VALUES).all():
            bad = np.unique(raw[~np.isin(raw, LABEL_VALUES)])
            raise ValueError(f"{path} holds values {_fmt(bad.tolist(), 8)}; a label must hold only "
                             f"{', '.join(map(str, LABEL_VALUES))}.")
        raw = raw.astype(np.uint8)
    classes = lut[raw]
    if (classes == 255).any():
        bad = np.unique(raw[classes == 255])
        raise ValueError(f"{path} holds values {_fmt(bad.tolist(), 8)}; a label must hold only "
                         f"{', '.join(map(str, LABEL_VALUES))} (background, glacier, debris, lake).")
    return classes


def encode_label(classes: np.ndarray) -> np.ndarray:
    """HW class indices 0..3 as a GlacierHack mask (uint8 0, 85, 170, 255)."""
    classes = np.asarray(classes)
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes has dtype {classes.dtype}; pass integer class indices 0..3.")
    bad = np.unique(classes[(classes < 0) | (classes >= len(LABEL_VALUES))])
    if bad.size:
        raise ValueError(f"classes holds {_fmt(bad.tolist(), 8)}; valid class indices are 0..3.")
    return np.asarray(LABEL_VALUES, np.uint8)[classes]


def find_hkh_patches(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of HKH patches under `root` (`*_img_NNN.npy` with `*_mask_NNN.npy`), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HKH patch folder {str(root)!r} does not exist.")
    pairs, orphans = [], []
    for img in sorted(root.rglob("*_img_*.npy")):
        mask = img.with_name(img.name.replace("_img_", "_mask_"))
        (pairs.append((img, mask)) if mask.is_file() else orphans.append(img.name))
    if orphans:
        raise FileNotFoundError(f"HKH images without a mask next to them: {_fmt(orphans, 5)}.")
    if not pairs:
        raise FileNotFoundError(f"no *_img_NNN.npy patches under {root}.")
    return pairs


def read_hkh_patch(image_path: str | Path, mask_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An HKH patch as CHW float32 channels and HW uint8 classes (0 background, 1 clean ice, 2 debris)."""
    image_path = Path(image_path)
    mask_path = Path(mask_path) if mask_path else image_path.with_name(image_path.name.replace("_img_", "_mask_"))
    for p in (image_path, mask_path):
        if not p.is_file():
            raise FileNotFoundError(f"HKH patch file {p} does not exist.")
    image, mask = np.load(image_path), np.load(mask_path)
    if image.ndim != 3 or image.shape[-1] != len(HKH_CHANNELS):
        raise ValueError(f"{image_path} has shape {image.shape}; an HKH image is HxWx{len(HKH_CHANNELS)}.")
    if mask.shape[:2] != image.shape[:2] or mask.ndim != 3 or mask.shape[-1] < 2:
        raise ValueError(f"{mask_path} has shape {mask.shape}; expected {image.shape[:2] + (2,)} "
                         "(clean ice, debris).")
    classes = np.zeros(mask.shape[:2], np.uint8)
    classes[mask[..., 0] > 0] = 1
    classes[mask[..., 1] > 0] = 2
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), classes


# ------------------------------------------------------------------------------------- normalisation

_NAN_POLICIES = ("ignore", "raise")


@dataclass
class BandStats:
    """Per-band mean and standard deviation, fitted on training tiles only and saved with the model."""

    bands: list[str]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def fit(cls, tiles: Iterable[np.ndarray], bands: Sequence[str], *, nan_policy: str = "ignore") -> BandStats:
        """Stream over CHW `tiles` (Chan's parallel update, float64): NaN/inf pixels are skipped or raise."""
        if nan_policy not in _NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r} is not valid; choose one of {', '.join(_NAN_POLICIES)}.")
        bands = list(bands)
        c = len(bands)
        count, mean, m2 = np.zeros(c, np.int64), np.zeros(c), np.zeros(c)
        for i, tile in enumerate(tiles):
            x = np.asarray(tile)
            if x.ndim != 3 or x.shape[0] != c:
                raise ValueError(f"tile {i} has shape {x.shape}; expected CHW with C={c} ({', '.join(bands)}).")
            x = x.reshape(c, -1).astype(np.float64)
            finite = np.isfinite(x)
            if nan_policy == "raise" and not finite.all():
                raise ValueError(f"tile {i} holds {int((~finite).sum())} NaN/inf values (nan_policy='raise').")
            n_b = finite.sum(1)
            x = np.where(finite, x, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.where(n_b > 0, x.sum(1) / n_b, 0.0)
            m2_b = (np.where(finite, x - mean_b[:, None], 0.0) ** 2).sum(1)
            total = count + n_b
            delta = mean_b - mean
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.where(total > 0, n_b / total, 0.0)
                mean = mean + delta * frac
                m2 = m2 + m2_b + np.where(total > 0, delta**2 * count * n_b / total, 0.0)
            count = total
        if (count == 0).any():
            empty = [b for b, n in zip(bands, count) if n == 0]
            raise ValueError(f"no finite pixels for band(s) {', '.join(empty)}: pass at least one training tile.")
        std = np.sqrt(m2 / count)
        return cls(bands, mean, std, count)

    @classmethod
    def from_files(cls, paths_by_band: Mapping[str, str | Path], names: Sequence[str], *,
                   nan_policy: str = "ignore") -> BandStats:
        """Fit on the tiles `names` (the training fold) read from band folders; nothing else is opened."""
        if not names:
            raise ValueError("names is empty: pass the training fold's tile names.")
        bands = [b for b, _ in _band_items(paths_by_band)]
        return cls.fit((read_tile(paths_by_band, n) for n in names), bands, nan_policy=nan_policy)

    def normalise(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(x - mean) / std per band (channel axis -3: CHW or NCHW); NaN/inf become 0 (the mean)."""
        c = len(self.bands)
        if x.ndim < 3 or x.shape[-3] != c:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., {c}, H, W) for bands "
                             f"{', '.join(self.bands)}.")
        std = np.where(self.std > 0, self.std, 1.0)  # a constant band (e.g. QA) is only centred
        if isinstance(x, torch.Tensor):
            m = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(c, 1, 1)
            s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(c, 1, 1)
            return torch.nan_to_num((x.float() - m) / s, nan=0.0, posinf=0.0, neginf=0.0)
        mean32, std32 = self.mean.astype(np.float32)[:, None, None], std.astype(np.float32)[:, None, None]
        out = (np.asarray(x, np.float32) - mean32) / std32
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for a checkpoint or JSON."""
        return {"bands": list(self.bands), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "count": self.count.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BandStats:
        """Inverse of `to_dict`; raises ValueError naming missing keys or mismatched lengths."""
        missing = [k for k in ("bands", "mean", "std") if k not in d]
        if missing:
            raise ValueError(f"band statistics lack {', '.join(missing)}; saved keys are {_fmt(d)}.")
        bands = list(d["bands"])
        mean, std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        count = np.asarray(d.get("count", [0] * len(bands)), np.int64)
        if not len(bands) == len(mean) == len(std) == len(count):
            raise ValueError(f"band statistics have {len(bands)} bands but {len(mean)} means, {len(std)} stds.")
        return cls(bands, mean, std, count)


# ------------------------------------------------------------------------------------------- metric

class StreamingConfusion:
    """A confusion matrix accumulated batch by batch (int64), with sklearn's multiclass MCC."""

    def __init__(self, n_classes: int, *, ignore_index: int | None = None):
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes={n_classes!r} must be an integer >= 2.")
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((n_classes, n_classes), np.int64)  # rows: target, columns: prediction

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add class maps `pred` and `target` (same shape, integer classes)."""
        p, t = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (pred, target))
        if p.shape != t.shape:
            raise ValueError(f"pred has shape {p.shape} but target has {t.shape}; pass class maps, not probabilities.")
        p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        n = self.n_classes
        for name, x in (("pred", p), ("target", t)):
            if x.size and (x.min() < 0 or x.max() >= n):
                bad = int(x.min() if x.min() < 0 else x.max())
                raise ValueError(f"{name} holds class {bad}; valid are 0..{n - 1}.")
        self.matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def reset(self) -> None:
        self.matrix[:] = 0

    def mcc(self) -> float:
        """Matthews correlation over all pixels so far (sklearn's `matthews_corrcoef`, multiclass)."""
        return _mcc_from_confusion(self.matrix)


def _mcc_from_confusion(c: np.ndarray) -> float:
    # Gorodkin's R_K, as sklearn computes it; Python ints so that huge pixel counts cannot overflow.
    t_sum = [int(v) for v in c.sum(axis=1)]
    p_sum = [int(v) for v in c.sum(axis=0)]
    n_correct, n = int(np.trace(c)), sum(t_sum)
    cov_ytyp = n_correct * n - sum(a * b for a, b in zip(t_sum, p_sum))
    cov_ypyp = n * n - sum(b * b for b in p_sum)
    cov_ytyt = n * n - sum(a * a for a in t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp)


def ndsi_baseline(tile_chw: np.ndarray, band_names: Sequence[str], *, threshold: float = 0.4) -> np.ndarray:
    """The NDSI-threshold baseline: class 1 (glacier) where (green-swir1)/(green+swir1) > threshold, else 0."""
    names = list(band_names)
    missing = [b for b in ("green", "swir1") if b not in names]
    if missing:
        raise ValueError(f"band_names={names} lack {', '.join(missing)}; NDSI needs green and swir1.")
    x = np.asarray(tile_chw, np.float32)
    if x.ndim != 3 or x.shape[0] != len(names):
        raise ValueError(f"tile_chw has shape {x.shape}; expected ({len(names)}, H, W) for {names}.")
    green, swir = x[names.index("green")], x[names.index("swir1")]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndsi = (green - swir) / (green + swir)
    return (np.nan_to_num(ndsi, nan=-1.0) > threshold).astype(np.uint8)


# ----------------------------------------------------------------------------------------- sampling

def _check_crop(crop: int, shape: tuple[int, ...]) -> None:
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise ValueError(f"crop={crop!r} must be a positive integer (pixels).")
    if crop > min(shape):
        raise ValueError(f"crop={crop} is larger than the tile ({shape[0]}x{shape[1]}); use crop <= {min(shape)}.")


def random_crop(image_chw: np.ndarray, label_hw: np.ndarray | None, crop: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A uniformly placed `crop` x `crop` window of an image (CHW) and its label (HW)."""
    h, w = image_chw.shape[-2:]
    _check_crop(crop, (h, w))
    top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    window = (slice(top, top + crop), slice(left, left + crop))
    return image_chw[(..., *window)], (None if label_hw is None else label_hw[window])


class BalancedCropSampler:
    """Crop positions centred on pixels drawn with probability proportional to (class frequency)^-power.

    With power=1 every class present is equally likely to sit at a crop's centre, so rare lakes and
    debris are seen as often as background; power=0 is uniform over pixels. Deterministic given seed;
    `state_dict`/`load_state_dict` carry the position of the random stream across a resume.

        sampler = BalancedCropSampler(labels, crop=256, seed=0)
        tile, top, left = sampler.sample()
    """

    def __init__(self, labels: Sequence[np.ndarray], crop: int, *, seed: int = 0, n_classes: int = 4,
                 power: float = 1.0):
        if not len(labels):
            raise ValueError("labels is empty: pass one HW class map per training tile.")
        if not 0.0 <= float(power) <= 1.0:
            raise ValueError(f"power={power!r} must be between 0 (uniform) and 1 (fully balanced).")
        self.crop, self.n_classes, self.power = crop, n_classes, float(power)
        self.shapes = []
        # positions[c][i]: flat indices of class-c pixels in tile i (int32 keeps 25 real tiles ~ 26 MB)
        self.positions: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
        for i, lab in enumerate(labels):
            lab = np.asarray(lab)
            if lab.ndim != 2:
                raise ValueError(f"labels[{i}] has shape {lab.shape}; expected an HW class map.")
            _check_crop(crop, lab.shape)
            if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
                raise ValueError(f"labels[{i}] holds class {int(lab.max())}; valid are 0..{n_classes - 1}.")
            self.shapes.append(lab.shape)
            flat = lab.reshape(-1)
            order = np.argsort(flat, kind="stable").astype(np.int32)
            bounds = np.searchsorted(flat[order], np.arange(n_classes + 1))
            for c in range(n_classes):
                self.positions[c].append(order[bounds[c]:bounds[c + 1]])
        self.counts = np.array([[len(p) for p in per] for per in self.positions], np.int64)  # (class, tile)
        totals = self.counts.sum(1).astype(np.float64)
        weight = np.where(totals > 0, totals ** (1.0 - self.power), 0.0)
        self.class_probs = weight / weight.sum()
        self._cumulative = np.cumsum(self.counts, axis=1)
        self.rng = np.random.default_rng(seed)

    def sample(self, rng: np.random.Generator | None = None) -> tuple[int, int, int]:
        """(tile index, top, left) of the next crop, drawn from `rng` (default: the sampler's own stream;
        a per-item generator makes the crop a pure function of the item's seed)."""
        rng = self.rng if rng is None else rng
        c = int(rng.choice(self.n_classes, p=self.class_probs))
        cumulative = self._cumulative[c]
        k = int(rng.integers(cumulative[-1]))
        tile = int(np.searchsorted(cumulative, k, side="right"))
        k -= int(cumulative[tile - 1]) if tile else 0
        h, w = self.shapes[tile]
        y, x = divmod(int(self.positions[c][tile][k]), w)
        half = self.crop // 2
        return tile, min(max(y - half, 0), h - self.crop), min(max(x - half, 0), w - self.crop)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


# ---------------------------------------------------------------------------------------- inference

_BLENDS = ("cosine", "linear", "uniform")


def _blend_weights(size: int, blend: str) -> np.ndarray:
    i = (np.arange(size) + 0.5) / size
    if blend == "cosine":
        return 0.5 - 0.5 * np.cos(2 * np.pi * i)
    if blend == "linear":
        return 1.0 - np.abs(2 * i - 1)
    return np.ones(size)


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def sliding_window_predict(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    image_chw: np.ndarray | torch.Tensor,
    *,
    window: int,
    overlap: int,
    n_classes: int,
    batch_size: int = 4,
    blend: str = "cosine",
    pad_multiple: int = 32,
    activation: str = "softmax",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Class probabilities (n_classes, H, W) for an image of any size, window by window.

    Windows of `window` pixels overlap by `overlap` and are blended with `blend` weights
    (cosine, linear or uniform), so seams do not show. A side shorter than the window is run at its
    own size, zero-padded up to a multiple of `pad_multiple` (the U-Net needs multiples of 32): a
    tile that fits in one window gives exactly what whole-tile inference gives.
    `model_fn` maps a float32 batch (B, C, h, w) to logits (B, n_classes, h, w); call `model.eval()` first.
    """
    for name, value, low in (("window", window, 1), ("overlap", overlap, 0), ("n_classes", n_classes, 1),
                             ("batch_size", batch_size, 1), ("pad_multiple", pad_multiple, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    if overlap >= window:
        raise ValueError(f"overlap={overlap} must be smaller than window={window}.")
    if window % pad_multiple:
        raise ValueError(f"window={window} must be a multiple of pad_multiple={pad_multiple}.")
    if blend not in _BLENDS:
        raise ValueError(f"blend={blend!r} is not valid; choose one of {', '.join(_BLENDS)}.")
    if activation not in ("softmax", "none"):
        raise ValueError(f"activation={activation!r} is not valid; choose softmax or none.")
    if isinstance(image_chw, torch.Tensor):
        image = image_chw.detach().to("cpu", torch.float32)
    else:  # copy views with negative strides (flips, rot90) into plain memory
        image = torch.from_numpy(np.ascontiguousarray(image_chw, dtype=np.float32))
    if image.ndim != 3:
        raise ValueError(f"image_chw has shape {tuple(image.shape)}; expected (C, H, W).")
    _, h, w = image.shape
    # Sides shorter than the window: run at their own size, rounded up to pad_multiple.
    win_h = min(window, -(-h // pad_multiple) * pad_multiple)
    win_w = min(window, -(-w // pad_multiple) * pad_multiple)
    padded = torch.nn.functional.pad(image, (0, max(win_w - w, 0), 0, max(win_h - h, 0)))
    ph, pw = padded.shape[-2:]
    stride = window - overlap
    weight = torch.as_tensor(np.outer(_blend_weights(win_h, blend), _blend_weights(win_w, blend)),
                             dtype=torch.float32).clamp_min(1e-6)
    out = torch.zeros((n_classes, ph, pw))
    norm = torch.zeros((ph, pw))
    boxes = [(y, x) for y in _starts(ph, win_h, stride) for x in _starts(pw, win_w, stride)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.inference_mode():
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i:i + batch_size]
            batch = torch.stack([padded[:, y:y + win_h, x:x + win_w] for y, x in chunk]).to(dev)
            logits = model_fn(batch)
            if tuple(logits.shape) != (len(chunk), n_classes, win_h, win_w):
                raise ValueError(f"model_fn returned shape {tuple(logits.shape)} for a batch of "
                                 f"{tuple(batch.shape)}; expected ({len(chunk)}, {n_classes}, {win_h}, {win_w}).")
            probs = (logits.float().softmax(1) if activation == "softmax" else logits.float()).cpu()
            for (y, x), p in zip(chunk, probs):
                out[:, y:y + win_h, x:x + win_w] += p * weight
                norm[y:y + win_h, x:x + win_w] += weight
    return (out / norm)[:, :h, :w].numpy()


# -------------------------------------------------------------------------------------------- model

def build_unet(encoder: str = "resnet34", in_channels: int = 5, n_classes: int = 4, **kwargs: Any) -> nn.Module:
    """An smp U-Net with random weights (pretrained weights come from a file, see transfer_first_layer)."""
    import segmentation_models_pytorch as smp

    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=5)
        raise ValueError(f"encoder={encoder!r} is not an smp encoder; close names: {', '.join(close) or 'none'} "
                         "(all: segmentation_models_pytorch.encoders.get_encoder_names()).")
    for name, value in (("in_channels", in_channels), ("n_classes", n_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=n_classes, **kwargs)


@dataclass
class TransferReport:
    """What `transfer_first_layer` did: bands mapped by name, bands initialised, tensors copied/skipped."""

    first_layer: str
    mapped: dict[str, int]          # destination band -> source channel whose kernel it took
    initialised: list[str]          # destination bands the source never saw
    unused: list[str]               # source bands with no destination
    copied: list[str]               # other tensors copied unchanged
    skipped: dict[str, str]         # tensor -> why it kept its fresh value

    def __str__(self) -> str:
        pairs = ", ".join(f"{band} (source channel {i})" for band, i in self.mapped.items())
        lines = [f"first layer {self.first_layer}: mapped by name {pairs or 'none'}",
                 f"  initialised from the mean kernel: {', '.join(self.initialised) or 'none'}",
                 f"  source bands not used: {', '.join(self.unused) or 'none'}",
                 f"copied {len(self.copied)} tensors; kept {len(self.skipped)} fresh"
                 + (f" ({_fmt(self.skipped, 4)})" if self.skipped else "")]
        return "\n".join(lines)


def _first_conv(model: nn.Module, in_channels: int) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != in_channels:
                raise ValueError(f"the model's first convolution {name!r} takes {module.in_channels} channels "
                                 f"but dst_band_names has {in_channels}; build the model with "
                                 f"in_channels={in_channels}.")
            return f"{name}.weight"
    raise ValueError("dst_model has no Conv2d layer to map bands into.")


def _align_keys(src: Mapping[str, torch.Tensor], dst_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Rename `src` keys to the destination's: as is, encoder-only, or saved from a wrapper."""
    dst = set(dst_keys)

    def renamed(fn):
        return {fn(k): v for k, v in src.items()}

    candidates = [renamed(lambda k: k), renamed(lambda k: f"encoder.{k}")]
    for prefix in ("module.", "model.", "_orig_mod."):
        candidates.append(renamed(lambda k, p=prefix: k.removeprefix(p)))
    return max(candidates, key=lambda c: len(dst.intersection(c)))


def transfer_first_layer(
    src_state_dict: Mapping[str, torch.Tensor],
    src_band_names: Sequence[str],
    dst_model: nn.Module,
    dst_band_names: Sequence[str],
) -> TransferReport:
    """Load pretrained weights into `dst_model`, mapping the first convolution's inputs by band name.

    Every tensor whose name and shape match is copied. In the first convolution a destination band
    gets the kernel the source learnt for the same physical band; a band the source never saw gets
    sum(source kernels) / n_dst (the mean kernel scaled by n_src / n_dst, timm's `adapt_input_conv`
    convention: a layer made only of such bands keeps the source's response to a uniform input).
    """
    src_names, dst_names = [str(b).lower() for b in src_band_names], [str(b).lower() for b in dst_band_names]
    band_ids = {k.lower() for k in (*L7_BANDS, *L8_BANDS, *HACK_BANDS)}
    for arg, names in (("src_band_names", src_names), ("dst_band_names", dst_names)):
        ids = [b for b in names if b in band_ids]
        if ids:
            raise ValueError(f"{arg} holds band ids {ids}, which mean different bands on different sensors; "
                             "pass physical names, e.g. physical_names(names, sensor='L8').")
        if len(set(names)) != len(names):
            raise ValueError(f"{arg}={list(names)} repeats a band; each physical band may appear once.")
    dst_state = dst_model.state_dict()
    key = _first_conv(dst_model, len(dst_names))
    src = _align_keys(src_state_dict, list(dst_state))
    if key not in src:
        raise ValueError(f"the source weights have no {key!r} (first convolution); their first keys are "
                         f"{_fmt(list(src_state_dict), 5)}.")
    w_src, w_dst = src[key].detach().float(), dst_state[key]
    if w_src.ndim != 4 or w_src.shape[1] != len(src_names):
        raise ValueError(f"source {key} has shape {tuple(w_src.shape)}: {w_src.shape[1] if w_src.ndim == 4 else '?'} "
                         f"input channels, but src_band_names lists {len(src_names)} bands.")
    if (w_src.shape[0], *w_src.shape[2:]) != (w_dst.shape[0], *w_dst.shape[2:]):
        raise ValueError(f"source {key} is {tuple(w_src.shape)} but the model's is {tuple(w_dst.shape)}; "
                         "use the same encoder as the pretraining run.")

    new_state = dict(dst_state)
    first = torch.empty_like(w_dst)
    fill = w_src.sum(1) / len(dst_names)
    mapped, initialised = {}, []
    for j, band in enumerate(dst_names):
        if band in src_names:
            first[:, j] = w_src[:, src_names.index(band)].to(first.dtype)
            mapped[band] = src_names.index(band)
        else:
            first[:, j] = fill.to(first.dtype)
            initialised.append(band)
    new_state[key] = first
    copied, skipped = [], {}
    for k, v in dst_state.items():
        if k == key:
            continue
        if k not in src:
            skipped[k] = "not in the source"
        elif tuple(src[k].shape) != tuple(v.shape):
            skipped[k] = f"shape {tuple(src[k].shape)} vs {tuple(v.shape)}"
        else:
            new_state[k] = src[k].detach().to(v.dtype)
            copied.append(k)
    dst_model.load_state_dict(new_state)
    unused = [b for b in src_names if b not in mapped]
    return TransferReport(key, mapped, initialised, unused, copied, skipped)
