"""Glacier step 1 (notebooks/glacier_pretrain.ipynb): pretrain a U-Net on HKH patches, hand its weights on.

    cfg     = Config.from_namespace(globals())
    run     = start(cfg)
    data    = load(cfg, run)                           # HKH *_img_NNN.npy + *_mask_NNN.npy, bands by name
    folds   = make_folds(data, cfg, run)               # grouped by scene, saved once (folds.csv)
    models  = train(data, folds, cfg, run)             # the kit's CV loop: budget, checkpoints, exact resume
    preds   = predict(data, models, cfg, run)          # no test set here: the weights to hand on, or None
    path    = write_submission(data, preds, cfg, run)  # glacier_pretrained.pth: weights, band names, stats
    report  = finish(data, path, cfg, run)             # loads safely and maps onto the GlacierHack bands
    figures = plot_results(run, data, models, folds)   # training curves, time per phase

The fine-tune (`finetune.py`) finds `glacier_pretrained.pth` and maps its first layer onto the
GlacierHack bands by physical band name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ...cv import CVResult, load_fold_model
from ...run import Run
from .._config import find_data, start
from .bands import HACK_BANDS, HKH_CHANNELS, find_hkh_patches, read_hkh_patch
from .data import MaskFiles, TileData, _class_shares, demo
from .model import build_unet, transfer_first_layer
from .training import (FINETUNE_CLASSES, PRETRAIN_CLASSES, SegConfig, members_worker, split_folds, train_members,
                       trained_models)
from .training import training_plots as _training_plots

__all__ = [
    "PRETRAINED_FILE",
    "Config",
    "finish",
    "load",
    "load_pretrained",
    "make_folds",
    "plot_results",
    "predict",
    "start",
    "train",
    "write_submission",
]

PRETRAINED_FILE = "glacier_pretrained.pth"
PRETRAINED_FORMAT = "kagglekit_nb.glacier_pretrained/1"


@dataclass
class Config(SegConfig):
    """The glacier_pretrain notebook's parameters (same names, same defaults as its `parameters` cell)."""

    TASK: ClassVar[str] = "glacier_pretrain"
    RUN_NAME: str = "glacier_pretrain"
    BANDS: str | None = None             # comma-separated physical band names; None = all 15 HKH channels
    TRAIN_FOLDS: int | None = 1          # pretraining needs one model: train fold 0 only
    MAX_PATCHES: int | None = 500        # patches used (in file order); None = all

    def check(self) -> None:
        super().check()
        self.at_least(1, "MAX_PATCHES")
        if self.BANDS is not None:
            _parse_bands(self.BANDS)


def _parse_bands(text: str) -> list[str]:
    bands = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in bands if b not in HKH_CHANNELS]
    if unknown or not bands:
        raise ValueError(f"BANDS={text!r}: {', '.join(unknown) or 'no band'} is not an HKH channel; choose from "
                         f"{', '.join(HKH_CHANNELS)}.")
    if len(set(bands)) != len(bands):
        raise ValueError(f"BANDS={text!r} repeats a band.")
    return bands


# -------------------------------------------------------------------------------------------- steps


def load(cfg: Config, run: Run) -> TileData:
    """The HKH patches (DATA_DIR, else found under /kaggle/input, else the demo), up to MAX_PATCHES."""
    root = find_data(cfg, run, required=["*_img_*.npy"], max_depth=4, demo=demo(cfg.DEMO_TILE_SIZE, "hkh"),
                     what="folder of HKH patches (*_img_NNN.npy + *_mask_NNN.npy)")
    pairs = find_hkh_patches(root)
    if cfg.MAX_PATCHES is not None and len(pairs) > cfg.MAX_PATCHES:
        run.log(f"using the first {cfg.MAX_PATCHES} of {len(pairs)} patches (MAX_PATCHES)")
        pairs = pairs[:cfg.MAX_PATCHES]
    bands = _parse_bands(cfg.BANDS) if cfg.BANDS else list(HKH_CHANNELS)
    read_hkh_patch(*pairs[0])  # checks the layout (15 channels, a two-channel mask) once
    labels = MaskFiles([mask for _, mask in pairs], _read_hkh_mask)  # read when used: memory stays flat
    names = [img.stem for img, _ in pairs]
    groups = [img.name.split("_img_")[0] for img, _ in pairs]  # patches of one scene overlap in space
    data = TileData(names=names, labels=labels, bands=bands, classes=PRETRAIN_CLASSES, groups=groups,
                    source=Path(root), patch_files=[p for p, _ in pairs],
                    channels=[HKH_CHANNELS.index(b) for b in bands])
    run.log(f"{len(data)} HKH patches in {len(set(groups))} scenes, bands {', '.join(bands)}; "
            f"pixel share by class: {_class_shares(data)}")
    return data


def _read_hkh_mask(path: Path) -> np.ndarray:
    mask = np.load(path, mmap_mode="r")
    classes = np.zeros(mask.shape[:2], np.uint8)
    classes[np.asarray(mask[..., 0]) > 0] = 1
    classes[np.asarray(mask[..., 1]) > 0] = 2
    return classes


def make_folds(data: TileData, cfg: Config, run: Run) -> pd.Series:
    """Fold per patch, made once (folds.csv): K folds grouped by scene (patches of a scene overlap)."""
    return split_folds(data, cfg, run)


def train(data: TileData, folds: pd.Series, cfg: Config, run: Run) -> CVResult:
    """Train the model (TRAIN_FOLDS members, usually one) inside the budget with the kit's CV loop."""
    # what follows is the write + verify reserve of every run: save the weights, load them back, map
    # them onto the five GlacierHack bands
    return train_members(data, folds, cfg, run, pretrained=None)


def train_worker(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One of several training processes (`python -m kagglekit_nb.worker`, started by `train`)."""
    return members_worker(spec, device, config=Config, load=load, make_folds=make_folds, load_pretrained=load_pretrained)


def predict(data: TileData, models: CVResult | None, cfg: Config, run: Run) -> dict[str, Any] | None:
    """The pretraining has no test set: its prediction is the model it hands on. Returns the first
    member's best epoch (else its last checkpoint) with its band names and statistics, the payload
    `write_submission` saves; None when nothing was trained. Read from the run folder, so `models`
    may be None."""
    found = trained_models(cfg, run)
    if not found:
        run.log("no pretrained model: nothing to export (the fine-tune will train from scratch)")
        return None
    k, path, which = found[0]
    weights, meta = load_fold_model(path)
    return {"format": PRETRAINED_FORMAT, "arch": meta["arch"], "encoder": meta["encoder"],
            "band_names": list(data.bands), "classes": list(data.classes), "stats": meta["stats"],
            "state_dict": weights, "fold": k, "which": which,
            "score": run.record.get("folds", {}).get(str(k), {}).get("score")}


def write_submission(data: TileData, preds: dict[str, Any] | None, cfg: Config, run: Run) -> Path | None:
    """Save the pretrained model (weights, band names, statistics) as `glacier_pretrained.pth`; None
    when `preds` is None (nothing trained)."""
    if preds is None:
        return None
    out = run.dir / PRETRAINED_FILE
    tmp = out.with_name(out.name + ".tmp")
    torch.save(preds, tmp)
    tmp.replace(out)
    run.log(f"pretrained weights ({preds['which']} of model {preds['fold']}, {len(data.bands)} bands) saved to {out}")
    run.record["pretrained_file"] = str(out)
    return out


def finish(data: TileData, path: Path | None, cfg: Config, run: Run) -> Any:
    """Check the pretrain output loads (weights only) and maps onto the GlacierHack bands; write
    verification.json and run.json."""
    from ..._atomic import write_json
    from ...submission import VERIFICATION_FILE, VerificationReport

    with run.budget.timed("verify"):
        report = VerificationReport(valid=True, kind="glacier_pretrained", submission=str(path or ""),
                                    sample="the GlacierHack bands " + ", ".join(HACK_BANDS.values()))
        if path is None:  # not broken, just nothing to hand on: the fine-tune then trains from scratch
            report.valid = False
            report.errors = ["no pretrained model: the budget left no time for one epoch; give BUDGET more time"]
            report.notes.append("outcome: nothing trained (the fine-tune will train from scratch)")
        else:
            payload = load_pretrained(path)
            bad = [k for k, v in payload["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                report.errors.append(f"non-finite weights in {', '.join(bad[:5])}")
            model = build_unet(payload["encoder"], in_channels=len(HACK_BANDS), n_classes=len(FINETUNE_CLASSES))
            transfer = transfer_first_layer(payload["state_dict"], payload["band_names"], model,
                                            list(HACK_BANDS.values()))
            report.stats.update(mapped=transfer.mapped, initialised=transfer.initialised,
                                copied=len(transfer.copied), size_mb=round(path.stat().st_size / 2**20, 1))
            report.notes.append(f"maps onto the GlacierHack bands: {transfer.mapped} by name, "
                                f"{transfer.initialised or 'none'} initialised")
            report.valid = not report.errors
        write_json(run.dir / VERIFICATION_FILE, report.to_dict())
    run.save()
    if path is None:
        run.log(f"WARNING: {report.errors[0]}")
        return report
    if not report.valid:
        raise RuntimeError(f"the pretrain output {path} is not usable: {'; '.join(report.errors)}")
    run.log(f"pretrain output {path} verified; report in {run.dir / VERIFICATION_FILE}")
    return report


def plot_results(run: Run, data: TileData | None = None, models: CVResult | None = None,
                 folds: pd.Series | None = None) -> dict[str, Path]:
    """The run's plots, saved in `<run>/plots` and shown in the notebook: the loss and validation MCC
    by epoch, and time per phase against the budget (read from the run folder: the other arguments
    may be None). A plot without data yet is skipped with a log line."""
    return _training_plots(run)


# ------------------------------------------------------------------------------------------- reading


def load_pretrained(path: str | Path, *, encoder: str | None = None) -> dict[str, Any]:
    """Read a pretrain output (the file, or a run folder holding it), safely (weights only)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / PRETRAINED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the glacier_pretrain notebook first, or attach its "
                                "output, or set PRETRAINED = 'none' to train from scratch.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != PRETRAINED_FORMAT:
        raise ValueError(f"{path} is not a glacier_pretrain output (format {PRETRAINED_FORMAT}).")
    if encoder is not None and payload["encoder"] != encoder:
        raise ValueError(f"{path} was pretrained with encoder {payload['encoder']!r} but ENCODER={encoder!r}: use "
                         "the same encoder, or PRETRAINED = 'none'.")
    payload["id"] = f"{path.name} ({payload['encoder']}, {len(payload['band_names'])} bands)"
    payload["path"] = str(path)
    return payload
