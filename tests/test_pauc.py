"""Tests for the ISIC 2024 metric: partial AUC above 80% TPR, as the official Kaggle scorer computes it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc, roc_curve

from kagglekit_nb.metrics import METRICS, get_metric, partial_auc


def official_score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str,
                   min_tpr: float = 0.80) -> float:
    """The competition's scorer, written out as published (data frames in, ids dropped)."""
    del solution[row_id_column_name]
    del submission[row_id_column_name]
    v_gt = abs(np.asarray(solution.values) - 1)
    v_pred = -1.0 * np.asarray(submission.values)
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = roc_curve(v_gt, v_pred, sample_weight=None)
    if max_fpr is None or max_fpr == 1:
        return auc(fpr, tpr)
    if max_fpr <= 0 or max_fpr > 1:
        raise ValueError(f"Expected min_tpr in range [0, 1), got: {min_tpr}")
    stop = np.searchsorted(fpr, max_fpr, "right")
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(fpr[:stop], max_fpr)
    return auc(fpr, tpr)


def by_hand(y: np.ndarray, score: np.ndarray, min_tpr: float = 0.80) -> float:
    """The same quantity from first principles: ROC points per distinct threshold, trapezoids."""
    gt, pred = 1 - y, -score                      # flipped, as in the official scorer
    order = np.argsort(-pred, kind="stable")
    gt, pred = gt[order], pred[order]
    last_of_tie = np.r_[pred[1:] != pred[:-1], True]
    tp = np.cumsum(gt)[last_of_tie]
    fp = np.cumsum(1 - gt)[last_of_tie]
    fpr = np.r_[0.0, fp / fp[-1]]
    tpr = np.r_[0.0, tp / tp[-1]]
    max_fpr = 1 - min_tpr
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], tpr[:-1], tpr[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # the segment crossing the limit, cut at it by linear interpolation
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def official(y: np.ndarray, score: np.ndarray, min_tpr: float = 0.80) -> float:
    ids = [f"ISIC_{i:07d}" for i in range(len(y))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's note about the (n, 1) column vectors
        return official_score(pd.DataFrame({"isic_id": ids, "target": y}),
                              pd.DataFrame({"isic_id": ids, "target": score}), "isic_id", min_tpr)


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(5, 400))
    y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(int)
    y[:2] = [0, 1]  # both classes present
    kind = rng.integers(3)
    if kind == 0:
        score = rng.random(n)
    elif kind == 1:  # heavy ties
        score = rng.integers(0, 5, n) / 4.0
    else:  # informative, with ties from rounding
        score = np.round(y * rng.uniform(0, 1.5) + rng.normal(0, 1, n), 1)
    return y, score


def test_matches_the_official_scorer_on_random_inputs():
    rng = np.random.default_rng(2024)
    tied = 0
    for _ in range(300):
        y, score = random_case(rng)
        tied += len(np.unique(score)) < len(score)
        expected = official(y, score)
        assert partial_auc(y, score) == pytest.approx(expected, abs=1e-12, rel=0)
        assert by_hand(y, score) == pytest.approx(expected, abs=1e-12, rel=0)
    assert tied > 100  # ties were exercised


@pytest.mark.parametrize("min_tpr", [0.0, 0.5, 0.8, 0.95])
def test_other_tpr_limits_match_too(min_tpr):
    rng = np.random.default_rng(7)
    for _ in range(30):
        y, score = random_case(rng)
        assert partial_auc(y, score, min_tpr) == pytest.approx(official(y, score, min_tpr), abs=1e-12, rel=0)


def test_perfect_ranking_scores_the_maximum_and_inverted_scores_zero():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0, 0, 0])
    score = y * 0.5 + np.linspace(0.1, 0.3, 10)
    assert partial_auc(y, score) == pytest.approx(0.2, abs=1e-12)
    assert partial_auc(y, -score) == pytest.approx(0.0, abs=1e-12)
    assert partial_auc(y, score, min_tpr=0.5) == pytest.approx(0.5, abs=1e-12)


def test_constant_scores_give_the_diagonal():
    y = np.array([0, 1, 0, 1, 1, 0])
    assert partial_auc(y, np.full(6, 0.3)) == pytest.approx(0.2 * 0.2 / 2, abs=1e-12)  # 0.02


def test_a_known_small_case():
    # Flipped, the ROC passes (0, 0.5), (0.5, 0.5), ... : the first 0.2 of FPR sits at TPR 0.5.
    y = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8])
    assert partial_auc(y, score) == pytest.approx(0.2 * 0.5, abs=1e-12)


def test_registered_as_pauc80_taking_one_or_two_probability_columns():
    metric = get_metric("pauc80")
    assert metric is METRICS["pauc80"] and metric.greater_is_better
    assert metric.better(0.15, 0.1)
    y = np.array([0, 1, 0, 0, 1, 0, 1, 0])
    p1 = np.array([0.1, 0.7, 0.3, 0.2, 0.4, 0.35, 0.9, 0.5])
    expected = official(y, p1)
    assert metric(y, p1) == pytest.approx(expected, abs=1e-12)
    assert metric(y, np.stack([1 - p1, p1], axis=1)) == pytest.approx(expected, abs=1e-12)
    assert isinstance(metric(y, p1), float)
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 2\); got shape \(8, 3\)"):
        metric(y, np.ones((8, 3)) / 3)


def test_the_existing_metrics_are_unchanged():
    assert {"accuracy", "balanced_accuracy", "log_loss", "roc_auc"} <= set(METRICS)
    assert METRICS["log_loss"].greater_is_better is False


@pytest.mark.parametrize("y, score, message", [
    ([1, 1, 1], [0.1, 0.2, 0.3], "only the class 1"),
    ([0, 0, 0], [0.1, 0.2, 0.3], "only the class 0"),
    ([0, 1, 2], [0.1, 0.2, 0.3], r"only 0 and 1; got the values \[0, 1, 2\]"),
    ([0, 1, 1], [0.1, 0.2], r"same length; got shapes \(3,\) and \(2,\)"),
    ([0, 1, 1], [0.1, float("nan"), 0.3], "1 NaN or infinite"),
])
def test_bad_inputs_are_rejected_with_the_reason(y, score, message):
    with pytest.raises(ValueError, match=message):
        partial_auc(y, score)


@pytest.mark.parametrize("min_tpr", [1.0, -0.1, 1.5])
def test_min_tpr_outside_0_1_is_rejected(min_tpr):
    with pytest.raises(ValueError, match=rf"min_tpr={min_tpr} must be in \[0, 1\)"):
        partial_auc([0, 1], [0.2, 0.8], min_tpr=min_tpr)
