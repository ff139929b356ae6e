"""kagglekit_nb: helpers that make notebook runs survive time limits and end in a verified submission.

    import kagglekit_nb as kk

Importing needs only the standard library: every name that needs numpy, pandas or torch (the
training loop, the run, metrics, submission checks, folds, demos) loads on first use, so light
commands such as `kagglekit verify` and `kagglekit env` never import torch.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .budget import Budget, parse_duration, plan_epochs
from .env import detect_platform, find_competition_dir, run_dir
from .hardware import environment_report

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    from .demo import make_classification_demo  # noqa: F401
    from .folds import FoldRegistry, make_folds  # noqa: F401
    from .loaders import make_loader  # noqa: F401
    from .loop import evaluate, fit, predict  # noqa: F401
    from .metrics import get_metric  # noqa: F401
    from .repro import seed_everything  # noqa: F401
    from .run import Run, start_run  # noqa: F401
    from .submission import SubmissionError, baseline, finalize, repair  # noqa: F401
    from .verification import verify  # noqa: F401

__version__ = "0.1.0"

# Public name -> the submodule that defines it, imported on first use.
_LAZY = {
    "fit": "loop",
    "evaluate": "loop",
    "predict": "loop",
    "make_loader": "loaders",
    "get_metric": "metrics",
    "seed_everything": "repro",
    "Run": "run",
    "start_run": "run",
    "verify": "verification",
    "finalize": "submission",
    "baseline": "submission",
    "repair": "submission",
    "SubmissionError": "submission",
    "make_folds": "folds",
    "FoldRegistry": "folds",
    "make_classification_demo": "demo",
}

__all__ = [
    "Budget", "parse_duration", "plan_epochs",
    "detect_platform", "environment_report", "find_competition_dir", "run_dir",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Load a lazy public name, or a submodule (`kk.ui.form(...)`, `kk.plots.time_bar(run)`), on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kagglekit_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
