"""What the glacier pretrain and fine-tune share: the parameters both notebooks have, the split into
folds, and training an ensemble (folds x seeds) with the kit's CV loop.

Statistics are fitted on each fold's training tiles only and saved with that fold's model. Training
crops are drawn with class-balanced centres, per item from (seed, epoch, index), so a resumed fold
sees exactly the crops the uninterrupted one would have seen.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ... import distributed
from ... import folds as _folds
from ...cv import CVResult, FoldSetup, fold_models, train_folds, train_in_workers, worker_result, worker_spec
from ...loaders import make_loader
from ...loop import one_cycle
from ...run import Run
from .._config import RunConfig, weights_for
from .._config import training_plots as training_plots
from .bands import CLASS_NAMES, BandStats
from .data import CropDataset, TileData, TileDataset
from .metrics import PIXEL_MCC
from .model import SegLoss, build_unet, load_encoder_weights, transfer_first_layer

__all__ = ["FINETUNE_CLASSES", "HOLDOUT_FOLD", "PRETRAIN_CLASSES", "SegConfig", "encoder_weights_name", "members_worker",
           "split_folds", "train_members", "trained_models", "training_plots"]

HOLDOUT_FOLD = -1                    # folds.csv value of a held-out tile
PRETRAIN_CLASSES = CLASS_NAMES[:3]   # HKH masks have clean ice and debris, no lakes
FINETUNE_CLASSES = CLASS_NAMES
MAX_VAL_PATCHES = 64                 # pretraining validates on at most this many patches of its fold
# Band statistics come from at most this many training tiles, drawn at random (fixed by SEED and the
# member, so a resumed member gets the same ones): 256 HKH patches hold 67 million pixels a band, and
# reading all ~11,000 training patches of the HKH set at 512 px would read 170 GB for a few numbers.
STATS_TILES = 256


@dataclass
class SegConfig(RunConfig):
    """Parameters shared by both glacier notebooks (same names and defaults as their parameters cells)."""

    TASK: ClassVar[str] = "glacier"      # the name the training workers know the notebook by (`worker.TASKS`)
    RUN_NAME: str = "glacier"
    ENCODER: str = "resnet34"            # any segmentation_models_pytorch encoder
    WEIGHTS: str | None = "auto"         # encoder's ImageNet weights: "auto" (attached, else the hub when online, else random), None, or a file
    DEMO_TILE_SIZE: int = 64             # tile side of the generated demo (the real data is 512)
    CROP: int = 256                      # training crop side (smaller tiles: the tile side)
    SAMPLES_PER_EPOCH: int = 256         # training crops per epoch
    BALANCE: float = 0.5                 # crop centres by class frequency^-BALANCE (0 uniform, 1 balanced)
    BATCH_SIZE: int = 8
    EPOCHS: int = 30
    MIN_EPOCHS: int = 8
    LR: float = 1e-3
    WEIGHT_DECAY: float = 1e-4
    FOCAL: float = 1.0                   # weight of smp's focal loss
    DICE: float = 1.0                    # weight of smp's dice loss
    BOUNDARY: float = 0.5                # weight of the boundary loss once ramped in
    BOUNDARY_RAMP: int = 5               # epochs over which the boundary term grows from 0
    FOLDS: int = 5
    TRAIN_FOLDS: int | None = None
    SEEDS: int = 1                       # models per fold, each with its own seed
    PATIENCE: int | None = None
    CHECKPOINT_EVERY: str = "3m"
    FOLDS_PER_SESSION: int | None = None
    NUM_WORKERS: int | None = None
    DEVICES: int | str | None = None     # training processes: None = every visible GPU (one GPU or none: one process); 1; 2; "cpu:2"
    SYNC_BN: bool = False                # several GPUs: BatchNorm statistics over the whole batch (small batches per GPU)
    DEVICE: str | None = None

    def check(self) -> None:
        self.at_least(1, "EPOCHS", "MIN_EPOCHS", "BATCH_SIZE", "SAMPLES_PER_EPOCH", "SEEDS", "BOUNDARY_RAMP")
        distributed.check_config(self.DEVICES, self.DEVICE, self.BATCH_SIZE)
        self.at_least(2, "FOLDS")
        self.at_least(32, "CROP", "DEMO_TILE_SIZE")
        self.at_least(0, "FOCAL", "DICE", "BOUNDARY")
        if self.TRAIN_FOLDS is not None and not 1 <= self.TRAIN_FOLDS <= self.FOLDS:
            raise ValueError(f"TRAIN_FOLDS={self.TRAIN_FOLDS!r} must be None or between 1 and FOLDS={self.FOLDS}.")
        if not self.LR > 0:
            raise ValueError(f"LR={self.LR!r} must be positive.")
        if not 0.0 <= self.BALANCE <= 1.0:
            raise ValueError(f"BALANCE={self.BALANCE!r} must be between 0 (uniform crops) and 1 (class-balanced).")
        if self.FOCAL + self.DICE + self.BOUNDARY <= 0:
            raise ValueError("FOCAL, DICE and BOUNDARY are all 0: give at least one loss term a positive weight.")

    @property
    def n_folds(self) -> int:
        """Folds that are trained (TRAIN_FOLDS or FOLDS)."""
        return self.TRAIN_FOLDS or self.FOLDS

    @property
    def n_models(self) -> int:
        """Models in the ensemble: trained folds x seeds (model v: fold v % n_folds, seed v // n_folds)."""
        return self.n_folds * self.SEEDS


def split_folds(data: TileData, cfg: SegConfig, run: Run, holdout: int = 0) -> pd.Series:
    """Fold per tile, made once (folds.csv): first `holdout` tiles set aside (fold -1), chosen so that
    every class is still in training, then K folds of the rest grouped by scene."""
    path = run.dir / _folds.FOLDS_FILE
    ids = pd.Series(data.names, name="id")
    if path.exists():
        saved = pd.read_csv(path, dtype={"id": str})
        if sorted(saved["id"]) == sorted(data.names) and saved["fold"].max() + 1 == cfg.FOLDS \
                and int((saved["fold"] == HOLDOUT_FOLD).sum()) == holdout:
            return pd.Series(saved.set_index("id").loc[data.names, "fold"].to_numpy(), index=ids.index, name="fold")
        raise ValueError(f"{path} holds another split (other tiles, FOLDS or HOLDOUT): use a new OUTPUT_DIR "
                         "(or RUN_NAME), or delete folds.csv and the checkpoints with it.")
    fold = np.zeros(len(data), np.int64)
    keep = np.ones(len(data), bool)
    if holdout:
        if holdout > len(data) - cfg.FOLDS:
            raise ValueError(f"HOLDOUT={holdout} leaves {len(data) - holdout} tiles for {cfg.FOLDS} folds; "
                             "lower HOLDOUT or FOLDS.")
        rng = np.random.default_rng(cfg.SEED)
        per_tile = [set(np.unique(lab).tolist()) for lab in data.labels]
        everywhere = set().union(*per_tile)
        for _ in range(100):
            pick = rng.choice(len(data), holdout, replace=False)
            if set().union(*(per_tile[i] for i in np.setdiff1d(np.arange(len(data)), pick))) == everywhere:
                break
        else:
            run.log(f"WARNING: no choice of {holdout} held-out tiles leaves every class in training; a class "
                    "may be missing from training (lower HOLDOUT)")
        keep[pick] = False
        fold[pick] = HOLDOUT_FOLD
    rest_ids = ids[keep].reset_index(drop=True)
    groups = pd.Series(np.asarray(data.groups)[keep])
    if groups.nunique() == len(groups):
        groups = None  # one tile per group: plain K-fold
    elif groups.nunique() < cfg.FOLDS:
        run.log(f"WARNING: only {groups.nunique()} scenes for FOLDS={cfg.FOLDS}: folds split patches without "
                "regard to their scene, so overlapping patches may sit on both sides (validation scores flatter)")
        groups = None
    tmp = run.dir / "folds.tmp.csv"
    split = _folds.make_folds(rest_ids, None, n_splits=cfg.FOLDS, seed=cfg.SEED, path=tmp, groups=groups)
    tmp.unlink()
    fold[keep] = split.to_numpy()
    frame = pd.DataFrame({"id": data.names, "fold": fold})
    part = path.with_name(path.name + ".tmp")
    frame.to_csv(part, index=False)
    part.replace(path)
    if holdout:
        run.log(f"held out for the package check (never trained on): {', '.join(np.asarray(data.names)[~keep])}")
    return pd.Series(fold, index=ids.index, name="fold")


# ----------------------------------------------------------------------------------------- training


def _crop_size(cfg: SegConfig, data: TileData, tiles: Sequence[int]) -> int:
    side = min(min(data.shape(i)) for i in tiles)
    crop = min(cfg.CROP, side) // 32 * 32
    if crop < 32:
        raise ValueError(f"training tiles are only {side}px on their short side; the U-Net needs crops of at "
                         "least 32px.")
    return crop


def _model_fold(cfg: SegConfig, v: int) -> tuple[int, int]:
    """Ensemble member v -> (fold, seed index)."""
    return v % cfg.n_folds, v // cfg.n_folds


def _expected_meta(cfg: SegConfig, data: TileData, v: int, pretrained: dict[str, Any] | None) -> dict[str, Any]:
    fold, seed_index = _model_fold(cfg, v)
    return {"encoder": cfg.ENCODER, "bands": list(data.bands), "classes": list(data.classes), "fold": fold,
            "seed_index": seed_index, "folds": cfg.FOLDS, "seed": cfg.SEED, "batch_size": cfg.BATCH_SIZE,
            "lr": cfg.LR, "samples_per_epoch": cfg.SAMPLES_PER_EPOCH,
            "init": (pretrained or {}).get("id", "weights" if cfg.WEIGHTS else "scratch")}


def encoder_weights_name(encoder: str) -> str:
    """The name the encoder's ImageNet weights are found by: the timm name of a `tu-` encoder, else the
    smp name (``resnet34``: smp's resnets take timm's and torchvision's resnet weights as they are)."""
    return encoder[3:] if encoder.startswith("tu-") else encoder


def _initialise(model: nn.Module, cfg: SegConfig, data: TileData, pretrained: dict[str, Any] | None,
                run: Run, say: Any) -> None:
    """Start from the glacier pretrain (first layer mapped by band name), else from the encoder's
    ImageNet weights (WEIGHTS; their red, green and blue kernels go to the bands of those names, the
    other bands get timm's `adapt_input_conv` mean), else random."""
    from ...weights import read_state_dict, smp_repo

    if pretrained is not None:
        report = transfer_first_layer(pretrained["state_dict"], pretrained["band_names"], model, data.bands)
        run.record["weights"] = {"source": "glacier_pretrain", "model": cfg.ENCODER, "path": pretrained["id"],
                                 "sha256": None}
        say(f"initialised from {pretrained['id']}:\n{report}")
        return
    weights = weights_for(run, encoder_weights_name(cfg.ENCODER), cfg.WEIGHTS, repo=smp_repo(cfg.ENCODER))
    if weights.pretrained:
        report = load_encoder_weights(model, read_state_dict(weights.path), data.bands, source=str(weights.path),
                                      encoder=cfg.ENCODER)
        say(f"encoder initialised from {weights.path} (ImageNet RGB kernels mapped by band name):\n{report}")


def _setup(data: TileData, folds: pd.Series, cfg: SegConfig, run: Run, v: int,
           pretrained: dict[str, Any] | None, said: set) -> FoldSetup:
    fold, _ = _model_fold(cfg, v)
    f = folds.to_numpy()
    train_idx = np.flatnonzero((f != fold) & (f != HOLDOUT_FOLD))
    val_idx = np.flatnonzero(f == fold)
    if len(val_idx) > MAX_VAL_PATCHES and data.patch_files is not None:
        val_idx = val_idx[:MAX_VAL_PATCHES]
    stats = BandStats.fit((data.read(i) for i in _stats_tiles(train_idx, cfg, v)), data.bands)  # training fold only
    model = build_unet(cfg.ENCODER, in_channels=len(data.bands), n_classes=len(data.classes))
    say = run.log if "init" not in said else (lambda _m: None)
    said.add("init")
    _initialise(model, cfg, data, pretrained, run, say)
    model = model.to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY)
    crop = _crop_size(cfg, data, train_idx)
    steps = math.ceil(cfg.SAMPLES_PER_EPOCH / cfg.BATCH_SIZE)
    loss = SegLoss(len(data.classes), focal=cfg.FOCAL, dice=cfg.DICE, boundary=cfg.BOUNDARY,
                   ramp_steps=cfg.BOUNDARY_RAMP * steps, optimizer=optimizer)
    val_ds = TileDataset(data, val_idx, stats)
    meta = {**_expected_meta(cfg, data, v, pretrained), "crop": crop, "stats": stats.to_dict(),
            "arch": "Unet", "n_classes": len(data.classes)}
    return FoldSetup(
        model=model, optimizer=optimizer,
        train_loader=make_loader(CropDataset(data, train_idx, stats, crop, cfg.SAMPLES_PER_EPOCH, cfg.BALANCE),
                                 cfg.BATCH_SIZE // distributed.world_size(), train=True, seed=cfg.SEED + v,
                                 device=run.device, num_workers=cfg.NUM_WORKERS),  # each process's share
        val_loader=make_loader(val_ds, 1, train=False, device=run.device, num_workers=cfg.NUM_WORKERS),
        loss_fn=loss, val_ids=[data.names[i] for i in val_idx],
        val_targets=np.stack([val_ds.target(j) for j in range(len(val_ds))]),
        make_scheduler=lambda opt, total: one_cycle(opt, cfg.LR, total, pct_start=0.1),
        meta=meta, sync_bn=cfg.SYNC_BN)


def _stats_tiles(train_idx: np.ndarray, cfg: SegConfig, v: int) -> np.ndarray:
    """The training tiles the band statistics of member `v` are fitted on: all, or STATS_TILES of them
    drawn at random (the same in every session)."""
    if len(train_idx) <= STATS_TILES:
        return train_idx
    return np.sort(np.random.default_rng([cfg.SEED, v]).choice(train_idx, STATS_TILES, replace=False))


def train_members(data: TileData, folds: pd.Series, cfg: SegConfig, run: Run, *,
                  pretrained: dict[str, Any] | None, predict_items: int = 0) -> CVResult:
    """Train every unfinished ensemble member (fold x seed) inside the budget with the kit's CV loop;
    `predict_items` (tiles x members x views) sizes the prediction reserve from the measured pace.

    With several processes (DEVICES) the members train in torchrun workers (`train_worker` in each,
    the notebook process stays off the GPUs); run.json records `world_size` and `backend` either way."""
    world = distributed.plan_world(cfg.DEVICES, device=cfg.DEVICE)
    world.batch_per_process(cfg.BATCH_SIZE)
    run.record.update(world_size=world.processes, backend=world.backend)
    if (note := distributed.sync_bn_note(cfg.SYNC_BN, world)) is not None:
        run.log(note)
    if not world.distributed:
        return _members(data, folds, cfg, run, pretrained=pretrained, predict_items=predict_items)
    spec = worker_spec(cfg.TASK, run, {**cfg.as_dict(), "DATA_DIR": str(data.source)},
                       pretrained=None if pretrained is None else pretrained["path"], predict_items=predict_items)
    return train_in_workers(spec, run, world)


def _members(data: TileData, folds: pd.Series, cfg: SegConfig, run: Run, *,
             pretrained: dict[str, Any] | None, predict_items: int) -> CVResult:
    """`train_folds` over the ensemble members: the same code in one process and in each of several."""
    said: set = set()
    return train_folds(
        run, n_folds=cfg.n_models, setup=lambda v: _setup(data, folds, cfg, run, v, pretrained, said),
        metric=PIXEL_MCC, max_epochs=cfg.EPOCHS, min_epochs=cfg.MIN_EPOCHS, max_new_folds=cfg.FOLDS_PER_SESSION,
        patience=cfg.PATIENCE, checkpoint_every=cfg.CHECKPOINT_EVERY,
        predict_items=predict_items, predict_models=cfg.n_models if predict_items else 0,
        expected_meta=lambda v: _expected_meta(cfg, data, v, pretrained))


def members_worker(spec: dict[str, Any], device: torch.device, *, config: type[SegConfig],
                   load: Callable[[Any, Run], TileData], make_folds: Callable[[TileData, Any, Run], pd.Series],
                   load_pretrained: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """One training process of a multi-process glacier run (a notebook's `train_worker`): the config, run,
    tiles, folds and pretrained weights re-created from the spec `train_members` wrote (the tiles read
    again quietly: the notebook process said what they are), then `_members`."""
    from ...run import join_run

    cfg = config(**spec["config"])
    run = join_run(spec["run"], device=device)
    echo, run.echo = run.echo, (lambda message: None)
    try:
        data = load(cfg, run)
        folds = make_folds(data, cfg, run)  # folds.csv, made by the notebook process
        pretrained = None if spec.get("pretrained") is None else load_pretrained(spec["pretrained"])
    finally:
        run.echo = echo
    return worker_result(_members(data, folds, cfg, run, pretrained=pretrained,
                                  predict_items=int(spec.get("predict_items") or 0)))


def trained_models(cfg: SegConfig, run: Run) -> list[tuple[int, Path, str]]:
    """Ensemble members with a validated best epoch; the last checkpoint of an interrupted member (never
    validated) only when no member has a best epoch at all."""
    models = fold_models(run, cfg.n_models)
    best = [m for m in models if m[2] == "best"]
    if best and len(best) < len(models):
        run.log(f"left out (no validated epoch yet): {', '.join(str(k) for k, _, w in models if w != 'best')}")
        models = best
    missing = sorted(set(range(cfg.n_models)) - {k for k, _, _ in models})
    if missing:
        run.log(f"ensemble members without a model (skipped): {missing}")
    return models
