"""Choosing what to submit from out-of-fold predictions: each candidate's score, their blend, the best.

Every candidate is an (n_rows, n_classes) array of out-of-fold class probabilities over the same
training rows (NaN rows: the candidate has no out-of-fold prediction there). All candidates are
scored on the rows every one of them covers, so none wins by being scored on easier rows.

    weights, score = blend_weights([oof_deep, oof_classical], targets, metric)
    choice = choose({"baseline": prior, "classical": oof_a, "deep": oof_b}, targets, metric)
    choice.name, choice.scores     # "blend", {"baseline": 0.10, "classical": 0.97, ...}

`choose` never picks a candidate whose score is worse than another available one's; on a tie the
earlier (simpler) candidate wins.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import Metric

__all__ = ["BLEND", "Choice", "blend_weights", "choose", "common_rows"]

BLEND = "blend"        # the name `choose` gives the weighted blend of the non-baseline candidates
GRID_STEPS = 21        # weights 0, 0.05, ..., 1 for each pair: a coarse grid does not overfit the OOF


@dataclass
class Choice:
    """What `choose` picked: its name, every candidate's score, and the blend's weights (by name)."""

    name: str
    score: float | None
    scores: dict[str, float | None] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    rows: int = 0                     # training rows every candidate covers (where they were scored)

    def mix(self, predictions: Mapping[str, np.ndarray]) -> np.ndarray:
        """The chosen candidate's predictions (for the blend: the weighted sum) from `predictions`
        by candidate name, e.g. the test probabilities of each candidate."""
        if self.name != BLEND:
            return np.asarray(predictions[self.name], dtype=float)
        return sum(w * np.asarray(predictions[n], dtype=float) for n, w in self.weights.items())


def common_rows(oofs: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean mask of the rows where every array is finite."""
    mask = None
    for oof in oofs:
        finite = np.isfinite(np.asarray(oof, dtype=float)).all(axis=1)
        mask = finite if mask is None else mask & finite
    if mask is None:
        raise ValueError("no out-of-fold arrays given: pass at least one.")
    return mask


def _score(metric: Metric, targets: np.ndarray, probs: np.ndarray) -> float | None:
    try:
        value = metric(targets, probs)
    except (ValueError, ZeroDivisionError):  # e.g. AUC on rows holding a single class
        return None
    return value if np.isfinite(value) else None


def _check(oofs: Sequence[np.ndarray], targets: np.ndarray) -> list[np.ndarray]:
    arrays = [np.asarray(o, dtype=float) for o in oofs]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != arrays[0].shape or len(a) != len(targets):
            raise ValueError(f"out-of-fold array {i} has shape {a.shape}; every candidate needs shape "
                             f"({len(targets)}, n_classes) like the first, {arrays[0].shape}.")
    return arrays


def blend_weights(oofs: Sequence[np.ndarray], targets: np.ndarray, metric: Metric, *,
                  steps: int = GRID_STEPS) -> tuple[list[float], float | None]:
    """Weights (summing to 1) of the blend of `oofs` that scores best by `metric`, and its score.

    Two arrays: a grid over w in [0, 1] for w*a + (1-w)*b. More: greedily, each next array is
    blended into the blend so far by the same grid. Rows not covered by every array are ignored."""
    targets = np.asarray(targets)
    arrays = _check(oofs, targets)
    rows = common_rows(arrays)
    arrays, targets = [a[rows] for a in arrays], targets[rows]
    weights, mixed = [1.0], arrays[0]
    best = _score(metric, targets, mixed)
    for nxt in arrays[1:]:
        pick_w, pick_score = 0.0, _score(metric, targets, mixed)
        for w in np.linspace(0.0, 1.0, steps)[1:]:
            s = _score(metric, targets, (1 - w) * mixed + w * nxt)
            if s is not None and (pick_score is None or metric.better(s, pick_score)):
                pick_w, pick_score = float(w), s
        weights = [x * (1 - pick_w) for x in weights] + [pick_w]
        mixed = (1 - pick_w) * mixed + pick_w * nxt
        best = pick_score
    return weights, best


def choose(candidates: Mapping[str, np.ndarray | None], targets: np.ndarray, metric: Metric, *,
           blend: Sequence[str] | None = None) -> Choice:
    """The candidate with the best out-of-fold score by `metric`, among `candidates` (name -> OOF
    probabilities; None = not available) and the blend of the `blend` names (default: every
    candidate but the first, the baseline) when at least two of them are available.

    All are scored on the rows every available candidate covers. A candidate whose score cannot be
    computed is never chosen; if none can be scored the first available candidate is returned."""
    targets = np.asarray(targets)
    available = {n: np.asarray(o, dtype=float) for n, o in candidates.items() if o is not None}
    if not available:
        raise ValueError("choose: no candidate has out-of-fold predictions.")
    arrays = _check(list(available.values()), targets)
    rows = common_rows(arrays)
    scores: dict[str, float | None] = {n: (_score(metric, targets[rows], a[rows]) if rows.any() else None)
                                      for n, a in zip(available, arrays)}
    names = [n for n in (list(candidates)[1:] if blend is None else blend) if n in available]
    weights: dict[str, float] = {}
    if len(names) >= 2 and rows.any():
        w, s = blend_weights([available[n][rows] for n in names], targets[rows], metric)
        weights = {n: x for n, x in zip(names, w) if x > 0}
        if len(weights) >= 2:  # a blend giving all weight to one candidate is that candidate
            scores[BLEND] = s
    pick = None
    for n, s in scores.items():  # in order: a tie keeps the earlier, simpler candidate
        if s is not None and (pick is None or metric.better(s, scores[pick])):
            pick = n
    if pick is None:
        pick = next(iter(available))
    return Choice(name=pick, score=scores.get(pick), scores=scores,
                  weights=weights if pick == BLEND else {}, rows=int(rows.sum()))
