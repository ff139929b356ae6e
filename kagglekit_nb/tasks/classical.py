"""A fast classical stage: images downsized to a few pixels, a scikit-learn model, the kit's folds.

Seconds on a CPU, and often a strong bar: every deep model must beat it out of fold to be submitted.

    X, X_test, bad = pixel_features(train_paths, test_paths, read=read_image, size=16, colour=False)
    result = fit_predict(X, y, folds, X_test, n_classes=10, metric=get_metric("accuracy"),
                         budget=run.budget, skip=bad_train_rows)
    result.oof, result.test, result.score      # out-of-fold and test probabilities, OOF score

Features: each image resized to size x size (grey, or colour when `colour`), normalised per image
(zero mean, unit variance), plus the image's own brightness and contrast, standardised per feature
inside the model's pipeline. The model is an RBF SVM with probabilities (up to `SVM_MAX_ROWS`
training rows), else a logistic regression; it is fit on the same folds as the deep model, so the
out-of-fold scores compare like with like.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..budget import Budget
from ..metrics import Metric

__all__ = ["PIXELS", "ClassicalResult", "estimate_s", "fit_predict", "make_model", "pixel_features",
           "prior_oof"]

PIXELS = 16              # features: PIXELS x PIXELS pixels per channel
SVM_MAX_ROWS = 20_000    # above this an SVM's fit time (about rows^2) no longer takes seconds
_PROBE_ROWS = 300        # rows of the timed probe fit that sizes the stage for the budget
PACE = "classical_fold"  # the budget's name for the pace of one fold fit


@dataclass
class ClassicalResult:
    """Out-of-fold and test class probabilities of the classical stage and how it went."""

    model: str
    oof: np.ndarray                      # (n_train, n_classes); NaN rows: a fold that was not fitted
    test: np.ndarray | None              # (n_test, n_classes), mean of the fold models; None: no fold fitted
    score: float | None                  # the metric over the out-of-fold rows
    seconds: float
    folds_done: list[int] = field(default_factory=list)
    stop_reason: str = "completed"

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "score": self.score, "seconds": round(self.seconds, 2),
                "folds_done": self.folds_done, "stop_reason": self.stop_reason}


def pixel_features(paths: Sequence[str], read: Callable[[str], np.ndarray], *, size: int = PIXELS,
                   colour: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """(n, size*size*channels + 2) float32 features of the images at `paths` (the normalised pixels,
    then each image's own mean and standard deviation), and {row: reason} of the images `read` could
    not decode (their rows are zeros). `read(path)` returns HWC or HW pixels and
    raises ValueError for an unreadable file."""
    from PIL import Image

    channels = 3 if colour else 1
    out = np.zeros((len(paths), size * size * channels + 2), dtype=np.float32)
    bad: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            arr = read(path)
        except ValueError as e:
            bad[i] = str(e)
            continue
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim == 3 and not colour:
            arr = arr.mean(axis=2)
        elif arr.ndim == 2 and colour:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        planes = [arr] if arr.ndim == 2 else [arr[:, :, c] for c in range(3)]
        small = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in planes], -1)
        v = small.reshape(-1)
        out[i, :-2] = (v - v.mean()) / (v.std() + 1e-6)
        out[i, -2:] = v.mean() / 255.0, v.std() / 255.0  # what the per-image normalisation removes
    return out, bad


def make_model(n_rows: int, seed: int = 0, *, multilabel: bool = False) -> Any:
    """The stage's scikit-learn pipeline: standardise, then an RBF SVM with calibrated probabilities
    (small data) or a multinomial logistic regression (more than SVM_MAX_ROWS rows). Multi-label
    targets (a 0/1 column per label): one logistic regression per label (one-vs-rest), which copes
    with labels too rare for the SVM's internal calibration splits."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if multilabel:
        return make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=300)))
    if n_rows <= SVM_MAX_ROWS:  # Platt-scaled probabilities from 3 internal splits (SVC(probability=True))
        return make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(C=10.0, random_state=seed),
                                                                      cv=3, ensemble=False))
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))


def _model_name(model: Any) -> str:
    names = [type(getattr(step, "estimator", None) or step).__name__ for _, step in model.steps]
    return " + ".join(names)


def estimate_s(X: np.ndarray, y: np.ndarray, n_folds: int, seed: int = 0) -> float:
    """Seconds one fold fit (and its predictions) should take, from a timed fit on a few hundred
    rows scaled to the fold size (quadratically for the SVM, linearly for the logistic regression)."""
    n_fit = int(len(X) * (n_folds - 1) / n_folds)
    rows = np.random.default_rng(seed).permutation(len(X))[:min(_PROBE_ROWS, len(X))]
    if len(np.unique(y[rows])) < 2:
        return 0.0
    model = make_model(n_fit, seed, multilabel=np.ndim(y) == 2)
    t0 = time.monotonic()
    model.fit(X[rows], y[rows])
    probe = time.monotonic() - t0
    power = 2 if n_fit <= SVM_MAX_ROWS else 1
    return probe * max(1.0, n_fit / len(rows)) ** power


def prior_oof(y: np.ndarray, folds: np.ndarray, n_classes: int) -> np.ndarray:
    """The class prior's out-of-fold predictions: each fold gets the class frequencies of the other
    folds (the emergency baseline's probabilities, scored honestly)."""
    y, folds = np.asarray(y), np.asarray(folds)
    out = np.full((len(y), n_classes), np.nan)
    for k in np.unique(folds[folds >= 0]):
        others = (folds != k) & (folds >= 0)
        out[folds == k] = _frequencies(y[others if others.any() else folds >= 0], n_classes)
    return out


def fit_predict(X: np.ndarray, y: np.ndarray, folds: np.ndarray, X_test: np.ndarray | None, *, n_classes: int,
                metric: Metric, seed: int = 0, skip: Sequence[int] = (), skip_test: Sequence[int] = (),
                budget: Budget | None = None, fold_s: float = 0.0) -> ClassicalResult:
    """Fit one model per fold on the other folds' rows; its out-of-fold and (averaged) test
    probabilities. Rows in `skip` (unreadable images) are not trained on and get the fold's class
    prior; so do the test rows in `skip_test`. With a `budget`, each fold first asks its
    `stop_reason` for the fold's need (`fold_s` estimated, then measured); a refused fold and the
    ones after it stay NaN in `oof`. `y`: class indices, or a 0/1 matrix (multi-label)."""
    t0 = time.monotonic()
    y, folds = np.asarray(y), np.asarray(folds)
    multilabel = y.ndim == 2
    usable = np.ones(len(y), bool)
    usable[list(skip)] = False
    oof = np.full((len(y), n_classes), np.nan)
    test_sum = None
    done: list[int] = []
    reason = "completed"
    model = make_model(int(usable.sum()), seed, multilabel=multilabel)
    if budget is not None:
        budget.plan_pace(PACE, fold_s)
    for k in sorted(int(f) for f in np.unique(folds[folds >= 0])):
        val, fit = folds == k, (folds != k) & (folds >= 0) & usable
        if budget is not None:
            why = budget.stop_reason(budget.need(PACE))
            if why:
                reason = why
                break
        t_fold = time.monotonic()
        model = make_model(int(fit.sum()), seed, multilabel=multilabel)
        model.fit(X[fit], y[fit])
        probs = _proba(model, X[val], n_classes, multilabel)
        probs[~usable[val]] = _frequencies(y[fit], n_classes)
        oof[val] = probs
        if X_test is not None:
            p = _proba(model, X_test, n_classes, multilabel)
            test_sum = p if test_sum is None else test_sum + p
        done.append(k)
        if budget is not None:
            budget.observe(PACE, time.monotonic() - t_fold)
    test = None
    if test_sum is not None:
        test = test_sum / len(done)
        test[list(skip_test)] = _frequencies(y[usable], n_classes)
    covered = np.isfinite(oof).all(1)
    score = None
    if covered.any():
        try:
            score = metric(y[covered], oof[covered])
        except (ValueError, ZeroDivisionError):
            score = None
    return ClassicalResult(model=_model_name(model), oof=oof, test=test, score=score,
                           seconds=time.monotonic() - t0, folds_done=done, stop_reason=reason)


def _proba(model: Any, X: np.ndarray, n_classes: int, multilabel: bool) -> np.ndarray:
    """(rows, n_classes) probabilities; a class missing from the fit rows gets 0."""
    if multilabel:
        return np.asarray(model.predict_proba(X), dtype=float)
    p = np.zeros((len(X), n_classes))
    p[:, model.classes_] = model.predict_proba(X)
    return p


def _frequencies(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class frequencies (multi-label: each label's positive rate)."""
    if np.ndim(y) == 2:
        return y.mean(0) if len(y) else np.zeros(n_classes)
    counts = np.bincount(y, minlength=n_classes)[:n_classes].astype(float)
    return counts / max(1.0, counts.sum())
