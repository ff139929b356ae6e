"""The tiles (or patches) a glacier run trains on, and the datasets made from them.

`TileData` reads images lazily (GlacierHack tiles in memory, HKH patches through a memory map, window
by window) and holds the class maps as a sequence: a list for the 25 GlacierHack tiles, `MaskFiles`
(read from disk when indexed) for the thousands of HKH patches; `CropDataset` draws class-balanced
training crops, `TileDataset` serves whole validation tiles padded to a multiple of 32.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._config import Demo
from .bands import BandStats
from .crops import BalancedCropSampler
from .metrics import IGNORE

__all__ = ["CropDataset", "MaskFiles", "TileData", "TileDataset", "demo"]


class MaskFiles(Sequence):
    """HW uint8 class maps read from mask files when indexed (`read(path)` makes one), never all held:
    14,000 HKH patches of 512x512 would hold 3.6 GB of class maps. The map read last is kept (read-only),
    since a training crop asks for its tile's map twice: to place its centre, then for its window."""

    def __init__(self, paths: Sequence[Path], read: Callable[[Path], np.ndarray]):
        self.paths, self.read = list(paths), read
        self._last: tuple[int, np.ndarray | None] = (-1, None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        i = range(len(self.paths))[i]  # an int; negative counts from the end, out of range is IndexError
        if self._last[0] != i:
            lab = self.read(self.paths[i])
            lab.flags.writeable = False  # shared by every caller until the next read
            self._last = (i, lab)
        return self._last[1]


class _Subset(Sequence):
    """`items[indices[j]]` for each j, without reading any item in advance."""

    def __init__(self, items: Sequence, indices: Sequence[int]):
        self.items, self.indices = items, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        return self.items[self.indices[j]]


@dataclass
class TileData:
    """Tiles (or patches) with their class maps; images are read lazily, window by window."""

    names: list[str]
    labels: Sequence[np.ndarray]        # HW uint8 class indices (a list, or `MaskFiles` read when indexed)
    bands: list[str]                    # physical band names, in channel order
    classes: tuple[str, ...]
    groups: list[str]                   # tiles of one group stay in one fold (a scene)
    source: Path
    images: list[np.ndarray] | None = None          # CHW float32 in memory (GlacierHack tiles)
    patch_files: list[Path] | None = None           # HWC .npy files read through a memory map (HKH)
    channels: list[int] | None = None               # channel indices of `bands` in the patch files
    band_dirs: dict[str, Path] | None = None        # GlacierHack: band folder name -> folder

    def __len__(self) -> int:
        return len(self.names)

    def shape(self, i: int) -> tuple[int, int]:
        """(height, width) of tile `i`, without reading its pixels."""
        if self.patch_files is not None:
            return tuple(np.load(self.patch_files[i], mmap_mode="r").shape[:2])  # the .npy header only
        return tuple(np.shape(self.labels[i])[:2])

    def read(self, i: int, window: tuple[int, int, int] | None = None) -> np.ndarray:
        """Tile `i` (or the square `window` = (top, left, size) of it) as raw CHW float32."""
        if self.images is not None:
            x = self.images[i]
            if window is not None:
                top, left, size = window
                x = x[:, top:top + size, left:left + size]
            return np.asarray(x, np.float32)
        arr = np.load(self.patch_files[i], mmap_mode="r")  # HWC: only the window is read
        if window is not None:
            top, left, size = window
            arr = arr[top:top + size, left:left + size]
        return np.ascontiguousarray(np.asarray(arr[..., self.channels], np.float32).transpose(2, 0, 1))


def demo(tile_size: int, part: str) -> Demo:
    """The generated glacier demo (HKH patches in `hkh`, GlacierHack tiles in `glacierhack`) of
    `tile_size` pixels; `part` is the one a notebook reads."""
    return Demo("glacier", marks=("glacierhack/Train", "hkh"), note=f"the generated demo ({tile_size}px)",
                name=f"glacier_{tile_size}", subdir=part, options={"tile_size": tile_size})


def _class_shares(data: TileData) -> str:
    counts = sum(np.bincount(lab.reshape(-1), minlength=len(data.classes))[:len(data.classes)]
                 for lab in data.labels)
    share = counts / max(1, counts.sum())
    return ", ".join(f"{c} {s:.1%}" for c, s in zip(data.classes, share))


class CropDataset(Dataset):
    """`length` training crops per epoch: centre pixel drawn by class frequency^-power, then a random
    flip and 90-degree rotation; normalised with the fold's statistics. Item i's randomness comes from
    numpy's global RNG, which `IndexSeeded` (via `make_loader(train=True)`) seeds from (seed, epoch, i)."""

    def __init__(self, data: TileData, tiles: Sequence[int], stats: BandStats, crop: int, length: int,
                 power: float):
        self.data, self.tiles, self.stats, self.crop, self.length = data, list(tiles), stats, crop, length
        self.sampler = BalancedCropSampler(_Subset(data.labels, self.tiles), crop,
                                           n_classes=len(data.classes), power=power)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))
        t, top, left = self.sampler.sample(rng)
        i = self.tiles[t]
        x = self.stats.normalise(self.data.read(i, (top, left, self.crop)))
        y = self.data.labels[i][top:top + self.crop, left:left + self.crop]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if flip:
            x, y = x[:, :, ::-1], y[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y).astype(np.int64))


def _padded_size(data: TileData, tiles: Sequence[int]) -> tuple[int, int]:
    h = max(data.shape(i)[0] for i in tiles)
    w = max(data.shape(i)[1] for i in tiles)
    return -(-h // 32) * 32, -(-w // 32) * 32


class TileDataset(Dataset):
    """Whole tiles for validation, normalised and zero-padded to a common size that is a multiple of 32
    (padding is labelled IGNORE: no loss, not scored)."""

    def __init__(self, data: TileData, tiles: Sequence[int], stats: BandStats):
        self.data, self.tiles, self.stats = data, list(tiles), stats
        self.size = _padded_size(data, self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def target(self, j: int) -> np.ndarray:
        y = self.data.labels[self.tiles[j]]
        out = np.full(self.size, IGNORE, np.uint8)
        out[:y.shape[0], :y.shape[1]] = y
        return out

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stats.normalise(self.data.read(self.tiles[j]))
        pad = np.zeros((x.shape[0], *self.size), np.float32)
        pad[:, :x.shape[1], :x.shape[2]] = x
        return torch.from_numpy(pad), torch.from_numpy(self.target(j).astype(np.int64))
