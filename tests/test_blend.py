"""Tests for kagglekit_nb.blend: the OOF weight search and the chooser."""
from __future__ import annotations

import numpy as np
import pytest

from kagglekit_nb.blend import BLEND, blend_weights, choose, common_rows
from kagglekit_nb.metrics import get_metric

ACC, LOGLOSS = get_metric("accuracy"), get_metric("log_loss")


def _onehot(labels, n=3, sharp=0.9):
    p = np.full((len(labels), n), (1 - sharp) / (n - 1))
    p[np.arange(len(labels)), labels] = sharp
    return p


def _fake(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    good = _onehot(np.where(rng.random(n) < 0.9, y, (y + 1) % 3))       # ~90% right
    weak = _onehot(np.where(rng.random(n) < 0.6, y, (y + 2) % 3), sharp=0.6)  # ~60% right
    prior = np.tile(np.bincount(y, minlength=3) / n, (n, 1))
    return y, prior, good, weak


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("metric", [ACC, LOGLOSS])
def test_the_chosen_candidate_is_never_worse_than_another_available_one(seed, metric):
    y, prior, good, weak = _fake(seed)
    for order in (("baseline", "classical", "deep"), ("baseline", "deep", "classical")):
        arrays = {"baseline": prior, "classical": good, "deep": weak}
        choice = choose({n: arrays[n] for n in order}, y, metric)
        assert choice.score is not None
        for name, score in choice.scores.items():
            if score is not None:
                assert not metric.better(score, choice.score), (name, score, choice.name, choice.score)
        assert choice.name != "baseline"


def test_a_bad_deep_model_loses_to_the_classical_one():
    y, prior, good, _ = _fake(1)
    bad = _onehot((y + 1) % 3)  # always wrong
    choice = choose({"baseline": prior, "classical": good, "deep": bad}, y, ACC)
    assert choice.name == "classical"
    assert choice.scores["deep"] == 0.0 and choice.scores["classical"] > 0.85
    np.testing.assert_array_equal(choice.mix({"classical": good, "deep": bad}), good)


def test_the_prior_wins_when_every_model_is_worse():
    y, prior, _, _ = _fake(2)
    choice = choose({"baseline": prior, "classical": _onehot((y + 1) % 3), "deep": None}, y, ACC)
    assert choice.name == "baseline" and "deep" not in choice.scores


def test_two_complementary_models_blend():
    # each model is right on a different half, confidently; where it is wrong it is unsure
    y = np.array([0, 1] * 100)
    a, b = np.full((200, 2), 0.5), np.full((200, 2), 0.5)
    a[:100] = _onehot(y[:100], 2, 0.95)
    b[100:] = _onehot(y[100:], 2, 0.95)
    a[100:] = _onehot(1 - y[100:], 2, 0.55)
    b[:100] = _onehot(1 - y[:100], 2, 0.55)
    weights, score = blend_weights([a, b], y, ACC)
    assert ACC(y, a) == ACC(y, b) == 0.5
    assert score == 1.0 and 0 < weights[1] < 1 and sum(weights) == pytest.approx(1.0)
    choice = choose({"baseline": np.full((200, 2), 0.5), "a": a, "b": b}, y, ACC)
    assert choice.name == BLEND and choice.score == 1.0
    assert choice.weights == pytest.approx({"a": weights[0], "b": weights[1]})
    np.testing.assert_allclose(choice.mix({"a": a, "b": b}), weights[0] * a + weights[1] * b)


def test_candidates_are_scored_on_the_rows_all_of_them_cover():
    y, prior, good, weak = _fake(3)
    partial = good.copy()
    partial[150:] = np.nan  # e.g. a deep model with only some folds trained
    choice = choose({"baseline": prior, "classical": weak, "deep": partial}, y, ACC)
    assert choice.rows == 150
    assert choice.scores["classical"] == pytest.approx(ACC(y[:150], weak[:150]))
    assert common_rows([prior, partial]).sum() == 150


def test_shapes_must_match():
    y, prior, good, _ = _fake(4)
    with pytest.raises(ValueError, match=r"shape \(300, 2\)"):
        choose({"baseline": prior, "x": good[:, :2]}, y, ACC)
    with pytest.raises(ValueError, match="no candidate"):
        choose({"baseline": None}, y, ACC)
