"""LightGBM on the ISIC features: tabular-only, image-only and combined models x seeds x folds,
inside the budget, each fit saved (booster + out-of-fold predictions) and reused by a later session
with the same inputs (`<run>/lgbm/<model>-<digest of its inputs>/`)."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...metrics import partial_auc
from ...run import Run
from ._time import declare_reserves
from .data import _balanced_rows, _save_npz
from .features import Features

if TYPE_CHECKING:
    from .pipeline import Config

__all__ = ["MODELS", "LGBMResult", "ModelResult", "oof_pauc", "train_lgbm"]

MODELS = ("tabular", "image", "combined")          # the three LightGBM models, in training order
LGBM_DIR = "lgbm"
SINGLE_THREAD_ROWS = 50_000  # LightGBM fits on fewer (down-sampled) rows run on one thread


@dataclass
class ModelResult:
    """One model's fits (seed, fold, booster file), its out-of-fold predictions and score."""

    name: str
    dir: Path
    n_folds: int
    fits: list[tuple[int, int, Path]] = field(default_factory=list)
    oof: np.ndarray | None = None          # probability, mean over seeds; NaN where no fit covers the row
    score: float | None = None             # OOF pAUC above 80% TPR (see `oof_pauc`)
    fold_scores: dict[int, float] = field(default_factory=dict)  # pAUC of each fold's own rows
    best_iterations: list[int] = field(default_factory=list)

    def files(self, seed: int, fold: int) -> tuple[Path, Path]:
        """(booster file, out-of-fold predictions file) of one fit."""
        return self.dir / f"seed{seed}_fold{fold}.txt", self.dir / f"seed{seed}_fold{fold}.npz"

    @property
    def seeds_done(self) -> int:
        """Seeds with a fit for every fold."""
        per_seed = Counter(s for s, _, _ in self.fits)
        return sum(1 for n in per_seed.values() if n == self.n_folds)


@dataclass
class LGBMResult:
    """The three models and why training ended."""

    models: dict[str, ModelResult]
    stop_reason: str = "completed"

    def scores(self) -> dict[str, float | None]:
        return {name: m.score for name, m in self.models.items()}

    def table(self) -> pd.DataFrame:
        rows = {name: {"oof_pauc": m.score,
                       "fold_pauc_mean": float(np.mean(list(m.fold_scores.values()))) if m.fold_scores else None,
                       "fits": len(m.fits), "seeds_done": m.seeds_done,
                       "oof_rows": int(np.isfinite(m.oof).sum()) if m.oof is not None else 0,
                       "median_rounds": float(np.median(m.best_iterations)) if m.best_iterations else None}
                for name, m in self.models.items()}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def _lgbm_params(cfg: Config) -> dict[str, Any]:
    return {"objective": "binary", "metric": "auc", "learning_rate": cfg.LEARNING_RATE,
            "num_leaves": cfg.NUM_LEAVES, "min_data_in_leaf": 10, "feature_fraction": 0.5,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1,
            "deterministic": True, "force_row_wise": True}


def _digest(X: pd.DataFrame, y: np.ndarray, fold_of: np.ndarray, settings: dict[str, Any]) -> str:
    """What a saved fit depends on: the features' names and values, labels, folds and settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(json.dumps(list(X.columns)).encode())
    h.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    h.update(np.ascontiguousarray(fold_of, np.int64).tobytes())
    return h.hexdigest()[:12]


def _budget_callback(run: Run) -> Callable[[Any], None]:
    """Stop boosting (keeping the rounds so far) once the budget's reserve is reached."""
    import lightgbm as lgb

    def callback(env: Any) -> None:
        if run.budget.stop_reason() is not None:
            raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list)

    callback.order = 40  # type: ignore[attr-defined]  # after early stopping's own check
    return callback


def _fit(X: pd.DataFrame, y: np.ndarray, fold_of: np.ndarray, k: int, seed: int, cfg: Config, run: Run,
         threads: int) -> tuple[Any, np.ndarray, np.ndarray, bool, float]:
    """One LightGBM model on the folds other than `k` (negatives down-sampled), early-stopped on fold `k`.

    Returns (booster, validation rows, their predictions, stopped by the budget, seconds per predicted row).
    """
    import lightgbm as lgb

    train_rows = np.flatnonzero(fold_of != k)
    val = np.flatnonzero(fold_of == k)
    rows = _balanced_rows(y, train_rows, cfg.NEG_PER_POS, np.random.default_rng([cfg.SEED, seed, k]))
    # OpenMP threads that wait for a busy core cost far more than they bring on a few thousand rows.
    threads = 1 if len(rows) < SINGLE_THREAD_ROWS else threads
    params = {**_lgbm_params(cfg), "seed": cfg.SEED + seed, "num_threads": threads}
    if cfg.NEG_PER_POS is None:
        params["scale_pos_weight"] = float((y[rows] == 0).sum() / max(1, (y[rows] == 1).sum()))
    dtrain = lgb.Dataset(X.iloc[rows], y[rows])
    dval = lgb.Dataset(X.iloc[val], y[val], reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.MAX_ROUNDS, valid_sets=[dval],
                        callbacks=[lgb.early_stopping(cfg.EARLY_STOPPING, verbose=False), _budget_callback(run)])
    stopped = run.budget.stop_reason() is not None
    t0 = time.perf_counter()
    pred = booster.predict(X.iloc[val], num_iteration=booster.best_iteration)
    per_row = (time.perf_counter() - t0) / max(1, len(val))
    return booster, val, pred, stopped, per_row


def _load_fit(model_path: Path, fit_path: Path) -> dict[str, Any] | None:
    """A finished fit saved by an earlier session (its booster file and predictions), else None."""
    if not (model_path.exists() and fit_path.exists()):
        return None
    try:
        with np.load(fit_path, allow_pickle=False) as data:
            if not bool(data["complete"]):
                return None
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _fit_and_save(res: ModelResult, X: pd.DataFrame, y: np.ndarray, fold_of: np.ndarray, k: int, seed: int,
                  cfg: Config, run: Run) -> tuple[dict[str, Any], bool, float]:
    """Fit one model, save its booster and out-of-fold predictions (each file atomically).

    Returns (the saved record, whether the budget cut the fit short, seconds per predicted row)."""
    from ...hardware import cpu_count

    booster, val, pred, stopped, per_row = _fit(X, y, fold_of, k, seed, cfg, run, cpu_count())
    model_path, fit_path = res.files(seed, k)
    tmp = model_path.with_name(model_path.name + ".tmp")
    booster.save_model(str(tmp), num_iteration=booster.best_iteration)
    os.replace(tmp, model_path)
    # Saved last: its presence marks the fit done. A fit cut short is used now and redone next session.
    _save_npz(fit_path, rows=val, pred=pred, best_iteration=booster.best_iteration, complete=not stopped)
    return {"rows": val, "pred": pred, "best_iteration": booster.best_iteration}, stopped, per_row


def train_lgbm(feats: Features, folds: pd.Series, cfg: Config, run: Run) -> LGBMResult:
    """LightGBM for each model (tabular-only, image-only, combined) x LGBM_SEEDS x folds, inside the budget.

    Seed by seed (every model's folds of seed 0 first), each fit early-stopped on its validation fold;
    fits saved by an earlier session with the same inputs are reused. Stops when the next fit would
    eat into the reserve kept for predict + verify. The OOF pAUC of each model (its predictions averaged
    over the seeds done) goes to `run.json` as `oof_pauc`.
    """
    test_rows = declare_reserves(run, len(feats.test), cfg)
    fold_of, y = folds.to_numpy(), feats.y
    settings = {**_lgbm_params(cfg), "neg_per_pos": cfg.NEG_PER_POS, "max_rounds": cfg.MAX_ROUNDS,
                "early_stopping": cfg.EARLY_STOPPING, "seed": cfg.SEED}
    results = {}
    for name, cols in feats.columns.items():
        directory = run.dir / LGBM_DIR / f"{name}-{_digest(feats.train[cols], y, fold_of, settings)}"
        directory.mkdir(parents=True, exist_ok=True)
        results[name] = ModelResult(name=name, dir=directory, n_folds=cfg.FOLDS)
    sums = {name: np.zeros(len(y)) for name in results}
    counts = {name: np.zeros(len(y)) for name in results}
    per_row, reused, stop_reason = 0.0, 0, "completed"
    with run.budget.timed("train"):
        for seed, name, k in itertools.product(range(cfg.LGBM_SEEDS), results, range(cfg.FOLDS)):
            res = results[name]
            saved = _load_fit(*res.files(seed, k))
            if saved is not None:
                reused += 1
            else:
                # the next fit takes what this model's last one took (another model's before its first)
                need = run.budget.need(f"lgbm fit {name}") or max(run.budget.need(f"lgbm fit {n}") for n in results)
                if (reason := run.budget.stop_reason(need)) is not None:
                    stop_reason = f"{reason}: the next fit would not fit"
                    break
                t0 = run.budget.clock()
                saved, stopped, row_s = _fit_and_save(res, feats.train[feats.columns[name]], y, fold_of, k, seed,
                                                      cfg, run)
                run.budget.observe(f"lgbm fit {name}", run.budget.clock() - t0)
                per_row = max(per_row, row_s)
                if stopped:
                    stop_reason = "budget: a fit was cut short to keep time for predict + verify"
            res.fits.append((seed, k, res.files(seed, k)[0]))
            res.best_iterations.append(int(saved["best_iteration"]))
            sums[name][saved["rows"]] += saved["pred"]
            counts[name][saved["rows"]] += 1
            n_fits = max(len(r.fits) for r in results.values())
            run.budget.reserve_predict(items=test_rows * n_fits, item_s=per_row)
            if stop_reason != "completed":
                break
    for name, res in results.items():
        covered = counts[name] > 0
        res.oof = np.where(covered, sums[name] / np.maximum(counts[name], 1), np.nan)
        res.score = oof_pauc(y, res.oof, fold_of)
        res.fold_scores = {k: partial_auc(y[rows], res.oof[rows]) for k in range(cfg.FOLDS)
                           if len(set(y[(rows := covered & (fold_of == k))])) == 2}
    out = LGBMResult(models=results, stop_reason=stop_reason)
    _report(out, reused, run)
    return out


def _report(out: LGBMResult, reused: int, run: Run) -> None:
    table = out.table()
    run.log("LightGBM, out-of-fold pAUC above 80% TPR (max 0.2):\n" + table.to_string(float_format="%.4f"))
    if reused:
        run.log(f"{reused} fit(s) reused from {run.dir / LGBM_DIR} (same features, folds and settings)")
    if out.stop_reason != "completed":
        run.log(f"LightGBM stopped early ({out.stop_reason}); the fits that exist are used")
    run.record["oof_pauc"] = {name: out.scores().get(name) for name in MODELS}  # None: not trained (no features)
    run.record["folds_done"] = sorted(set.intersection(*({k for _, k, _ in m.fits} for m in out.models.values())))
    run.record["lgbm_fits_reused"] = reused
    run.record["lgbm"] = {name: {"fits": len(m.fits), "seeds_done": m.seeds_done, "fold_pauc": m.fold_scores,
                                 "oof_rows": int(table.loc[name, "oof_rows"]), "dir": str(m.dir),
                                 "best_iterations": m.best_iterations} for name, m in out.models.items()}
    run.record["lgbm_stop_reason"] = out.stop_reason
    run.save()


def oof_pauc(y: np.ndarray, oof: np.ndarray, fold_of: np.ndarray) -> float | None:
    """pAUC above 80% TPR of out-of-fold predictions, each fold's turned into percentiles first.

    Every fold has its own models, stopped at their own round on their own down-sampled rows, so
    their probabilities are on different scales: pooled as they are, a fold whose model stopped early
    (all its scores near the base rate) scrambles the ranking and the score says more about
    calibration than about ranking. The test submission is one average of all models, where only the
    order within one set of predictions matters, which is what the percentiles keep. Rows without a
    prediction (NaN) are left out; None when the rest lack a positive or a negative.
    """
    covered = ~np.isnan(oof)
    if len(set(np.asarray(y)[covered].tolist())) != 2:
        return None
    pct = pd.Series(np.where(covered, oof, np.nan)).groupby(np.asarray(fold_of)).rank(pct=True).to_numpy()
    return partial_auc(np.asarray(y)[covered], pct[covered])
