"""The time the ISIC steps book and keep back: setup before the first timed step, and the reserve for
the test features, writing and verifying."""
from __future__ import annotations

from ...run import Run

BASE_RESERVE_S = 10.0      # kept back for writing and verifying the submission


def _close_setup(run: Run) -> None:
    """Book the time before the first timed step (kernel start, imports, loading, folds) as "setup"."""
    if "setup" not in run.budget.phases:
        run.budget.add_phase("setup", run.budget.elapsed() - sum(run.budget.phases.values()))


def _base_reserve(n_test: int) -> float:
    """Time kept for the test features, writing and verifying: a margin plus ~0.1 ms per test row."""
    return BASE_RESERVE_S + 1e-4 * n_test


def _predict_reserve(per_row_s: float, n_test: int, n_fits: int) -> float:
    return _base_reserve(n_test) + 1.5 * per_row_s * n_test * n_fits
