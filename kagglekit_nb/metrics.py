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
