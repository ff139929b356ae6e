"""A fast classical stage: images downsized to a few pixels, a scikit-learn model, the kit's folds.

Seconds on a CPU, and often a strong bar: every deep model must beat it out of fold to be submitted.

    X, bad = pixel_features(train_paths + test_paths, read=read_image, size=16, colour=False)
    result = fit_predict(X[:n], y, folds, X[n:], n_classes=10, metric=get_metric("accuracy"),
                         budget=run.budget, skip=bad_train_rows, channels=1)
    result.oof, result.test, result.score      # out-of-fold and test probabilities, OOF score

Features: each image resized to size x size (grey, or colour when `colour`), normalised per image
(zero mean, unit variance), plus the image's own brightness and contrast, standardised per feature
inside the model's pipeline. The model is an RBF SVM with probabilities (up to `SVM_MAX_ROWS`
training rows), else a logistic regression; it is fit on the same folds as the deep model, so the
out-of-fold scores compare like with like.

The SVM also learns from each training image moved by one pixel up, down, left and right (`SHIFTS`,
"virtual" samples: the cheapest augmentation there is), while its rows x 5 stay within
`SHIFT_MAX_ROWS`. On the digits demo (5 folds) this took out-of-fold accuracy from 0.985 to 0.988,
log loss from 0.16 to 0.12 and test accuracy from 0.992 to 1.000, for about 5x the fit time. The SVM's probability calibration splits keep an image and its shifted copies on
one side, so the copies cannot make the probabilities over-confident.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..budget import Budget
from ..metrics import Metric

__all__ = ["PIXELS", "SHIFTS", "ClassicalResult", "estimate_s", "fit_predict", "make_model", "pixel_features",
           "prior_oof", "shifted"]

PIXELS = 16              # features: PIXELS x PIXELS pixels per channel
SVM_MAX_ROWS = 20_000    # above this an SVM's fit time (about rows^2) no longer takes seconds
SHIFT_MAX_ROWS = 10_000  # the SVM adds its SHIFTS copies while rows x 5 stay within this (fits of seconds)
_PROBE_ROWS = 1000       # rows of the timed probe fit that sizes the stage for the budget
# An SVM's fit grows between rows^1 (small fits: 300 -> 5,000 digit rows took 8.5x) and rows^2 (large
# ones); the probe is scaled by rows^1.5 from its own size, linearly for the logistic regression.
_SVM_POWER = 1.5
PACE = "classical_fold"  # the budget's name for the pace of one fold fit
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (rows, columns) moves of the SVM's extra training copies
_CALIBRATION_SPLITS = 3  # the SVM's Platt scaling is fit on this many internal splits


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

    def save(self, path: str | Path, key: str) -> None:
        """Write the result to `path` (.npz, atomically) under `key`: what a reuse must match."""
        from .._atomic import write_atomic

        write_atomic(path, lambda fh: np.savez(
            fh, key=key, model=self.model, oof=self.oof, test=self.test,
            score=np.nan if self.score is None else self.score, seconds=self.seconds,
            folds_done=np.asarray(self.folds_done, dtype=int)), binary=True)

    @classmethod
    def load(cls, path: str | Path, *, key: str | None = None,
             shape: tuple[int, int, int] | None = None) -> ClassicalResult | None:
        """The result `save` wrote, or None: no file, another `key`, or (`shape` = train rows, classes,
        test rows) arrays of other sizes."""
        path = Path(path)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as saved:
            if key is not None and str(saved["key"]) != key:
                return None
            if shape is not None and (saved["oof"].shape != shape[:2] or saved["test"].shape[0] != shape[2]):
                return None
            score = float(saved["score"])
            return cls(model=str(saved["model"]), oof=saved["oof"], test=saved["test"],
                       score=score if np.isfinite(score) else None, seconds=float(saved["seconds"]),
                       folds_done=saved["folds_done"].tolist())


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


def make_model(n_rows: int, seed: int = 0, *, multilabel: bool = False, calibration: Any = _CALIBRATION_SPLITS) -> Any:
    """The stage's scikit-learn pipeline: standardise, then an RBF SVM with calibrated probabilities
    (small data) or a multinomial logistic regression (more than SVM_MAX_ROWS rows). Multi-label
    targets (a 0/1 column per label): one logistic regression per label (one-vs-rest), which copes
    with labels too rare for the SVM's internal calibration splits. `calibration`: the SVM's
    calibration splits (a count, or (fit, calibrate) index pairs)."""
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
                                                                      cv=calibration, ensemble=False))
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))


def uses_shifts(n_rows: int, multilabel: bool) -> bool:
    """Whether a fit on `n_rows` rows adds the SHIFTS copies: the SVM's case, while the copies fit."""
    return not multilabel and n_rows * (1 + len(SHIFTS)) <= SHIFT_MAX_ROWS


def shifted(X: np.ndarray, channels: int) -> np.ndarray:
    """`X` (pixel_features rows) followed by one copy per move in SHIFTS: the pixels moved by one
    pixel, the edge row or column repeated; each copy keeps its image's mean and contrast."""
    size = int(round(((X.shape[1] - 2) / channels) ** 0.5))
    if size * size * channels != X.shape[1] - 2:
        raise ValueError(f"rows of {X.shape[1]} features are not {channels}-channel pixel_features")
    img = X[:, :-2].reshape(len(X), size, size, channels)
    padded = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    copies = [X]
    for dy, dx in SHIFTS:
        moved = padded[:, 1 + dy:1 + dy + size, 1 + dx:1 + dx + size].reshape(len(X), -1)
        copies.append(np.concatenate([moved, X[:, -2:]], axis=1))
    return np.concatenate(copies)


def _calibration_splits(y: np.ndarray, copies: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Calibration splits over `copies` stacked copies of the rows of `y`: all copies of one image on
    the same side."""
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(y)
    splitter = StratifiedGroupKFold(_CALIBRATION_SPLITS, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(n * copies), np.tile(y, copies), np.tile(np.arange(n), copies)))


def _fit(X: np.ndarray, y: np.ndarray, seed: int, channels: int | None) -> Any:
    """The stage's model fit on (X, y), with the SHIFTS copies where `uses_shifts` (and `channels`,
    the pixel planes per image, is known)."""
    multilabel = np.ndim(y) == 2
    rare = not multilabel and np.bincount(y)[np.bincount(y) > 0].min() < _CALIBRATION_SPLITS
    if channels is None or rare or not uses_shifts(len(X), multilabel):
        return make_model(len(X), seed, multilabel=multilabel).fit(X, y)
    copies = 1 + len(SHIFTS)
    model = make_model(len(X), seed, calibration=_calibration_splits(y, copies, seed))
    return model.fit(shifted(X, channels), np.tile(y, copies))


def _model_name(model: Any) -> str:
    names = [type(getattr(step, "estimator", None) or step).__name__ for _, step in model.steps]
    return " + ".join(names)


def estimate_s(X: np.ndarray, y: np.ndarray, n_folds: int, seed: int = 0, *, channels: int | None = None) -> float:
    """Seconds one fold fit (and its predictions) should take, from a timed fit on up to _PROBE_ROWS
    rows scaled to the fold's rows (the SHIFTS copies included where the fold's fit adds them): by
    _SVM_POWER for the SVM, linearly for the logistic regression."""
    n_fit = int(len(X) * (n_folds - 1) / n_folds)
    rows = np.random.default_rng(seed).permutation(len(X))[:min(_PROBE_ROWS, len(X))]
    if len(np.unique(y[rows])) < 2:
        return 0.0
    model = make_model(n_fit, seed, multilabel=np.ndim(y) == 2)
    t0 = time.monotonic()
    model.fit(X[rows], y[rows])
    probe = time.monotonic() - t0
    power = _SVM_POWER if n_fit <= SVM_MAX_ROWS else 1
    copies = 1 + len(SHIFTS) if channels is not None and uses_shifts(n_fit, np.ndim(y) == 2) else 1
    return probe * max(1.0, n_fit * copies / len(rows)) ** power


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
                budget: Budget | None = None, fold_s: float = 0.0, channels: int | None = None) -> ClassicalResult:
    """Fit one model per fold on the other folds' rows; its out-of-fold and (averaged) test
    probabilities. Rows in `skip` (unreadable images) are not trained on and get the fold's class
    prior; so do the test rows in `skip_test`. With a `budget`, each fold first asks its
    `stop_reason` for the fold's need (`fold_s` estimated, then measured); a refused fold and the
    ones after it stay NaN in `oof`. `y`: class indices, or a 0/1 matrix (multi-label). `channels`:
    the pixel planes of pixel_features rows (1 grey, 3 colour), which lets the SVM add its SHIFTS
    copies; None: `X` is not pixels, so no copies."""
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
        model = _fit(X[fit], y[fit], seed, channels)
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
