"""Glacier segmentation runs: pretraining on HKH patches, fine-tuning on the GlacierHack layout.

Pretrain (notebooks/glacier_pretrain.ipynb):

    cfg   = PretrainConfig.from_namespace(globals())
    run   = start(cfg)
    data  = load_patches(cfg, run)          # HKH *_img_NNN.npy + *_mask_NNN.npy, bands by physical name
    folds = make_folds(data, cfg, run)      # grouped by scene, saved once (folds.csv)
    result = train(data, folds, cfg, run)   # the kit's CV loop: budget, checkpoints, exact resume
    path  = export_pretrained(data, cfg, run)   # weights + band names + statistics
    report = finish_pretrained(path, run)

Fine-tune (notebooks/glacier_finetune.ipynb):

    cfg   = FinetuneConfig.from_namespace(globals())
    run   = start(cfg)
    data  = load_tiles(cfg, run)            # Train/Band1..Band5 + labels
    pre   = find_pretrained(cfg, run)       # the pretrain's output, or None: from scratch, said aloud
    folds = make_folds(data, cfg, run)      # K folds over tiles; HOLDOUT tiles never trained on
    result = train(data, folds, cfg, run, pretrained=pre)
    package = export_package(data, folds, cfg, run)   # solution.py + model.pth
    report = finish_package(package, data, folds, cfg, run)  # verified in a fresh process, MCC

Statistics are fitted on each fold's training tiles only and saved with that fold's model. Training
crops are drawn with class-balanced centres, per item from (seed, epoch, index), so a resumed fold
sees exactly the crops the uninterrupted one would have seen.
"""
from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import folds as _folds
from ..cv import CVResult, FoldSetup, fold_models, load_fold_model, train_folds
from ..loaders import make_loader
from ..metrics import Metric
from ..run import Run
from ._config import NotebookConfig, find_data_dir
from ._config import start as _start
from .glacier import (
    CLASS_NAMES,
    HACK_BANDS,
    HKH_CHANNELS,
    BalancedCropSampler,
    BandStats,
    StreamingConfusion,
    build_unet,
    find_band_dirs,
    find_hkh_patches,
    list_tiles,
    ndsi_baseline,
    read_hkh_patch,
    read_label,
    read_tile,
    transfer_first_layer,
)

__all__ = [
    "HOLDOUT_FOLD",
    "IGNORE",
    "PACKAGE_DIR",
    "PIXEL_MCC",
    "PRETRAINED_FILE",
    "CropDataset",
    "FinetuneConfig",
    "PretrainConfig",
    "SegLoss",
    "TileData",
    "TileDataset",
    "boundary_distance",
    "export_package",
    "export_pretrained",
    "find_pretrained",
    "finish_package",
    "finish_pretrained",
    "load_patches",
    "load_pretrained",
    "load_tiles",
    "make_folds",
    "ndsi_score",
    "plot_results",
    "start",
    "train",
]

PRETRAINED_FILE = "glacier_pretrained.pth"
PRETRAINED_FORMAT = "kagglekit_nb.glacier_pretrained/1"
PACKAGE_DIR = "package"              # solution.py + model.pth, inside the run folder
HOLDOUT_DIR = "holdout"              # the held-out tiles, laid out like Train/, for the package check
HOLDOUT_FOLD = -1                    # folds.csv value of a held-out tile
IGNORE = 255                         # label value of padding: no loss, not scored
PRETRAIN_CLASSES = CLASS_NAMES[:3]   # HKH masks have clean ice and debris, no lakes
FINETUNE_CLASSES = CLASS_NAMES
TTA_CHOICES = {"none": ("none",), "flips": ("none", "hflip", "vflip"),
               "d4": ("none", "hflip", "vflip", "rot90", "rot180", "rot270")}
MAX_VAL_PATCHES = 64                 # pretraining validates on at most this many patches of its fold


# ----------------------------------------------------------------------------------------- config


@dataclass
class _SegConfig(NotebookConfig):
    """Parameters shared by both glacier notebooks (same names and defaults as their parameters cells)."""

    DATA_DIR: str | None = None          # None = find it under /kaggle/input, else the bundled demo
    OUTPUT_DIR: str | None = None
    BUDGET: str | None = None
    SEED: int = 42
    RUN_NAME: str = "glacier"
    ENCODER: str = "resnet34"            # any segmentation_models_pytorch encoder
    WEIGHTS: str | None = None           # local ImageNet weights of the encoder (RGB bands mapped by name)
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
    DEVICE: str | None = None

    def check(self) -> None:
        self.at_least(1, "EPOCHS", "MIN_EPOCHS", "BATCH_SIZE", "SAMPLES_PER_EPOCH", "SEEDS", "BOUNDARY_RAMP")
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


@dataclass
class PretrainConfig(_SegConfig):
    """The glacier_pretrain notebook's parameters."""

    RUN_NAME: str = "glacier_pretrain"
    BANDS: str | None = None             # comma-separated physical band names; None = all 15 HKH channels
    TRAIN_FOLDS: int | None = 1          # pretraining needs one model: train fold 0 only
    MAX_PATCHES: int | None = 500        # patches used (in file order); None = all

    def check(self) -> None:
        super().check()
        self.at_least(1, "MAX_PATCHES")
        if self.BANDS is not None:
            _parse_bands(self.BANDS)


@dataclass
class FinetuneConfig(_SegConfig):
    """The glacier_finetune notebook's parameters."""

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


def _parse_bands(text: str) -> list[str]:
    bands = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in bands if b not in HKH_CHANNELS]
    if unknown or not bands:
        raise ValueError(f"BANDS={text!r}: {', '.join(unknown) or 'no band'} is not an HKH channel; choose from "
                         f"{', '.join(HKH_CHANNELS)}.")
    if len(set(bands)) != len(bands):
        raise ValueError(f"BANDS={text!r} repeats a band.")
    return bands


def start(cfg: _SegConfig, **kwargs: Any) -> Run:
    """Open the run: seed, budget, output folder, device (see `kagglekit_nb.start_run`)."""
    return _start(cfg, **kwargs)


# ------------------------------------------------------------------------------------------- data


@dataclass
class TileData:
    """Tiles (or patches) with their class maps; images are read lazily, window by window."""

    names: list[str]
    labels: list[np.ndarray]            # HW uint8 class indices
    bands: list[str]                    # physical band names, in channel order
    classes: tuple[str, ...]
    groups: list[str]                   # tiles of one group stay in one fold (a scene)
    source: Path
    images: list[np.ndarray] | None = None          # CHW float32 in memory (GlacierHack tiles)
    patch_files: list[Path] | None = None           # HWC .npy files read through a memory map (HKH)
    channels: list[int] | None = None               # channel indices of `bands` in the patch files
    band_dirs: dict[str, Path] | None = None        # GlacierHack: band folder name -> folder

    def __len__(self) -> int:
        return len(self.names)

    def read(self, i: int, window: tuple[int, int, int] | None = None) -> np.ndarray:
        """Tile `i` (or the square `window` = (top, left, size) of it) as raw CHW float32."""
        if self.images is not None:
            x = self.images[i]
            if window is not None:
                top, left, size = window
                x = x[:, top:top + size, left:left + size]
            return np.asarray(x, np.float32)
        arr = np.load(self.patch_files[i], mmap_mode="r")  # HWC: only the window is read
        if window is not None:
            top, left, size = window
            arr = arr[top:top + size, left:left + size]
        return np.ascontiguousarray(np.asarray(arr[..., self.channels], np.float32).transpose(2, 0, 1))


def _demo_root(run: Run, tile_size: int) -> Path:
    from .. import env
    from ..demo.glacier import make_glacier_demo

    demo = env.working_dir(run.platform) / "kagglekit_demo" / f"glacier_{tile_size}"
    if not (demo / "glacierhack" / "Train").is_dir() or not (demo / "hkh").is_dir():
        make_glacier_demo(demo, seed=0, tile_size=tile_size)
    return demo


def _find_input(cfg: _SegConfig, run: Run, required: Sequence[str], what: str) -> Path | None:
    return find_data_dir(cfg.DATA_DIR, run, required=required, what=what, max_depth=4)


def load_patches(cfg: PretrainConfig, run: Run) -> TileData:
    """The HKH patches (DATA_DIR, else found under /kaggle/input, else the demo), up to MAX_PATCHES."""
    root = _find_input(cfg, run, ["*_img_*.npy"], "folder of HKH patches (*_img_NNN.npy + *_mask_NNN.npy)")
    if root is None:
        root = _demo_root(run, cfg.DEMO_TILE_SIZE) / "hkh"
        run.log(f"no HKH patches attached: using the generated demo ({cfg.DEMO_TILE_SIZE}px) in {root}")
    pairs = find_hkh_patches(root)
    if cfg.MAX_PATCHES is not None and len(pairs) > cfg.MAX_PATCHES:
        run.log(f"using the first {cfg.MAX_PATCHES} of {len(pairs)} patches (MAX_PATCHES)")
        pairs = pairs[:cfg.MAX_PATCHES]
    bands = _parse_bands(cfg.BANDS) if cfg.BANDS else list(HKH_CHANNELS)
    read_hkh_patch(*pairs[0])  # checks the layout (15 channels, a two-channel mask) once
    labels = [_read_hkh_mask(mask) for _, mask in pairs]
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


def _class_shares(data: TileData) -> str:
    counts = sum(np.bincount(lab.reshape(-1), minlength=len(data.classes))[:len(data.classes)]
                 for lab in data.labels)
    share = counts / max(1, counts.sum())
    return ", ".join(f"{c} {s:.1%}" for c, s in zip(data.classes, share))


def load_tiles(cfg: FinetuneConfig, run: Run, split: str = "Train") -> TileData:
    """GlacierHack tiles with labels: `<DATA_DIR>/Train/Band1..Band5 + labels` (or DATA_DIR itself)."""
    root = _find_input(cfg, run, [f"{split}/Band1"], "GlacierHack folder (Train/Band1..Band5, Train/labels)")
    if root is None:
        root = _demo_root(run, cfg.DEMO_TILE_SIZE) / "glacierhack"
        run.log(f"no GlacierHack data attached: using the generated demo ({cfg.DEMO_TILE_SIZE}px) in {root}")
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


def make_folds(data: TileData, cfg: _SegConfig, run: Run) -> pd.Series:
    """Fold per tile, made once (folds.csv): K folds grouped by scene; fine-tuning first sets HOLDOUT
    tiles aside (fold -1), chosen so that every class is still in training."""
    path = run.dir / _folds.FOLDS_FILE
    ids = pd.Series(data.names, name="id")
    holdout = getattr(cfg, "HOLDOUT", 0)
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


# ----------------------------------------------------------------------------------- metric & loss


def _pixel_mcc(targets: np.ndarray, preds: np.ndarray) -> float:
    """Multiclass MCC over pixels (sklearn's definition); `preds` are class maps or (N, C, ...) probabilities.
    Pixels labelled IGNORE (padding) are not scored."""
    t, p = np.asarray(targets), np.asarray(preds)
    n = None
    if p.ndim == t.ndim + 1:
        n, p = p.shape[1], p.argmax(1)
    keep = t != IGNORE
    t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
    n = n or max(2, int(max(t.max(initial=0), p.max(initial=0))) + 1)
    cm = StreamingConfusion(n)
    cm.update(p, t)
    return cm.mcc()


PIXEL_MCC = Metric("mcc", _pixel_mcc, True)


def boundary_distance(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Signed distance of every pixel to each class's boundary, per image (B, C, H, W), scaled by the
    image side: negative inside the class, positive outside (Kervadec et al.'s boundary loss). A class
    absent from an image is +1 everywhere, one filling it -1; IGNORE pixels are 0."""
    from scipy.ndimage import distance_transform_edt as edt

    y = np.asarray(labels)
    b, h, w = y.shape
    out = np.ones((b, n_classes, h, w), np.float32)
    scale = float(max(h, w))
    for i in range(b):
        for c in range(n_classes):
            inside = y[i] == c
            if inside.all():
                out[i, c] = -1.0
            elif inside.any():
                out[i, c] = (edt(~inside) - (edt(inside) - 1.0) * inside) / scale
        out[i][:, y[i] == IGNORE] = 0.0
    return out


class SegLoss(nn.Module):
    """FOCAL x focal + DICE x dice (smp's multiclass losses) + a boundary term ramped in linearly over
    `ramp_steps` optimizer steps. The step count is read from the optimizer's own state, which every
    checkpoint holds, so the ramp continues exactly after a resume."""

    def __init__(self, n_classes: int, *, focal: float = 1.0, dice: float = 1.0, boundary: float = 0.0,
                 ramp_steps: int = 1, optimizer: torch.optim.Optimizer | None = None):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        self.n_classes, self.weights = n_classes, (focal, dice, boundary)
        self.focal = FocalLoss("multiclass", ignore_index=IGNORE)
        self.dice = DiceLoss("multiclass", ignore_index=IGNORE)
        self.ramp_steps, self.optimizer = max(1, ramp_steps), optimizer

    def steps(self) -> int:
        if self.optimizer is None:
            return self.ramp_steps
        for state in self.optimizer.state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def boundary_weight(self) -> float:
        return self.weights[2] * min(1.0, self.steps() / self.ramp_steps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        focal_w, dice_w, _ = self.weights
        loss = logits.new_zeros(())
        if focal_w:
            loss = loss + focal_w * self.focal(logits, target)
        if dice_w:
            loss = loss + dice_w * self.dice(logits, target)
        w = self.boundary_weight()
        if w:
            dist = torch.from_numpy(boundary_distance(target.cpu().numpy(), self.n_classes)).to(logits.device)
            loss = loss + w * (logits.float().softmax(1) * dist).mean()
        return loss


# ------------------------------------------------------------------------------------------ datasets


class CropDataset(Dataset):
    """`length` training crops per epoch: centre pixel drawn by class frequency^-power, then a random
    flip and 90-degree rotation; normalised with the fold's statistics. Item i's randomness comes from
    numpy's global RNG, which `IndexSeeded` (via `make_loader(train=True)`) seeds from (seed, epoch, i)."""

    def __init__(self, data: TileData, tiles: Sequence[int], stats: BandStats, crop: int, length: int,
                 power: float):
        self.data, self.tiles, self.stats, self.crop, self.length = data, list(tiles), stats, crop, length
        self.sampler = BalancedCropSampler([data.labels[i] for i in self.tiles], crop,
                                           n_classes=len(data.classes), power=power)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))
        t, top, left = self.sampler.sample(rng)
        i = self.tiles[t]
        x = self.stats.normalise(self.data.read(i, (top, left, self.crop)))
        y = self.data.labels[i][top:top + self.crop, left:left + self.crop]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if flip:
            x, y = x[:, :, ::-1], y[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y).astype(np.int64))


def _padded_size(data: TileData, tiles: Sequence[int]) -> tuple[int, int]:
    h = max(data.labels[i].shape[0] for i in tiles)
    w = max(data.labels[i].shape[1] for i in tiles)
    return -(-h // 32) * 32, -(-w // 32) * 32


class TileDataset(Dataset):
    """Whole tiles for validation, normalised and zero-padded to a common size that is a multiple of 32
    (padding is labelled IGNORE: no loss, not scored)."""

    def __init__(self, data: TileData, tiles: Sequence[int], stats: BandStats):
        self.data, self.tiles, self.stats = data, list(tiles), stats
        self.size = _padded_size(data, self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def target(self, j: int) -> np.ndarray:
        y = self.data.labels[self.tiles[j]]
        out = np.full(self.size, IGNORE, np.uint8)
        out[:y.shape[0], :y.shape[1]] = y
        return out

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stats.normalise(self.data.read(self.tiles[j]))
        pad = np.zeros((x.shape[0], *self.size), np.float32)
        pad[:, :x.shape[1], :x.shape[2]] = x
        return torch.from_numpy(pad), torch.from_numpy(self.target(j).astype(np.int64))


# ----------------------------------------------------------------------------------------- training


def _crop_size(cfg: _SegConfig, data: TileData, tiles: Sequence[int]) -> int:
    side = min(min(data.labels[i].shape) for i in tiles)
    crop = min(cfg.CROP, side) // 32 * 32
    if crop < 32:
        raise ValueError(f"training tiles are only {side}px on their short side; the U-Net needs crops of at "
                         "least 32px.")
    return crop


def _model_fold(cfg: _SegConfig, v: int) -> tuple[int, int]:
    """Ensemble member v -> (fold, seed index)."""
    return v % cfg.n_folds, v // cfg.n_folds


def _expected_meta(cfg: _SegConfig, data: TileData, v: int, pretrained: dict[str, Any] | None) -> dict[str, Any]:
    fold, seed_index = _model_fold(cfg, v)
    return {"encoder": cfg.ENCODER, "bands": list(data.bands), "classes": list(data.classes), "fold": fold,
            "seed_index": seed_index, "folds": cfg.FOLDS, "seed": cfg.SEED, "batch_size": cfg.BATCH_SIZE,
            "lr": cfg.LR, "samples_per_epoch": cfg.SAMPLES_PER_EPOCH,
            "init": (pretrained or {}).get("id", "weights" if cfg.WEIGHTS else "scratch")}


def _initialise(model: nn.Module, cfg: _SegConfig, data: TileData, pretrained: dict[str, Any] | None,
                say: Any) -> None:
    if pretrained is not None:
        report = transfer_first_layer(pretrained["state_dict"], pretrained["band_names"], model, data.bands)
        say(f"initialised from {pretrained['id']}:\n{report}")
    elif cfg.WEIGHTS:
        path = Path(cfg.WEIGHTS).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"WEIGHTS={cfg.WEIGHTS!r} is not a file: attach the encoder's ImageNet weights "
                                    "(a state dict saved with torch.save) or set WEIGHTS = None.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        report = transfer_first_layer(state, ["red", "green", "blue"], model, data.bands)
        say(f"encoder initialised from {path.name} (RGB weights, mapped by band name):\n{report}")


def _setup(data: TileData, folds: pd.Series, cfg: _SegConfig, run: Run, v: int,
           pretrained: dict[str, Any] | None, said: set) -> FoldSetup:
    fold, _ = _model_fold(cfg, v)
    f = folds.to_numpy()
    train_idx = np.flatnonzero((f != fold) & (f != HOLDOUT_FOLD))
    val_idx = np.flatnonzero(f == fold)
    if len(val_idx) > MAX_VAL_PATCHES and data.patch_files is not None:
        val_idx = val_idx[:MAX_VAL_PATCHES]
    stats = BandStats.fit((data.read(i) for i in train_idx), data.bands)  # the training fold only
    model = build_unet(cfg.ENCODER, in_channels=len(data.bands), n_classes=len(data.classes))
    say = run.log if "init" not in said else (lambda _m: None)
    said.add("init")
    _initialise(model, cfg, data, pretrained, say)
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
                                 cfg.BATCH_SIZE, train=True, seed=cfg.SEED + v, device=run.device,
                                 num_workers=cfg.NUM_WORKERS),
        val_loader=make_loader(val_ds, 1, train=False, device=run.device, num_workers=cfg.NUM_WORKERS),
        loss_fn=loss, val_ids=[data.names[i] for i in val_idx],
        val_targets=np.stack([val_ds.target(j) for j in range(len(val_ds))]),
        make_scheduler=lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.LR, total_steps=total, pct_start=0.1),
        meta=meta)


def train(data: TileData, folds: pd.Series, cfg: _SegConfig, run: Run, *,
          pretrained: dict[str, Any] | None = None, reserve: Any = None) -> CVResult:
    """Train every unfinished ensemble member (fold x seed) inside the budget with the kit's CV loop.

    `reserve(seconds per validation tile)` is the time kept for what follows training (the default
    keeps twice the validation time of the whole ensemble on the holdout, plus 30 s).
    """
    said: set = set()
    if reserve is None and isinstance(cfg, FinetuneConfig):
        n_after = max(1, int((folds == HOLDOUT_FOLD).sum()))

        def reserve(per_tile: float) -> float:  # export, a fresh process importing torch, the holdout masks
            return 30.0 + 2.0 * per_tile * n_after * cfg.n_models * len(TTA_CHOICES[cfg.TTA])
    elif reserve is None:
        def reserve(per_tile: float) -> float:  # save the weights, load them back, map onto five bands
            return 10.0
    return train_folds(
        run, n_folds=cfg.n_models, setup=lambda v: _setup(data, folds, cfg, run, v, pretrained, said),
        metric=PIXEL_MCC, max_epochs=cfg.EPOCHS, min_epochs=cfg.MIN_EPOCHS, max_new_folds=cfg.FOLDS_PER_SESSION,
        patience=cfg.PATIENCE, checkpoint_every=cfg.CHECKPOINT_EVERY, predict_cost=reserve,
        expected_meta=lambda v: _expected_meta(cfg, data, v, pretrained))


def _trained_models(cfg: _SegConfig, run: Run) -> list[tuple[int, Path, str]]:
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


# ------------------------------------------------------------------------------------------ pretrain


def export_pretrained(data: TileData, cfg: PretrainConfig, run: Run) -> Path | None:
    """Save the best pretrained model (weights, band names, statistics) as `glacier_pretrained.pth`."""
    models = _trained_models(cfg, run)
    if not models:
        run.log("no pretrained model: nothing to export (the fine-tune will train from scratch)")
        return None
    k, path, which = models[0]
    weights, meta = load_fold_model(path)
    out = run.dir / PRETRAINED_FILE
    payload = {"format": PRETRAINED_FORMAT, "arch": meta["arch"], "encoder": meta["encoder"],
               "band_names": list(data.bands), "classes": list(data.classes), "stats": meta["stats"],
               "state_dict": weights, "fold": k, "which": which,
               "score": run.record.get("folds", {}).get(str(k), {}).get("score")}
    tmp = out.with_name(out.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    run.log(f"pretrained weights ({which} of model {k}, {len(data.bands)} bands) saved to {out}")
    run.record["pretrained_file"] = str(out)
    return out


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
    return payload


def find_pretrained(cfg: FinetuneConfig, run: Run) -> dict[str, Any] | None:
    """PRETRAINED when given; else the first `glacier_pretrained.pth` under /kaggle/input, next to the
    output folder, or in ./runs; None means training from scratch (said in the log)."""
    from .. import env

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


def finish_pretrained(path: Path | None, run: Run) -> Any:
    """Check the pretrain output loads (weights only) and maps onto the GlacierHack bands; write
    verification.json and run.json."""
    from .._atomic import write_json
    from ..submission import VERIFICATION_FILE, VerificationReport

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


# ------------------------------------------------------------------------------------------ fine-tune


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


def export_package(data: TileData, folds: pd.Series, cfg: FinetuneConfig, run: Run) -> Path:
    """Write the code-package submission (solution.py + model.pth) from every trained ensemble member
    (best epoch, else the last checkpoint); with none, the NDSI-rule package."""
    from .glacier_package import export_code_package

    models = _trained_models(cfg, run)
    states, stats = [], []
    for _k, path, _which in models:
        weights, meta = load_fold_model(path)
        states.append(weights)
        stats.append(meta["stats"])
    if not models:
        run.log("no trained model: exporting the NDSI-threshold package instead")
    with run.budget.timed("export"):
        out = export_code_package(
            run.dir / PACKAGE_DIR, states, encoder=cfg.ENCODER, band_folders=list(HACK_BANDS),
            band_names=list(data.bands), stats=stats if stats else BandStats.fit(
                (data.read(i) for i in range(len(data))), data.bands).to_dict(),
            window=cfg.WINDOW, overlap=cfg.OVERLAP, tta=TTA_CHOICES[cfg.TTA], n_classes=len(data.classes),
            log=run.log)
    run.record["package"] = {"dir": str(out), "models": [f"{k} ({w})" for k, _, w in models], "tta": cfg.TTA}
    return out


def finish_package(package: Path, data: TileData, folds: pd.Series, cfg: FinetuneConfig, run: Run) -> Any:
    """Run solution.py in a fresh process on the held-out tiles, check every mask, report MCC next to
    the NDSI baseline on the same tiles; an invalid package is replaced by the NDSI package and the
    cell fails with the reasons."""
    from ..submission import finalize
    from . import glacier_package  # noqa: F401  (registers the package verifier and its NDSI baseline)

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
            report = finalize(package, check_dir, run.dir, kind="glacier_code_package")
        mcc = report.stats.get("mcc")
        scores["package_mcc_holdout" if holdout else "package_mcc_train"] = mcc
    finally:
        run.save()
    where = "the held-out tiles" if holdout else "training tiles"
    versus = f" (NDSI baseline {scores['ndsi_mcc_holdout']:.4f})" if holdout else ""
    run.log(f"package {package} is valid; MCC {'n/a' if mcc is None else f'{mcc:.4f}'} on {where}{versus}")
    return report


# ------------------------------------------------------------------------------------------- plots


def plot_results(run: Run, data: TileData | None = None, folds: pd.Series | None = None) -> dict[str, Path]:
    """The run's plots, saved in `<run>/plots` and shown in the notebook: training curves, time per
    phase against the budget, and (fine-tune) the held-out tiles next to their true masks and the masks
    the package wrote for them. A plot without data yet is skipped with a log line."""
    from .. import plots
    from ..cv import HISTORY_FILE
    from .glacier_package import MASKS_SUFFIX

    out: dict[str, Path] = {}
    if (run.dir / HISTORY_FILE).is_file():
        out["training_curves"] = plots.training_curves(run)
    else:
        run.log(f"no training curves: {HISTORY_FILE} does not exist yet (no epoch has finished)")
    if run.budget.phases:
        out["time_bar"] = plots.time_bar(run)
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
