"""Image files for the image tasks: finding them by id, decoding them (one decoder for training,
prediction, the scan and the classical stage), skipping unreadable ones with a journal that worker
processes append to, the dataset, the albumentations pipelines and test-time augmentation views."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .competition import DICOM_HINT, IMAGE_EXTENSIONS

__all__ = ["DICOM_HINT", "IMAGE_EXTENSIONS", "UNREADABLE_FILE", "ImageDataset", "normalization", "read_image", "scan_images",
           "transforms"]

UNREADABLE_FILE = "unreadable_images.txt"  # one "path<TAB>reason" line per image a loader had to skip


def read_image(path: str, mode: str = "L") -> np.ndarray:
    """HWC (mode "RGB") or HW (mode "L") pixels of the image at `path`: the one decoder of training,
    prediction, the scan and the classical stage. 16-bit greyscale keeps every level (as float).
    ValueError naming the file if it cannot be decoded (corrupt, truncated, empty). DICOM files (.dcm)
    are read with pydicom and scaled to 0-255."""
    from PIL import Image

    if str(path).lower().endswith(".dcm"):
        return _read_dicom(path, mode)
    try:
        with Image.open(path) as img:
            if mode == "L" and img.mode.startswith("I"):
                return np.asarray(img, dtype=np.float32) / 257.0
            return np.asarray(img.convert(mode))
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated file, bad chunk
        raise ValueError(f"cannot read image {path}: {e}. Replace or remove the file.") from None


def _read_dicom(path: str, mode: str) -> np.ndarray:
    """A DICOM image's pixels as uint8 (min-max scaled; MONOCHROME1 inverted), grey or RGB."""
    try:
        import pydicom
    except ImportError:
        raise ValueError(f"cannot read image {path}: it is DICOM and pydicom is not installed; "
                         f"{DICOM_HINT}.") from None
    try:
        ds = pydicom.dcmread(path)
        arr = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as e:  # pydicom raises many types for a broken file
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}. Replace or remove the file.") from None
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]  # a multi-frame file: its first frame
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr
    low, high = float(arr.min()), float(arr.max())
    arr = ((arr - low) * (255.0 / (high - low)) if high > low else np.zeros_like(arr)).astype(np.uint8)
    if mode == "L":
        return arr if arr.ndim == 2 else arr[..., :3].mean(-1).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr[..., :3]


def _channels(paths: list[str], unreadable: dict[str, str] | None = None) -> int:
    """1 or 3 from the first readable images; unreadable ones met on the way are added to `unreadable`."""
    from PIL import Image

    seen = 0
    for p in paths:
        if seen == 16:
            break
        if str(p).lower().endswith(".dcm"):
            try:
                arr = read_image(p, "RGB")
            except ValueError as e:
                if unreadable is not None:
                    unreadable[p] = str(e)
                continue
            seen += 1
            if not (arr[..., 0] == arr[..., 1]).all():
                return 3
            continue
        try:
            with Image.open(p) as img:
                img_mode = img.mode
                img.load()
        except (OSError, SyntaxError, ValueError) as e:
            if unreadable is not None:
                unreadable[p] = f"cannot read image {p}: {e}. Replace or remove the file."
            continue
        seen += 1
        if img_mode not in ("L", "1", "I", "I;16", "F", "LA"):
            return 3
    return 1


def scan_images(paths: list[str], mode: str = "L") -> dict[str, str]:
    """{path: reason} of the images `read_image` cannot decode (the CHECK_IMAGES scan)."""
    bad = {}
    for p in paths:
        try:
            read_image(p, mode)
        except ValueError as e:
            bad[p] = str(e)
    return bad


def _journal(run_dir: Path) -> dict[str, str]:
    """The images a data loader skipped, from the run's journal (written by any worker process)."""
    path = Path(run_dir) / UNREADABLE_FILE
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        if "\t" in line:
            p, reason = line.split("\t", 1)
            out[p] = reason
    return out


class ImageDataset(Dataset):
    """Images from disk through an albumentations pipeline; yields (image, label) or image.

    An image that cannot be decoded raises ValueError with on_error="raise". With on_error="skip"
    (as ISIC's `HDF5Images`) it becomes a blank mid-grey image, its (path, reason) is appended to
    `.skipped` and, when `journal` is given, a "path<TAB>reason" line to that file (so skips made in
    worker processes reach the run); paths in `known_bad` are skipped without decoding."""

    def __init__(self, paths: list[str], labels: np.ndarray | None, transform: Any, in_chans: int, *,
                 on_error: str = "raise", known_bad: Any = (), journal: Path | None = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r} is not valid; choose one of raise, skip.")
        self.paths, self.labels, self.transform = paths, labels, transform
        self.mode = "L" if in_chans == 1 else "RGB"
        self.on_error, self.known_bad, self.journal = on_error, frozenset(known_bad), journal
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.paths)

    def _pixels(self, path: str) -> np.ndarray:
        if path in self.known_bad:
            return self._blank()
        try:
            return read_image(path, self.mode)
        except ValueError as e:
            if self.on_error == "raise":
                raise
            self.skipped.append((path, str(e)))
            if self.journal is not None and path not in {p for p, _ in self.skipped[:-1]}:
                line = f"{path}\t{' '.join(str(e).split())}\n".encode()
                fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line)  # one short O_APPEND write: lines of several workers never interleave
                finally:
                    os.close(fd)
            return self._blank()

    def _blank(self) -> np.ndarray:
        return np.full((8, 8) if self.mode == "L" else (8, 8, 3), 128, dtype=np.uint8)

    def __getitem__(self, i: int):
        arr = self._pixels(self.paths[i])
        if arr.ndim == 2:
            arr = arr[:, :, None]
        x = self.transform(image=arr)["image"]
        if self.labels is None:
            return x
        if self.labels.ndim == 2:  # multi-label: a 0/1 vector per image, for BCE
            return x, torch.tensor(self.labels[i], dtype=torch.float32)
        return x, torch.tensor(self.labels[i], dtype=torch.long)


def normalization(model: nn.Module, in_chans: int) -> tuple[list[float], list[float]]:
    """Mean/std from the model's own config (that of its pretrained weights when it has them), adapted to
    `in_chans`: the one source used by training and inference."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if in_chans == 1:
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    elif in_chans != len(mean):
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return mean, std


def transforms(img_size: int, mean: list[float], std: list[float], *, train: bool, hflip: bool = False):
    """Albumentations pipelines; augmentation only when `train` (never on validation or test)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    steps: list[Any] = [A.Resize(img_size, img_size)]
    if train:
        steps.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.8))
        if hflip:
            steps.append(A.HorizontalFlip(p=0.5))
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def _tta(name: str) -> list:
    flips = {"hflip": [lambda x: torch.flip(x, dims=[3])], "vflip": [lambda x: torch.flip(x, dims=[2])]}
    flips["hvflip"] = flips["hflip"] + flips["vflip"]
    return flips.get(name, [])
