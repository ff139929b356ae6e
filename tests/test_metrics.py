"""Tests for kagglekit_nb.metrics: values against scikit-learn, direction, lookup by name."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from kagglekit_nb.metrics import METRICS, Metric, get_metric

TARGETS = np.array([0, 1, 2, 2, 1, 0, 2, 1])
PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.1, 0.5, 0.4],
    [0.2, 0.2, 0.6],
    [0.3, 0.4, 0.3],  # wrong
    [0.6, 0.3, 0.1],  # wrong
    [0.5, 0.25, 0.25],
    [0.1, 0.1, 0.8],
    [0.2, 0.7, 0.1],
])
BIN_TARGETS = np.array([0, 0, 1, 1, 1, 0])
BIN_PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8], [0.7, 0.3], [0.8, 0.2]])


def test_metric_names():
    assert {"accuracy", "balanced_accuracy", "log_loss", "roc_auc"} <= set(METRICS)
    assert all(METRICS[name].name == name for name in METRICS)


def test_accuracy():
    score = get_metric("accuracy")(TARGETS, PROBS)
    assert score == pytest.approx(6 / 8)
    assert score == pytest.approx(skm.accuracy_score(TARGETS, PROBS.argmax(1)))
    assert isinstance(score, float)


def test_balanced_accuracy():
    expected = skm.balanced_accuracy_score(TARGETS, PROBS.argmax(1))
    assert get_metric("balanced_accuracy")(TARGETS, PROBS) == pytest.approx(expected)
    assert expected != pytest.approx(6 / 8)  # the classes are unbalanced in the errors


def test_log_loss():
    expected = -np.mean(np.log(PROBS[np.arange(len(TARGETS)), TARGETS]))
    assert get_metric("log_loss")(TARGETS, PROBS) == pytest.approx(expected)
    assert get_metric("log_loss")(TARGETS, PROBS) == pytest.approx(skm.log_loss(TARGETS, PROBS))


def test_log_loss_with_a_class_missing_from_the_targets():
    """A validation fold may lack a class; the probability columns still say how many there are."""
    t = np.array([0, 1, 1, 0])
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    expected = -np.mean(np.log([0.6, 0.7, 0.8, 0.5]))
    assert get_metric("log_loss")(t, p) == pytest.approx(expected)


def test_roc_auc_binary_uses_the_positive_column():
    expected = skm.roc_auc_score(BIN_TARGETS, BIN_PROBS[:, 1])
    assert get_metric("roc_auc")(BIN_TARGETS, BIN_PROBS) == pytest.approx(expected)
    assert expected == pytest.approx(8 / 9)  # 8 of the 9 positive/negative pairs ranked right


def test_roc_auc_multiclass_one_vs_rest():
    expected = skm.roc_auc_score(TARGETS, PROBS, multi_class="ovr")
    assert get_metric("roc_auc")(TARGETS, PROBS) == pytest.approx(expected)


def test_metrics_accept_lists():
    assert get_metric("accuracy")(TARGETS.tolist(), PROBS.tolist()) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("name", "higher_is_better"),
    [("accuracy", True), ("balanced_accuracy", True), ("roc_auc", True), ("log_loss", False)],
)
def test_direction(name, higher_is_better):
    m = get_metric(name)
    assert m.greater_is_better is higher_is_better
    assert m.better(0.9, 0.8) is higher_is_better
    assert m.better(0.8, 0.9) is not higher_is_better
    assert not m.better(0.85, 0.85)  # a tie is not an improvement


def test_custom_metric_direction():
    m = Metric("error", lambda t, p: float((p.argmax(1) != t).mean()), greater_is_better=False)
    assert m(TARGETS, PROBS) == pytest.approx(0.25)
    assert m.better(0.1, 0.25)


@pytest.mark.parametrize("name", ["f1", "Accuracy", "", None, ["accuracy"]])
def test_unknown_name_lists_valid_names(name):
    with pytest.raises(ValueError) as info:
        get_metric(name)
    message = str(info.value)
    assert f"METRIC={name!r}" in message
    for valid in METRICS:
        assert valid in message
