"""What the ISIC steps declare to the budget before they run (every number lives in `budget`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ... import budget
from ...run import Run
from .._config import sized_test_rows

if TYPE_CHECKING:
    from .pipeline import Config

EMBED_IMAGE = "embedding image"              # the pace of image embedding the budget measures (s/image)
HIDDEN_EMBEDDINGS = "test embeddings (TEST_ROWS)"  # the reserve for the hidden test images


def declare_reserves(run: Run, n_test: int, cfg: Config) -> int:
    """Keep back what every ISIC run ends with: the tabular features of the test rows prediction is
    sized for (TEST_ROWS when the rerun scores more than the `n_test` visible ones), the embeddings of
    the hidden test images, writing and verifying; book the time before the first timed step as
    "setup". Returns the test rows prediction is sized for."""
    run.budget.close_setup()
    run.budget.reserve_submission()
    rows = sized_test_rows(run, n_test, cfg.TEST_ROWS, "test lesions")
    run.budget.reserve("features", budget.FEATURE_ROW_S * rows)
    if cfg.IMAGE_PCA > 0:
        reserve_hidden_embeddings(run, rows - n_test, cfg.EMBED_SHARE)
    return rows


def reserve_hidden_embeddings(run: Run, hidden: int, share: float) -> float:
    """Keep back the embedding of `hidden` test images that only the rerun shows (TEST_ROWS beyond the
    visible rows), at the measured pace of embedding (nothing before it is measured), and at most
    `share` (EMBED_SHARE) of the session: the rerun gives its embeddings no more, and submits the
    tabular model when its test images do not all fit. Returns the seconds reserved."""
    if hidden <= 0:
        return 0.0
    seconds = run.budget.need(EMBED_IMAGE, hidden)
    if run.budget.limited:
        others = run.budget.reserve_s - run.budget.reserves.get(HIDDEN_EMBEDDINGS, 0.0)
        seconds = min(seconds, share * max(0.0, run.budget.total_s - others))
    run.budget.reserve(HIDDEN_EMBEDDINGS, seconds)
    return seconds
