"""Competition metrics by name, each with its direction ("is higher better") decided once.

Every built-in metric takes `(targets, probs)`: `probs` is an (n, C) array of probabilities;
`targets` is either 1-D integer class indices (single-label; a binary task has C == 2 and
probs[:, 1] is P(positive)) or an (n, C) 0/1 indicator matrix (multi-label). Metrics that need
label decisions on multi-label data use `decide`.

    get_metric("qwk")(targets, probs)        # quadratic weighted kappa of the argmax
    get_metric("map@5")(targets, probs)      # any map@<k> is built on demand
    from_kaggle("Quadratic Weighted Kappa")  # "qwk": the Kaggle API's metric text -> a name here

Built on scikit-learn; an unknown name raises an error listing the valid ones.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Metric", "get_metric", "METRICS", "decide", "multilabel", "from_kaggle"]

_EPS = 1e-15  # Kaggle's log-loss clip: probabilities are kept within [_EPS, 1 - _EPS]
_MAP_RE = re.compile(r"map@([1-9][0-9]*)")  # get_metric's on-demand family, k >= 1 written plainly


@dataclass(frozen=True)
class Metric:
    """A score function of (targets, class probabilities), its direction and a title for tables."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool
    title: str = ""  # e.g. "quadratic weighted kappa"; empty: the name

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)

    def __call__(self, targets: np.ndarray, probs: np.ndarray) -> float:
        return float(self.fn(np.asarray(targets), np.asarray(probs)))

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` beats score `b`."""
        return a > b if self.greater_is_better else a < b


def multilabel(targets: np.ndarray) -> bool:
    """Whether `targets` is a 2-D 0/1 indicator matrix (multi-label) rather than class indices.

        multilabel([2, 0, 1])            # False
        multilabel([[1, 0, 1], [0, 1, 0]])  # True
    """
    t = np.asarray(targets)
    return t.ndim == 2 and bool(np.isin(t, (0, 1)).all())


def _probs(name: str, probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"{name}: probs must be an (n, C) array of class probabilities; got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise ValueError(f"{name}: probs holds {int((~np.isfinite(p)).sum())} NaN or infinite values.")
    return p


def _inputs(name: str, targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(targets, probs, is multi-label), checked: integer class indices in 0..C-1 or a 0/1 matrix shaped
    like probs."""
    p = _probs(name, probs)
    t = np.asarray(targets)
    n, n_classes = p.shape
    if t.ndim == 2:
        if t.shape != p.shape:
            raise ValueError(f"{name}: multi-label targets must have the shape of probs, {p.shape}; got {t.shape}.")
        if not multilabel(t):
            raise ValueError(f"{name}: 2-D targets must be a 0/1 indicator matrix; got values such as "
                             f"{np.unique(t)[:10].tolist()}.")
        return t.astype(bool), p, True
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"{name}: targets must be {n} class indices (shape ({n},)) or an indicator matrix of "
                         f"shape {p.shape}; got shape {t.shape}.")
    if t.dtype == bool:
        t = t.astype(int)
    if not np.issubdtype(t.dtype, np.number) or not (np.isfinite(t) & (t == np.round(t))).all():
        raise ValueError(f"{name}: targets must be whole class indices; got values such as {t[:5].tolist()}.")
    t = t.astype(int)
    bad = (t < 0) | (t >= n_classes)
    if bad.any():
        raise ValueError(f"{name}: targets must be class indices 0..{n_classes - 1} (probs has {n_classes} "
                         f"columns); got {t[bad][:5].tolist()}.")
    return t, p, False


def _single_only(name: str, targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p, multi = _inputs(name, targets, probs)
    if multi:
        raise ValueError(f"{name} scores single-label targets (1-D class indices); these targets are an "
                         f"indicator matrix of shape {t.shape} (multi-label): use f1_samples, f1_macro or "
                         "mean_column_auc.")
    return t, p


def _one_hot(t: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=bool)[t]


def decide(probs: np.ndarray, threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """The labels a multi-label prediction switches on, an (n, C) bool array: label j is on where
    probs[:, j] >= threshold (a number, or one per column), and a row with none on gets its argmax.

    Every row thus holds at least one label, as the submission writer puts it. A per-column
    threshold tuner scores its choice by passing `decide(probs, thresholds)` (the 0/1 matrix) as
    `probs`: the metrics then decide at 0.5, which keeps that matrix as it is.

        decide([[0.7, 0.6, 0.1], [0.2, 0.4, 0.3]])   # [[True, True, False], [False, True, False]]
    """
    p = _probs("decide", probs)
    th = np.asarray(threshold, dtype=float)
    if th.shape not in ((), (p.shape[1],)) or not np.isfinite(th).all() or ((th < 0) | (th > 1)).any():
        raise ValueError(f"decide: threshold={threshold!r} must be a number in [0, 1] or {p.shape[1]} of "
                         "them, one per column.")
    on = p >= th
    empty = ~on.any(axis=1)
    on[empty, p[empty].argmax(axis=1)] = True
    return on


def _labels(t: np.ndarray, p: np.ndarray, multi: bool) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) as (n, C) bool label sets: decided labels for multi-label, the argmax else."""
    if multi:
        return t, decide(p)
    return _one_hot(t, p.shape[1]), _one_hot(p.argmax(axis=1), p.shape[1])


def _accuracy(t: np.ndarray, p: np.ndarray) -> float:
    t, p, multi = _inputs("accuracy", t, p)
    if multi:  # exact match of the label sets
        return float((decide(p) == t).all(axis=1).mean())
    return float((p.argmax(1) == t).mean())


def _balanced_accuracy(t: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    t, p = _single_only("balanced_accuracy", t, p)
    return balanced_accuracy_score(t, p.argmax(1))


def _log_loss(t: np.ndarray, p: np.ndarray) -> float:
    """Kaggle's log loss: clipped to [1e-15, 1 - 1e-15]; single-label rows then renormalised to sum 1,
    multi-label the mean over columns of each column's binary log loss."""
    from sklearn.metrics import log_loss

    t, p, multi = _inputs("log_loss", t, p)
    p = np.clip(p, _EPS, 1 - _EPS)  # float64 (see _probs): sklearn's own clip at the dtype's eps stays idle
    if multi:
        return float(np.mean([log_loss(t[:, j], p[:, j], labels=[False, True]) for j in range(p.shape[1])]))
    return log_loss(t, p / p.sum(axis=1, keepdims=True), labels=np.arange(p.shape[1]))


def _column_auc(t: np.ndarray, p: np.ndarray, name: str) -> float:
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(t[:, j], p[:, j]) for j in range(p.shape[1]) if 0 < t[:, j].sum() < len(t)]
    if not scores:
        raise ValueError(f"{name}: every one of the {p.shape[1]} columns holds one class only in these targets, "
                         "so no column has an AUC; score on more rows (a larger validation fold).")
    return float(np.mean(scores))


def _mean_column_auc(t: np.ndarray, p: np.ndarray) -> float:
    """Mean over columns of each column's ROC AUC, skipping columns whose targets hold one class."""
    t, p, multi = _inputs("mean_column_auc", t, p)
    return _column_auc(t if multi else _one_hot(t, p.shape[1]), p, "mean_column_auc")


def _roc_auc(t: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    t, p, multi = _inputs("roc_auc", t, p)
    if multi:
        return _column_auc(t, p, "roc_auc")
    if p.shape[1] == 2:
        return roc_auc_score(t, p[:, 1])
    return roc_auc_score(t, p, multi_class="ovr", labels=np.arange(p.shape[1]))


def _qwk(t: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score

    t, p = _single_only("qwk", t, p)
    return cohen_kappa_score(t, p.argmax(1), weights="quadratic", labels=np.arange(p.shape[1]))


def _f1(average: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """F1 averaged as `average` says, on the argmax (single-label) or the decided labels (multi-label).
    Single-label macro F1 averages over the classes in the targets or predictions, as sklearn does."""
    def score(t: np.ndarray, p: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        t, p, multi = _inputs(f"f1_{average}", t, p)
        if multi:
            return f1_score(t, decide(p), average=average, zero_division=0)
        return f1_score(t, p.argmax(1), average=average, zero_division=0)
    return score


def _f_samples(beta: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """F-beta per row of label sets, averaged over rows (single-label: the accuracy)."""
    def score(t: np.ndarray, p: np.ndarray) -> float:
        from sklearn.metrics import fbeta_score

        t, p, multi = _inputs(f"f{beta:g}_samples", t, p)
        true, pred = _labels(t, p, multi)
        return fbeta_score(true, pred, beta=beta, average="samples", zero_division=0)
    return score


def _map_at_k(k: int, t: np.ndarray, p: np.ndarray) -> float:
    """Mean over rows of AP@k of the classes ranked by probability (ties: the lower index first)."""
    t, p, multi = _inputs(f"map@{k}", t, p)
    n = len(p)
    if not multi:  # the true class's rank: classes scored above it, or level with it at a lower index
        true_p = p[np.arange(n), t][:, None]
        rank = 1 + (p > true_p).sum(1) + ((p == true_p) & (np.arange(p.shape[1]) < t[:, None])).sum(1)
        return float(np.where(rank <= k, 1.0 / rank, 0.0).mean())
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    hits = t[np.arange(n)[:, None], top]
    precision = np.cumsum(hits, axis=1) / np.arange(1, top.shape[1] + 1)
    n_true = t.sum(1)
    ap = (precision * hits).sum(1) / np.maximum(np.minimum(n_true, k), 1)  # no true label: AP 0
    return float(ap.mean())


@functools.lru_cache(maxsize=None)
def _map_metric(k: int) -> Metric:
    return Metric(f"map@{k}", functools.partial(_map_at_k, k), True, title=f"mean average precision @ {k}")


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", _accuracy, True),
        Metric("balanced_accuracy", _balanced_accuracy, True, title="balanced accuracy"),
        Metric("log_loss", _log_loss, False, title="log loss"),
        Metric("roc_auc", _roc_auc, True, title="ROC AUC"),
        Metric("mean_column_auc", _mean_column_auc, True, title="mean column-wise ROC AUC"),
        Metric("qwk", _qwk, True, title="quadratic weighted kappa"),
        Metric("f1_micro", _f1("micro"), True, title="micro-averaged F1"),
        Metric("f1_macro", _f1("macro"), True, title="macro-averaged F1"),
        Metric("f1_samples", _f_samples(1.0), True, title="mean F1 over rows"),
        Metric("f2_samples", _f_samples(2.0), True, title="mean F2 over rows"),
        _map_metric(5),  # the family's entry in listings; get_metric builds any map@<k>
    )
}


def get_metric(name: str) -> Metric:
    """The metric called `name` (`map@<k>` for any whole k >= 1); raises ValueError listing the valid names."""
    if isinstance(name, str) and name in METRICS:
        return METRICS[name]
    if isinstance(name, str) and (match := _MAP_RE.fullmatch(name)):
        return _map_metric(int(match.group(1)))
    raise ValueError(f"METRIC={name!r} is not known; choose one of {', '.join(METRICS)} "
                     "(or map@<k> for any whole number k >= 1, such as map@3).")


def from_kaggle(evaluation_metric: str | None) -> str | None:
    """The metric name here for the Kaggle API's `evaluationMetric` text, or None when none fits.

    Matched on lower-case keywords with spaces and punctuation dropped. "Mean F Score" is Kaggle's
    MeanFScore, F1 per row averaged: f1_samples (equal to accuracy for one label per row), "MAP@{K}" with no K given as map@5.

        from_kaggle("Multi Class Log Loss")   # "log_loss"
        from_kaggle("MAP@{K}")                # "map@5"
        from_kaggle("Dice Coefficient")       # None
    """
    if evaluation_metric is None:
        return None
    if not isinstance(evaluation_metric, str):
        raise ValueError(f"from_kaggle: evaluation_metric={evaluation_metric!r} must be the Kaggle API's metric "
                         "text (a str) or None.")
    text = evaluation_metric.lower()
    if match := re.fullmatch(r"\s*(?:map|mean\s*average\s*precision)\s*@\s*(\d+|\{\s*k\s*\})\s*", text):
        k = match.group(1)
        return "map@5" if k.startswith("{") else (f"map@{int(k)}" if int(k) >= 1 else None)
    key = re.sub(r"[^a-z0-9]", "", text)
    if "pauc" in key or "partialauc" in key:  # ISIC 2024: pAUC above 80% TPR, the one limit built in
        limits = {float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)}
        return "pauc80" if limits <= {80.0, 0.8} else None
    if "auc" in key or "receiveroperatingcharacteristic" in key:
        return "mean_column_auc" if "column" in key else "roc_auc"
    if any(word in key for word in ("logloss", "multiclassloss", "crossentropy")):
        return "log_loss"
    if "qwk" in key or ("kappa" in key and "quadratic" in key):
        return "qwk"
    if "f2" in key or "fbeta" in key or "fscorebeta" in key:  # beta 2 is the one built in (planet)
        return "f2_samples"
    if "f1" in key or "fscore" in key:
        if "macro" in key:
            return "f1_macro"
        if "sample" in key or "mean" in key:  # Kaggle's MeanFScore: F1 per row, averaged
            return "f1_samples"
        if "micro" in key:
            return "f1_micro"
        return None  # a plain (binary, positive-class) F1 is none of the above
    if "accuracy" in key:
        return "balanced_accuracy" if "balanced" in key else "accuracy"
    return None


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
METRICS["pauc80"] = Metric("pauc80", _pauc80, True, title="partial AUC above 80% TPR")
__all__.append("partial_auc")
