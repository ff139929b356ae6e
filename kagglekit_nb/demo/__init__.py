"""Demo competitions in the real on-disk layouts, so every notebook runs anywhere out of the box.

    make_demo("classification", out)        # scikit-learn's digits as a Kaggle image competition
    make_demo("glacier", out)               # HKH-style patches + GlacierHack tiles (synthetic)
    make_demo("isic", out)                  # ISIC 2024 metadata + HDF5 JPEGs (synthetic)
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["DEMO_KINDS", "make_demo", "make_classification_demo"]

# kind -> (module, function); modules load on first use (they need pandas, PIL, h5py, …).
_BUILDERS = {
    "classification": ("classification", "make_classification_demo"),
    "glacier": ("glacier", "make_glacier_demo"),
    "isic": ("isic", "make_isic_demo"),
}
DEMO_KINDS = tuple(k for k, (m, _) in _BUILDERS.items() if importlib.util.find_spec(f"{__name__}.{m}"))


def make_demo(kind: str, out: str | Path, **options: Any) -> Path:
    """Write the demo competition `kind` into `out`; returns its path."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown demo {kind!r}; choose one of {', '.join(DEMO_KINDS)}.")
    module, func = _BUILDERS[kind]
    return getattr(importlib.import_module(f".{module}", __name__), func)(out, **options)


def make_classification_demo(out: str | Path, **options: Any) -> Path:
    from .classification import make_classification_demo as make

    return make(out, **options)
