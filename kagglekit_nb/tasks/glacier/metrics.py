"""Glacier scores: a streaming pixel confusion matrix with sklearn's multiclass MCC, the pixel-MCC
metric of the CV loop (padding not scored), and the NDSI-threshold baseline a model must beat.

    cm = StreamingConfusion(4); cm.update(pred_hw, target_hw); cm.mcc()
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ...metrics import Metric

__all__ = ["IGNORE", "PIXEL_MCC", "StreamingConfusion", "ndsi_baseline"]

IGNORE = 255                         # label value of padding: no loss, not scored


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


def _pixel_mcc(targets: np.ndarray, preds: np.ndarray) -> float:
    """Multiclass MCC over pixels (sklearn's definition); `preds` are class maps or (N, C, ...) probabilities.
    Pixels labelled IGNORE (padding) are not scored."""
    t, p = np.asarray(targets), np.asarray(preds)
    n = None
    if p.ndim == t.ndim + 1:
        n, p = p.shape[1], p.argmax(1)
    keep = t != IGNORE
    t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
    n = n or max(2, int(max(t.max(initial=0), p.max(initial=0))) + 1)
    cm = StreamingConfusion(n)
    cm.update(p, t)
    return cm.mcc()


PIXEL_MCC = Metric("mcc", _pixel_mcc, True)
