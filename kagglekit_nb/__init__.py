"""kagglekit_nb: helpers that make notebook runs survive time limits and end in a verified submission.

    import kagglekit_nb as kk

Importing needs only the standard library, numpy and torch; names that need pandas
(submission, folds, demo) load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .budget import Budget, parse_duration, plan_epochs
from .env import detect_platform, environment_report, find_competition_dir, run_dir
from .loaders import make_loader
from .loop import evaluate, fit, predict
from .metrics import get_metric
from .repro import seed_everything
from .run import Run, start_run

__version__ = "0.1.0"

_LAZY = {
    "verify": "submission",
    "finalize": "submission",
    "baseline": "submission",
    "repair": "submission",
    "SubmissionError": "submission",
    "make_folds": "folds",
    "FoldRegistry": "folds",
    "make_classification_demo": "demo",
}
# Submodules loaded on first use (`kk.ui.form(...)`, `kk.plots.time_bar(run)`): matplotlib and
# ipywidgets are imported inside their functions, only when needed.
_LAZY_MODULES = ("ui", "plots")

__all__ = [
    "Budget", "parse_duration", "plan_epochs",
    "detect_platform", "environment_report", "find_competition_dir", "run_dir",
    "fit", "evaluate", "predict", "make_loader",
    "get_metric", "seed_everything", "Run", "start_run",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kagglekit_nb' has no attribute {name!r}")
