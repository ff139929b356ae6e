"""Glacier bands and files: the band registry, tile and patch I/O, labels, per-band statistics.

    dirs  = find_band_dirs("comp/Train")                  # {"Band1": …, …, "Band5": …, "labels": …}
    names = list_tiles(dirs)                              # ["img001.tif", …] present in every band
    stats = BandStats.from_files(dirs, train_names)       # mean/std per band from the training fold only
    x     = stats.normalise(read_tile(dirs, name))        # CHW float32, NaN -> 0
    y     = read_label(dirs["labels"] / name)             # HW class indices 0..3

Bands are matched by physical name (blue, green, red, nir, swir1, swir2, thermal, …), never by
position: Landsat-7 B2 and Landsat-8 B3 are both "green".
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    "BandStats",
    "encode_label",
    "find_band_dirs",
    "find_hkh_patches",
    "list_tiles",
    "physical_names",
    "read_hkh_patch",
    "read_label",
    "read_tile",
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
