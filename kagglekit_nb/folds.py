"""CV splits written once to `folds.csv` and reused by every later session; the fold registry.

Re-splitting on every run (or after a restart with another seed) leaks validation rows into the
training of earlier folds' models; the split is therefore saved on first use and only read after.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import write_atomic, write_json

__all__ = ["make_folds", "FoldRegistry"]

FOLDS_FILE = "folds.csv"
REGISTRY_FILE = "folds.json"


def make_folds(
    ids: pd.Series,
    labels: pd.Series | None,
    *,
    n_splits: int,
    seed: int,
    path: str | Path,
    groups: pd.Series | None = None,
) -> pd.Series:
    """Fold number per id (a Series indexed like `ids`), made once and saved to `path`.

    Stratified by `labels` when given, grouped by `groups` when given (StratifiedGroupKFold).
    An existing file is reused; it must hold exactly the same ids and number of folds.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"FOLDS={n_splits!r} must be an integer >= 2.")
    path = Path(path)
    key = ids.astype(str).to_numpy()
    if path.exists():
        saved = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
        if set(saved["id"]) != set(key) or saved["fold"].nunique() != n_splits:
            raise ValueError(
                f"{path} was made for other data ({len(saved)} ids, {saved['fold'].nunique()} folds; "
                f"now {len(key)} ids, FOLDS={n_splits}). Use a new OUTPUT_DIR, or delete {path.name} "
                "to re-split (models trained on the old split are then no longer valid)."
            )
        return pd.Series(saved.set_index("id").loc[key, "fold"].to_numpy(), index=ids.index, name="fold")

    if labels is not None:
        counts = labels.value_counts()
        if counts.min() < n_splits:
            raise ValueError(
                f"FOLDS={n_splits} is more than the {counts.min()} rows of the rarest class "
                f"{counts.idxmin()!r}: lower FOLDS to at most {counts.min()}."
            )
    x = np.zeros(len(key))
    if groups is not None and labels is not None:
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        split = splitter.split(x, labels, groups)
    elif groups is not None:
        split = GroupKFold(n_splits).split(x, groups=groups)
    elif labels is not None:
        split = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, labels)
    else:
        split = KFold(n_splits, shuffle=True, random_state=seed).split(x)
    fold = np.empty(len(key), dtype=int)
    for k, (_, val_idx) in enumerate(split):
        fold[val_idx] = k
    frame = pd.DataFrame({"id": key, "fold": fold})
    write_atomic(path, lambda fh: frame.to_csv(fh, index=False), newline="")
    return pd.Series(fold, index=ids.index, name="fold")


class FoldRegistry:
    """Which folds are done, with their scores and model files, kept in `folds.json`."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / REGISTRY_FILE
        self.folds: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.folds = json.loads(self.path.read_text())

    def is_done(self, fold: int) -> bool:
        return self.folds.get(str(fold), {}).get("status") == "done"

    def get(self, fold: int) -> dict[str, Any] | None:
        return self.folds.get(str(fold))

    def mark(self, fold: int, status: str, **info: Any) -> None:
        """Record a fold's status ('partial' or 'done') and details, written atomically."""
        if status not in ("partial", "done"):
            raise ValueError(f"status={status!r} must be 'partial' or 'done'.")
        self.folds[str(fold)] = {"status": status, **info}
        write_json(self.path, self.folds, default=float)

    def done(self) -> list[int]:
        return sorted(int(k) for k, v in self.folds.items() if v.get("status") == "done")
