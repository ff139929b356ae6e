"""Class-balanced training crops: crop centres drawn by class frequency^-power, deterministic and resumable.

    sampler = BalancedCropSampler(labels, crop=256, seed=0)
    tile, top, left = sampler.sample()
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BalancedCropSampler"]


def _check_crop(crop: int, shape: tuple[int, ...]) -> None:
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise ValueError(f"crop={crop!r} must be a positive integer (pixels).")
    if crop > min(shape):
        raise ValueError(f"crop={crop} is larger than the tile ({shape[0]}x{shape[1]}); use crop <= {min(shape)}.")


class BalancedCropSampler:
    """Crop positions centred on pixels drawn with probability proportional to (class frequency)^-power.

    With power=1 every class present is equally likely to sit at a crop's centre, so rare lakes and
    debris are seen as often as background; power=0 is uniform over pixels. Deterministic given seed;
    `state_dict`/`load_state_dict` carry the position of the random stream across a resume.

    Only each tile's class counts and shape are kept (a few numbers per tile); a crop's centre is found
    in its tile's class map when it is drawn. So `labels` may be a sequence that reads each map from
    disk when indexed: memory stays flat however many tiles there are (a class-position index of every
    pixel takes 4 bytes a pixel, 0.5 GB for 500 HKH patches).

        sampler = BalancedCropSampler(labels, crop=256, seed=0)
        tile, top, left = sampler.sample()
    """

    def __init__(self, labels: Sequence[np.ndarray], crop: int, *, seed: int = 0, n_classes: int = 4,
                 power: float = 1.0):
        if not len(labels):
            raise ValueError("labels is empty: pass one HW class map per training tile.")
        if not 0.0 <= float(power) <= 1.0:
            raise ValueError(f"power={power!r} must be between 0 (uniform) and 1 (fully balanced).")
        self.labels, self.crop, self.n_classes, self.power = labels, crop, n_classes, float(power)
        self.shapes = np.zeros((len(labels), 2), np.int64)
        self.counts = np.zeros((n_classes, len(labels)), np.int64)  # (class, tile): pixels of each class
        for i in range(len(labels)):  # one map at a time: a lazy `labels` is read once, never held
            lab = np.asarray(labels[i])
            if lab.ndim != 2:
                raise ValueError(f"labels[{i}] has shape {lab.shape}; expected an HW class map.")
            if lab.dtype.kind not in "biu":
                raise ValueError(f"labels[{i}] holds {lab.dtype} values; a class map holds integer class indices.")
            _check_crop(crop, lab.shape)
            if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
                raise ValueError(f"labels[{i}] holds class {int(lab.max())}; valid are 0..{n_classes - 1}.")
            self.shapes[i] = lab.shape
            self.counts[:, i] = np.bincount(lab.reshape(-1), minlength=n_classes)
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
        h, w = (int(v) for v in self.shapes[tile])
        # the k-th class-c pixel of the tile in row-major order
        y, x = divmod(int(np.flatnonzero(np.asarray(self.labels[tile]).reshape(-1) == c)[k]), w)
        half = self.crop // 2
        return tile, min(max(y - half, 0), h - self.crop), min(max(x - half, 0), w - self.crop)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
