"""Competition metrics by name, each with its direction ("is higher better") decided once.

Built on scikit-learn; an unknown name raises an error listing the valid ones.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Metric", "get_metric", "METRICS"]


@dataclass(frozen=True)
class Metric:
    """A score function of (integer targets, class probabilities) and its direction."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool

    def __call__(self, targets: np.ndarray, probs: np.ndarray) -> float:
        return float(self.fn(np.asarray(targets), np.asarray(probs)))

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` beats score `b`."""
        return a > b if self.greater_is_better else a < b


def _accuracy(t: np.ndarray, p: np.ndarray) -> float:
    return float((p.argmax(1) == t).mean())


def _balanced_accuracy(t: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(t, p.argmax(1))


def _log_loss(t: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return log_loss(t, p, labels=np.arange(p.shape[1]))


def _roc_auc(t: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if p.shape[1] == 2:
        return roc_auc_score(t, p[:, 1])
    return roc_auc_score(t, p, multi_class="ovr", labels=np.arange(p.shape[1]))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", _accuracy, True),
        Metric("balanced_accuracy", _balanced_accuracy, True),
        Metric("log_loss", _log_loss, False),
        Metric("roc_auc", _roc_auc, True),
    )
}


def get_metric(name: str) -> Metric:
    """The metric called `name`; raises ValueError listing the valid names."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise ValueError(f"METRIC={name!r} is not known; choose one of {', '.join(METRICS)}.") from None


def partial_auc(y_true: np.ndarray, y_score: np.ndarray, min_tpr: float = 0.80) -> float:
    """Partial ROC AUC above `min_tpr` true-positive rate, as the ISIC 2024 Kaggle scorer computes it.

    Labels and scores are flipped so that the region TPR >= min_tpr becomes FPR <= 1 - min_tpr; the
    ROC curve is integrated there, its end point linearly interpolated. Range 0 to 1 - min_tpr
    (0.2 for a perfect ranking at the default, 0 for an inverted one).

        partial_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])   # 0.1 (up to rounding)
    """
    from sklearn.metrics import auc, roc_curve

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_true.ndim != 1 or y_score.ndim != 1 or len(y_true) != len(y_score):
        raise ValueError(
            f"y_true and y_score must be 1-D and of the same length; got shapes {y_true.shape} and "
            f"{y_score.shape}."
        )
    labels = set(np.unique(y_true).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"y_true must hold only 0 and 1; got the values {sorted(labels)[:10]}.")
    if labels != {0, 1}:
        raise ValueError(
            f"y_true holds only the class {labels.pop() if labels else 'nothing'}; the partial AUC needs "
            "both positives (1) and negatives (0)."
        )
    if not np.isfinite(y_score).all():
        raise ValueError(f"y_score holds {int((~np.isfinite(y_score)).sum())} NaN or infinite values.")
    if isinstance(min_tpr, bool) or not 0.0 <= min_tpr < 1.0:
        raise ValueError(f"min_tpr={min_tpr!r} must be in [0, 1).")

    # The official scorer: flip labels and scores, then a standard ROC with max_fpr = 1 - min_tpr.
    v_gt = np.abs(y_true.astype(float) - 1)
    v_pred = -1.0 * y_score
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = roc_curve(v_gt, v_pred, sample_weight=None)
    if max_fpr == 1:
        return float(auc(fpr, tpr))
    stop = np.searchsorted(fpr, max_fpr, "right")
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(fpr[:stop], max_fpr)
    return float(auc(fpr, tpr))


def _pauc80(t: np.ndarray, p: np.ndarray) -> float:
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    elif p.ndim != 1:
        raise ValueError(
            f"pauc80 needs the positive-class probability, shape (n,) or (n, 2); got shape {p.shape}."
        )
    return partial_auc(t, p, min_tpr=0.80)


# Registered after the table above so that the existing entries stay as they are.
METRICS["pauc80"] = Metric("pauc80", _pauc80, True)
__all__.append("partial_auc")
