"""Tests for kagglekit_nb.metrics: values against scikit-learn and hand computations, direction, lookup by
name, label decisions and the Kaggle metric names."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from kagglekit_nb.metrics import METRICS, Metric, decide, from_kaggle, get_metric, multilabel

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


# A tiny multi-label case. decide() gives rows {0, 1}, {1} (nothing >= 0.5: the argmax) and {0}.
ML_TARGETS = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
ML_PROBS = np.array([[0.9, 0.6, 0.2], [0.1, 0.3, 0.2], [0.7, 0.1, 0.4]])


def test_new_names_are_registered_with_titles():
    assert {"mean_column_auc", "qwk", "f1_micro", "f1_macro", "f1_samples", "f2_samples", "map@5",
            "pauc80"} <= set(METRICS)
    assert METRICS["qwk"].title == "quadratic weighted kappa"
    assert len({m.title for m in METRICS.values()}) == len(METRICS)  # a table can tell them apart
    assert Metric("error", lambda t, p: 0.0, False).title == "error"  # the default title is the name


def test_multilabel_tells_an_indicator_matrix_from_class_indices():
    assert multilabel(ML_TARGETS) and multilabel(ML_TARGETS.astype(bool))
    assert not multilabel(TARGETS)
    assert not multilabel([[0, 2], [1, 0]])  # 2-D but not 0/1


def test_decide_gives_every_row_a_label():
    on = decide(ML_PROBS)
    assert on.tolist() == [[True, True, False], [False, True, False], [True, False, False]]
    assert on.any(axis=1).all()
    assert decide(np.full((4, 3), 0.1)).sum(axis=1).tolist() == [1, 1, 1, 1]


def test_decide_per_column_thresholds_and_the_01_matrix_kept_as_it_is():
    on = decide(ML_PROBS, threshold=[0.8, 0.25, 0.3])
    assert on.tolist() == [[True, True, False], [False, True, False], [False, False, True]]
    assert (decide(on.astype(float)) == on).all()  # a tuner's 0/1 matrix passes through the metrics unchanged
    assert get_metric("f1_samples")(ML_TARGETS, on.astype(float)) == pytest.approx((1 / 2 + 1 + 0) / 3)


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan"), [0.5, 0.5]])
def test_decide_rejects_a_bad_threshold(threshold):
    with pytest.raises(ValueError, match=r"threshold=.* must be a number in \[0, 1\] or 3 of them"):
        decide(ML_PROBS, threshold)


def test_multilabel_f_scores_by_hand():
    # Row F1: {0,2} vs {0,1} -> 1/2; {1} vs {1} -> 1; {0,1} vs {0} -> P 1, R 1/2 -> 2/3.
    assert get_metric("f1_samples")(ML_TARGETS, ML_PROBS) == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    # Row F2 = 5PR / (4P + R): 1/2, 1, 5/9.
    assert get_metric("f2_samples")(ML_TARGETS, ML_PROBS) == pytest.approx((1 / 2 + 1 + 5 / 9) / 3)
    # Micro: 3 true positives, 4 predicted, 5 true -> P 3/4, R 3/5 -> F1 2/3.
    assert get_metric("f1_micro")(ML_TARGETS, ML_PROBS) == pytest.approx(2 / 3)
    # Macro over columns: column 0 exact (1), column 1 P = R = 1/2, column 2 never predicted (0).
    assert get_metric("f1_macro")(ML_TARGETS, ML_PROBS) == pytest.approx(0.5)
    assert get_metric("accuracy")(ML_TARGETS, ML_PROBS) == pytest.approx(1 / 3)  # only row 1 exact


def test_single_label_f_scores():
    # argmax [0,1,2,1,0,0,2,1]: per-class F1 0.8, 2/3, 0.8.
    assert get_metric("f1_macro")(TARGETS, PROBS) == pytest.approx(34 / 45)
    assert get_metric("f1_macro")(TARGETS, PROBS) == pytest.approx(skm.f1_score(TARGETS, PROBS.argmax(1),
                                                                                 average="macro"))
    for name in ("f1_micro", "f1_samples", "f2_samples"):  # each reduces to the accuracy
        assert get_metric(name)(TARGETS, PROBS) == pytest.approx(6 / 8)


def test_map_at_5_single_label_by_hand():
    t = np.array([3, 0, 5])
    p = np.array([
        [0.05, 0.1, 0.15, 0.4, 0.2, 0.1],    # class 3 ranked 1st -> 1
        [0.2, 0.3, 0.25, 0.1, 0.1, 0.05],    # class 0 ranked 3rd -> 1/3
        [0.2, 0.2, 0.2, 0.2, 0.15, 0.05],    # class 5 ranked 6th -> 0
    ])
    assert get_metric("map@5")(t, p) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert get_metric("map@1")(t, p) == pytest.approx(1 / 3)
    assert get_metric("map@6")(t, p) == pytest.approx((1 + 1 / 3 + 1 / 6) / 3)


def test_map_ties_rank_the_lower_index_first_on_both_paths():
    t = np.array([1, 0])
    p = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    assert get_metric("map@3")(t, p) == pytest.approx((1 / 2 + 1) / 2)
    assert get_metric("map@3")(np.eye(3, dtype=int)[t], p) == pytest.approx((1 / 2 + 1) / 2)


def test_map_at_k_multilabel_by_hand():
    t = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    p = np.array([
        [0.3, 0.35, 0.9, 0.1],   # ranked 2, 1, 0: hits 1,0,1 -> (1 + 2/3) / min(2, 3) = 5/6
        [0.9, 0.5, 0.2, 0.1],    # ranked 0, 1, 2: hit at 2 -> (1/2) / 1
        [0.1, 0.5, 0.2, 0.9],    # ranked 3, 1: hits 1,1 at k=2, 4 labels -> 2 / min(4, 2) = 1
    ])
    assert get_metric("map@3")(t, p) == pytest.approx((5 / 6 + 1 / 2 + (1 + 1 + 1) / 3) / 3)
    assert get_metric("map@2")(t, p) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


def test_map_at_k_is_built_on_demand_and_cached():
    m = get_metric("map@3")
    assert m.name == "map@3" and m.greater_is_better and "map@3" not in METRICS
    assert get_metric("map@3") is m
    assert get_metric("map@5") is METRICS["map@5"]


@pytest.mark.parametrize("name", ["map@0", "map@", "map@-1", "map@05", "map@1.5", "MAP@5"])
def test_bad_map_k_is_rejected_naming_the_valid_forms(name):
    with pytest.raises(ValueError) as info:
        get_metric(name)
    message = str(info.value)
    assert f"METRIC={name!r}" in message and "map@<k> for any whole number k >= 1" in message
    assert all(valid in message for valid in METRICS)


def qwk_by_formula(t: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    observed = np.zeros((n_classes, n_classes))
    np.add.at(observed, (t, pred), 1)
    expected = np.outer(np.bincount(t, minlength=n_classes), np.bincount(pred, minlength=n_classes)) / len(t)
    i, j = np.indices((n_classes, n_classes))
    weights = (i - j) ** 2 / (n_classes - 1) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_qwk_by_hand_and_by_the_formula():
    t = np.array([0, 0, 1, 2])
    p = np.eye(3)[[0, 1, 1, 2]] * 0.8 + 0.2 / 3
    # One disagreement of weight 1 against an expected 20/4 = 5: kappa 1 - 1/5.
    assert get_metric("qwk")(t, p) == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 60)
    p = rng.dirichlet(np.ones(5), 60) + np.eye(5)[t] * rng.random((60, 1))
    score = get_metric("qwk")(t, p)
    assert score == pytest.approx(qwk_by_formula(t, p.argmax(1), 5))
    assert score != pytest.approx(skm.cohen_kappa_score(t, p.argmax(1)))  # the weights matter


@pytest.mark.parametrize("name", ["qwk", "balanced_accuracy"])
def test_single_label_metrics_reject_multilabel_targets(name):
    with pytest.raises(ValueError, match=rf"{name} scores single-label targets .* shape \(3, 3\) \(multi-label\)"):
        get_metric(name)(ML_TARGETS, ML_PROBS)


def test_log_loss_with_a_zero_probability_stays_finite_at_the_clipped_value():
    t = np.array([1, 0, 0])
    p = np.array([[1.0, 0.0, 0.0], [0.8, 0.2, 0.0], [0.6, 0.2, 0.1]])  # the last row sums to 0.9
    rows = [
        1e-15 / (1 + 1e-15),   # clipped to [1 - 1e-15, 1e-15, 1e-15], renormalised
        0.8 / (1 + 1e-15),
        0.6 / 0.9,             # renormalised to sum 1
    ]
    expected = -np.mean(np.log(rows))
    assert expected == pytest.approx((34.539 + 0.223 + 0.405) / 3, abs=1e-3)
    assert get_metric("log_loss")(t, p) == pytest.approx(expected)
    assert get_metric("log_loss")(t, p.astype(np.float32)) == pytest.approx(expected, rel=1e-6)


def test_log_loss_multilabel_is_the_mean_column_binary_log_loss():
    t = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.9, 0.2], [0.3, 0.6], [1.0, 0.5]])
    col0 = -np.mean(np.log([0.9, 0.7, 1 - 1e-15]))
    col1 = -np.mean(np.log([0.8, 0.6, 0.5]))
    assert get_metric("log_loss")(t, p) == pytest.approx((col0 + col1) / 2)


def test_mean_column_auc_skips_a_constant_column():
    t = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.6], [0.4, 0.7, 0.2], [0.5, 0.4, 0.1]])
    # Column 0: 3 of 4 positive/negative pairs ranked right; column 1: all 4; column 2: no positives.
    assert get_metric("mean_column_auc")(t, p) == pytest.approx((3 / 4 + 1) / 2)
    assert get_metric("roc_auc")(t, p) == pytest.approx((3 / 4 + 1) / 2)
    with pytest.raises(ValueError, match="every one of the 3 columns holds one class only"):
        get_metric("mean_column_auc")(np.zeros((4, 3), dtype=int), p)


def test_mean_column_auc_one_hot_encodes_single_label_targets():
    assert get_metric("mean_column_auc")(BIN_TARGETS, BIN_PROBS) == pytest.approx(8 / 9)  # = the binary AUC
    t = np.array([0, 1, 0, 1])  # class 2 absent from this fold: its column is skipped
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.3, 0.2, 0.5], [0.4, 0.4, 0.2]])
    # Class 0: positives 0.5, 0.3 vs negatives 0.2, 0.4 -> 3/4; class 1: 0.7, 0.4 vs 0.3, 0.2 -> 1.
    assert get_metric("mean_column_auc")(t, p) == pytest.approx((3 / 4 + 1) / 2)


@pytest.mark.parametrize(("targets", "probs", "message"), [
    (np.array([0, 3]), np.full((2, 3), 1 / 3), r"class indices 0\.\.2 .* got \[3\]"),
    (np.array([0, 1, 1]), np.full((2, 3), 1 / 3), r"2 class indices .* got shape \(3,\)"),
    (np.ones((2, 2), dtype=int), np.full((2, 3), 1 / 3), r"shape of probs, \(2, 3\); got \(2, 2\)"),
    (np.array([0, 1]), np.array([0.2, 0.8]), r"\(n, C\) array .* got shape \(2,\)"),
    (np.array([0, 1]), np.array([[0.5, 0.5], [np.nan, 0.5]]), "1 NaN or infinite"),
    (np.array([0.5, 1]), np.full((2, 2), 0.5), "whole class indices"),
])
def test_bad_inputs_say_what_is_wrong(targets, probs, message):
    with pytest.raises(ValueError, match=message):
        get_metric("accuracy")(targets, probs)


@pytest.mark.parametrize(("text", "name"), [
    ("Categorization Accuracy", "accuracy"),
    ("AUC", "roc_auc"),
    ("Area Under Receiver Operating Characteristic Curve", "roc_auc"),
    ("Log Loss", "log_loss"),
    ("Multi Class Log Loss", "log_loss"),
    ("MulticlassLoss", "log_loss"),
    ("Quadratic Weighted Kappa", "qwk"),
    ("Mean F Score", "f1_samples"),
    ("MeanFScore", "f1_samples"),
    ("Micro-averaged F1 Score", "f1_micro"),
    ("F1 Micro", "f1_micro"),
    ("Macro F1", "f1_macro"),
    ("MAP@5", "map@5"),
    ("MAP@{K}", "map@5"),
    ("Mean Average Precision @ 5", "map@5"),
    ("map@3", "map@3"),
    ("Mean Columnwise AUC", "mean_column_auc"),
    ("Mean Column Wise ROC AUC", "mean_column_auc"),
    ("F2 Score", "f2_samples"),
    ("Mean F2", "f2_samples"),
    ("pAUC above 80% TPR", "pauc80"),
])
def test_from_kaggle_maps_the_api_text(text, name):
    assert from_kaggle(text) == name
    get_metric(name)  # a name get_metric knows


@pytest.mark.parametrize("text", ["Dice Coefficient", "Root Mean Squared Error", "F1 Score", "mAP@0.5:0.95",
                                  "MAP@0", "pAUC above 90% TPR", "", None])
def test_from_kaggle_returns_none_for_what_it_cannot_score(text):
    assert from_kaggle(text) is None


def test_from_kaggle_rejects_a_non_text():
    with pytest.raises(ValueError, match=r"evaluation_metric=5 must be the Kaggle API's metric text"):
        from_kaggle(5)
