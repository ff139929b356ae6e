"""Glacier step 2 (notebooks/glacier_finetune.ipynb): fine-tune on GlacierHack tiles, export the code package.

    cfg     = Config.from_namespace(globals())
    run     = start(cfg)
    data    = load(cfg, run)                           # Train/Band1..Band5 + labels
    folds   = make_folds(data, cfg, run)               # K folds over tiles; HOLDOUT tiles never trained on
    models  = train(data, folds, cfg, run)             # finds the pretrain's weights (or from scratch, said aloud)
    preds   = predict(data, models, cfg, run)          # the ensemble the package holds (weights + statistics)
    path    = write_submission(data, preds, cfg, run)  # the code package: solution.py + model.pth
    report  = finish(data, path, cfg, run)             # run in a fresh process on the holdout, MCC vs NDSI
    figures = plot_results(run, data, models, folds)   # curves, time, held-out tiles and their masks

The submission is run by the graders, not by this notebook, so `predict` gathers what the package's
`solution.py` will predict with, and `finish` runs that package as they would.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ... import budget
from ...cv import CVResult, load_fold_model
from ...run import Run
from .._config import find_data, start
from .bands import HACK_BANDS, BandStats, find_band_dirs, list_tiles, read_label, read_tile
from .data import TileData, _class_shares, demo
from .metrics import StreamingConfusion, ndsi_baseline
from .pretrain import PRETRAINED_FILE, load_pretrained
from .training import (FINETUNE_CLASSES, HOLDOUT_FOLD, SegConfig, members_worker, split_folds, train_members,
                       trained_models)
from .training import training_plots as _training_plots

__all__ = [
    "HOLDOUT_FOLD",
    "PACKAGE_DIR",
    "TTA_CHOICES",
    "Config",
    "Ensemble",
    "find_pretrained",
    "finish",
    "load",
    "make_folds",
    "ndsi_score",
    "plot_results",
    "predict",
    "start",
    "train",
    "write_submission",
]

PACKAGE_DIR = "package"              # solution.py + model.pth, inside the run folder
HOLDOUT_DIR = "holdout"              # the held-out tiles, laid out like Train/, for the package check
TRAIN_SPLIT = "Train"                # the labelled split's folder in the GlacierHack layout
TTA_CHOICES = {"none": ("none",), "flips": ("none", "hflip", "vflip"),
               "d4": ("none", "hflip", "vflip", "rot90", "rot180", "rot270")}


@dataclass
class Config(SegConfig):
    """The glacier_finetune notebook's parameters (same names, same defaults as its `parameters` cell)."""

    TASK: ClassVar[str] = "glacier_finetune"
    RUN_NAME: str = "glacier_finetune"
    PRETRAINED: str | None = None        # pretrain output (file or run folder); None = search; "none" = scratch
    HOLDOUT: int = 3                     # labelled tiles never trained on, to verify the package's MCC
    TTA: str = "flips"                   # none, flips or d4 (flips and 90-degree rotations)
    WINDOW: int = 512                    # sliding-window side at inference
    OVERLAP: int = 64                    # sliding-window overlap

    def check(self) -> None:
        super().check()
        self.at_least(0, "HOLDOUT", "OVERLAP")
        self.at_least(32, "WINDOW")
        if self.TTA not in TTA_CHOICES:
            raise ValueError(f"TTA={self.TTA!r} is not valid; choose one of {', '.join(TTA_CHOICES)}.")
        if self.WINDOW % 32:
            raise ValueError(f"WINDOW={self.WINDOW} must be a multiple of 32 (the U-Net halves it five times).")
        if self.OVERLAP >= self.WINDOW:
            raise ValueError(f"OVERLAP={self.OVERLAP} must be smaller than WINDOW={self.WINDOW}.")


@dataclass
class Ensemble:
    """What the code package holds: each trained member's weights with its own training-fold band
    statistics (empty lists: nothing trained, the package applies the NDSI rule)."""

    members: list[str] = field(default_factory=list)            # "fold (best|last)"
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- steps


def load(cfg: Config, run: Run) -> TileData:
    """GlacierHack tiles with labels: `<DATA_DIR>/Train/Band1..Band5 + labels` (or DATA_DIR itself)."""
    split = TRAIN_SPLIT
    root = find_data(cfg, run, required=[f"{split}/Band1"], max_depth=4, demo=demo(cfg.DEMO_TILE_SIZE, "glacierhack"),
                     what="GlacierHack folder (Train/Band1..Band5, Train/labels)")
    _early_ndsi_package(run)
    folder = root / split if (root / split).is_dir() else root
    dirs = find_band_dirs(folder, require_labels=True)
    names = list_tiles(dirs)
    band_dirs = {b: dirs[b] for b in HACK_BANDS}
    images = [read_tile(band_dirs, n) for n in names]
    labels = [read_label(dirs["labels"] / n) for n in names]
    for n, x, y in zip(names, images, labels):
        if x.shape[1:] != y.shape:
            raise ValueError(f"tile {n}: bands are {x.shape[1:]} but its label is {y.shape}; they must match.")
    data = TileData(names=names, labels=labels, bands=list(HACK_BANDS.values()), classes=FINETUNE_CLASSES,
                    groups=list(names), source=folder, images=images, band_dirs=dict(dirs))
    nan = sum(int(np.isnan(x).sum()) for x in images)
    run.log(f"{len(data)} labelled tiles in {folder} ({images[0].shape[2]}x{images[0].shape[1]} px, bands "
            f"{', '.join(f'{k} {v}' for k, v in HACK_BANDS.items())}); pixel share by class: {_class_shares(data)}"
            + (f"; {nan} NaN pixels (set to the band mean after normalisation)" if nan else ""))
    return data


def make_folds(data: TileData, cfg: Config, run: Run) -> pd.Series:
    """Fold per tile, made once (folds.csv): HOLDOUT tiles set aside first (fold -1, never trained on,
    chosen so that every class is still in training), then K folds over the rest."""
    return split_folds(data, cfg, run, cfg.HOLDOUT)


def train(data: TileData, folds: pd.Series, cfg: Config, run: Run) -> CVResult:
    """Find the pretrained weights (`find_pretrained`), then train every unfinished ensemble member
    (fold x seed) inside the budget; the time kept back is the ensemble's prediction of the held-out
    tiles (measured pace x TTA views) and the package check in a fresh process.

    There is no TEST_ROWS here: the hidden tiles are predicted by the graders running the package,
    not in this session, so their number takes no time of this budget."""
    pretrained = find_pretrained(cfg, run)
    n_after = max(1, int((folds == HOLDOUT_FOLD).sum()))
    run.budget.reserve("package", budget.PACKAGE_S)
    return train_members(data, folds, cfg, run, pretrained=pretrained,
                         predict_items=n_after * cfg.n_models * len(TTA_CHOICES[cfg.TTA]))


def train_worker(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One of several training processes (`python -m kagglekit_nb.worker`, started by `train`)."""
    return members_worker(spec, device, config=Config, load=load, make_folds=make_folds, load_pretrained=load_pretrained)


def predict(data: TileData, models: CVResult | None, cfg: Config, run: Run) -> Ensemble:
    """Every trained ensemble member (best epoch, else the last checkpoint) with its statistics: what
    `solution.py` predicts with. Read from the run folder, so `models` may be None."""
    ensemble = Ensemble()
    for k, path, which in trained_models(cfg, run):
        weights, meta = load_fold_model(path)
        ensemble.members.append(f"{k} ({which})")
        ensemble.states.append(weights)
        ensemble.stats.append(meta["stats"])
    if not ensemble.states:
        run.log("no trained model: exporting the NDSI-threshold package instead")
    return ensemble


def write_submission(data: TileData, preds: Ensemble, cfg: Config, run: Run) -> Path:
    """Write the code-package submission (`solution.py` + `model.pth`) in `<run>/package` from the
    ensemble; without members, the NDSI-rule package."""
    from .package import export_code_package

    with run.budget.timed("export"):
        out = export_code_package(
            run.dir / PACKAGE_DIR, preds.states, encoder=cfg.ENCODER, band_folders=list(HACK_BANDS),
            band_names=list(data.bands), stats=preds.stats if preds.stats else BandStats.fit(
                (data.read(i) for i in range(len(data))), data.bands).to_dict(),
            window=cfg.WINDOW, overlap=cfg.OVERLAP, tta=TTA_CHOICES[cfg.TTA], n_classes=len(data.classes),
            log=run.log)
    run.record["package"] = {"dir": str(out), "models": list(preds.members), "tta": cfg.TTA}
    return out


def finish(data: TileData, path: Path, cfg: Config, run: Run) -> Any:
    """Run solution.py in a fresh process on the held-out tiles (from the saved folds.csv), check
    every mask, report MCC next to the NDSI baseline on the same tiles; an invalid package is
    replaced by the NDSI package and the cell fails with the reasons, and a valid one that does not
    beat NDSI on the held-out tiles is replaced by the NDSI package too (`submitted` in run.json)."""
    from ...submission import finalize
    from . import package as _package  # noqa: F401  (registers the package verifier and its NDSI baseline)

    folds = make_folds(data, cfg, run)  # the split made before training, read back
    holdout = [i for i, f in enumerate(folds) if f == HOLDOUT_FOLD]
    check_dir = _holdout_dir(data, folds, run)
    scores: dict[str, Any] = {"cv_mcc": run.record.get("cv_score")}
    if check_dir is None:  # no labelled holdout: check the outputs on training tiles (MCC not honest)
        check_dir = data.source
        run.log("HOLDOUT = 0: the package is checked on the training tiles; its MCC there is optimistic")
    else:
        scores["ndsi_mcc_holdout"] = ndsi_score(data, holdout)
    run.record["scores"] = scores
    try:
        with run.budget.timed("verify"):
            report = finalize(path, check_dir, run.dir, kind="glacier_code_package")
        mcc = report.stats.get("mcc")
        scores["package_mcc_holdout" if holdout else "package_mcc_train"] = mcc
    finally:
        run.save()
    where = "the held-out tiles" if holdout else "training tiles"
    versus = f" (NDSI baseline {scores['ndsi_mcc_holdout']:.4f})" if holdout else ""
    run.log(f"package {path} is valid; MCC {'n/a' if mcc is None else f'{mcc:.4f}'} on {where}{versus}")
    models = (run.record.get("package") or {}).get("models")
    # compared at 6 decimals: the package and `ndsi_score` count the same pixels in a different order
    if holdout and models and (mcc is None or round(mcc, 6) <= round(scores["ndsi_mcc_holdout"], 6)):
        from .package import write_ndsi_package

        shutil.rmtree(path)
        write_ndsi_package(path)
        run.record["package"] = {**run.record["package"], "models": [], "replaced_by_ndsi": True}
        run.record["submitted"] = "ndsi"
        run.log(f"the trained package does not beat the NDSI rule on the held-out tiles (MCC "
                f"{'n/a' if mcc is None else f'{mcc:.4f}'} vs {scores['ndsi_mcc_holdout']:.4f}): {path} now holds "
                "the NDSI package")
        with run.budget.timed("verify"):
            report = finalize(path, check_dir, run.dir, kind="glacier_code_package")
        run.save()
    elif holdout:
        run.record["submitted"] = "model" if models else "ndsi"
        run.save()
    return report


def plot_results(run: Run, data: TileData | None = None, models: CVResult | None = None,
                 folds: pd.Series | None = None) -> dict[str, Path]:
    """The run's plots, saved in `<run>/plots` and shown in the notebook: training curves, time per
    phase against the budget, and (fine-tune) the held-out tiles next to their true masks and the masks
    the package wrote for them. A plot without data yet is skipped with a log line."""
    from ... import plots
    from .package import MASKS_SUFFIX

    out = _training_plots(run)
    if data is None or folds is None:
        return out
    masks = run.dir / (PACKAGE_DIR + MASKS_SUFFIX)
    shown = [i for i, f in enumerate(folds) if f == HOLDOUT_FOLD and (masks / data.names[i]).is_file()]
    if shown:
        out["overlays"] = plots.overlays([data.read(i) for i in shown], [data.labels[i] for i in shown],
                                         [read_label(masks / data.names[i]) for i in shown], run,
                                         names=[data.names[i] for i in shown])
    else:
        run.log(f"no overlays: {masks} holds no masks of held-out tiles (HOLDOUT = 0, or the check did not run)")
    return out


# ------------------------------------------------------------------------------------------ helpers


def find_pretrained(cfg: Config, run: Run) -> dict[str, Any] | None:
    """PRETRAINED when given; else the first `glacier_pretrained.pth` under /kaggle/input, next to the
    output folder, or in ./runs; None means training from scratch (said in the log)."""
    from ... import env

    if cfg.PRETRAINED is not None and cfg.PRETRAINED.strip().lower() in ("none", "scratch", ""):
        run.log("PRETRAINED = 'none': training from scratch")
        return None
    if cfg.PRETRAINED is not None:
        return load_pretrained(cfg.PRETRAINED, encoder=cfg.ENCODER)
    candidates: list[Path] = []
    if env.KAGGLE_INPUT.is_dir():
        candidates += sorted(env.KAGGLE_INPUT.glob(f"*/**/{PRETRAINED_FILE}"))
    candidates += [run.dir.parent / "glacier_pretrain" / PRETRAINED_FILE,
                   env.working_dir(run.platform) / "runs" / "glacier_pretrain" / PRETRAINED_FILE]
    for path in candidates:
        if path.is_file():
            payload = load_pretrained(path)
            if payload["encoder"] != cfg.ENCODER:
                run.log(f"found {path} but it was pretrained with {payload['encoder']}, not {cfg.ENCODER}: not used")
                continue
            run.log(f"pretrained weights found: {path}")
            return payload
    run.log("no pretrained weights found (run glacier_pretrain, or attach its output): training from scratch")
    return None


def _early_ndsi_package(run: Run) -> None:
    """The NDSI package (the emergency baseline) in `<run>/package` before any tile is read, unless
    an earlier session left a package there; `finish` keeps a trained one only when it beats NDSI."""
    from .package import write_ndsi_package

    path = run.dir / PACKAGE_DIR
    if not path.exists():
        run.log(f"{path}: {write_ndsi_package(path)} (the emergency baseline; a trained package that "
                "beats it on the held-out tiles replaces it)")


def _holdout_dir(data: TileData, folds: pd.Series, run: Run) -> Path | None:
    """The held-out tiles copied into `<run>/holdout/Band1..Band5 + labels`, the layout solution.py reads."""
    names = [n for n, f in zip(data.names, folds) if f == HOLDOUT_FOLD]
    if not names or data.band_dirs is None:
        return None
    out = run.dir / HOLDOUT_DIR
    for folder, src in data.band_dirs.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for n in names:
            if not (out / folder / n).exists():
                shutil.copyfile(src / n, out / folder / n)
    return out


def ndsi_score(data: TileData, tiles: Sequence[int]) -> float:
    """MCC of the NDSI-threshold baseline on `tiles` (the number a trained model must beat)."""
    cm = StreamingConfusion(len(data.classes))
    for i in tiles:
        cm.update(ndsi_baseline(data.read(i), data.bands), data.labels[i])
    return cm.mcc()
