"""What the ISIC steps declare to the budget before they run (every number lives in `budget`)."""
from __future__ import annotations

from ... import budget
from ...run import Run


def declare_reserves(run: Run, n_test: int) -> None:
    """Keep back what every ISIC run ends with: the test rows' tabular features, writing and verifying;
    and book the time before the first timed step as "setup"."""
    run.budget.close_setup()
    run.budget.reserve_submission()
    run.budget.reserve("features", budget.FEATURE_ROW_S * n_test)
