"""Image classification for Kaggle image competitions: the steps the notebook calls, in order.

    cfg  = Config.from_namespace(globals())     # the notebook's parameters, type-checked
    run  = start(cfg)                            # seed, budget, output folder, environment
    comp = load_competition(cfg, run)            # train/test/sample, columns, classes, image files
    folds = make_folds(comp, cfg, run)           # split once, saved to folds.csv
    result = train(comp, folds, cfg, run)        # every unfinished fold, inside the budget
    probs = predict_test(comp, cfg, run)         # fold average (+ TTA) from saved fold models
    path = write_submission(comp, probs, run)    # in the sample submission's own format
    report = finish(comp, path, run)             # verify, verification.json, run.json

The column names come from `sample_submission.csv`: its first column is the id; one other column
means "predict a label", several mean "one probability column per class".
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import folds as _folds
from ..budget import plan_epochs
from ..loop import fit, make_loader, predict, smoke_step, steps_per_epoch
from ..metrics import get_metric
from ..run import Run, start_run

__all__ = [
    "Config", "Competition", "start", "load_competition", "make_folds", "train",
    "predict_test", "write_submission", "finish", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
REQUIRED_FILES = ("train.csv", "sample_submission.csv")
CHECKPOINT_NAME = "fold{fold}.pt"
LABELS_FILE = "labels.json"
TTA_CHOICES = ("none", "hflip", "vflip", "hvflip")


@dataclass
class Config:
    """The notebook's parameters (same names, same defaults as its `parameters` cell)."""

    DATA_DIR: str | None = None        # competition folder; None = find it under /kaggle/input, else the demo
    OUTPUT_DIR: str | None = None      # None = the platform's run dir (Drive on Colab, /kaggle/working on Kaggle)
    BUDGET: str | None = None          # "45m", "2h"; None = what the platform allows
    SEED: int = 42
    RUN_NAME: str = "classification"
    MODEL: str = "resnet18"            # any timm model name
    WEIGHTS: str | None = None         # local pretrained weights file; None = random init (no download)
    IMG_SIZE: int = 32
    EPOCHS: int = 12                   # upper bound; the budget may plan fewer
    MIN_EPOCHS: int = 3                # fewer epochs than this per fold: drop folds instead
    BATCH_SIZE: int = 64
    LR: float = 3e-3
    WEIGHT_DECAY: float = 1e-4
    LABEL_SMOOTHING: float = 0.0
    FOLDS: int = 5
    TRAIN_FOLDS: int | None = None     # train only the first N folds (None = all)
    METRIC: str = "accuracy"
    HFLIP: bool = False                # horizontal flips in augmentation (wrong for digits/text)
    TTA: str = "none"                  # "none", "hflip", "vflip", "hvflip"
    LABEL_COLUMN: str | None = None    # None = the sample submission's target column
    NUM_WORKERS: int | None = None     # None = automatic
    DEVICE: str | None = None          # None = CUDA when available

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "Config":
        """Build from a mapping such as the notebook's `globals()`; types are checked."""
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}
        return cls(**values)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
                value = float(value)
                setattr(self, f.name, value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and str in allowed \
                    and type(value) not in allowed:  # `-p BUDGET 90`, `-p DATA_DIR 2024`: meant as text
                value = str(value)
                setattr(self, f.name, value)
            ok = any(value is None if a is type(None) else
                     isinstance(value, a) and not (a is int and isinstance(value, bool)) for a in allowed)
            if not ok:
                names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
                raise ValueError(f"{f.name}={value!r} has the wrong type: expected {names}.")
        for name in ("IMG_SIZE", "EPOCHS", "BATCH_SIZE", "FOLDS", "MIN_EPOCHS"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be at least 1.")
        if self.FOLDS < 2:
            raise ValueError(f"FOLDS={self.FOLDS!r} must be at least 2 (cross-validation needs two folds).")
        if self.TRAIN_FOLDS is not None and not 1 <= self.TRAIN_FOLDS <= self.FOLDS:
            raise ValueError(f"TRAIN_FOLDS={self.TRAIN_FOLDS!r} must be None or between 1 and FOLDS={self.FOLDS}.")
        if not self.LR > 0:
            raise ValueError(f"LR={self.LR!r} must be positive.")
        if self.TTA not in TTA_CHOICES:
            raise ValueError(f"TTA={self.TTA!r} is not valid; choose one of {', '.join(TTA_CHOICES)}.")
        get_metric(self.METRIC)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Competition:
    """What a run needs to know about the competition's files."""

    data_dir: Path
    train: pd.DataFrame                 # columns: id, label (class index), path
    test: pd.DataFrame                  # columns: id, path (the sample submission's rows, in order)
    sample: pd.DataFrame                # the sample submission as text
    sample_path: Path
    id_col: str
    target_cols: list[str]
    kind: str                           # "label" or "class_proba"
    classes: list[str]
    in_chans: int

    @property
    def n_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- setup


def start(cfg: Config, **kwargs: Any) -> Run:
    """Open the run: seed, budget, output folder, device (see `kagglekit_nb.start_run`)."""
    return start_run(cfg.as_dict(), run_name=cfg.RUN_NAME, output_dir=cfg.OUTPUT_DIR, budget=cfg.BUDGET,
                     seed=cfg.SEED, device=cfg.DEVICE, **kwargs)


def _find_data_dir(cfg: Config, run: Run) -> Path:
    from .. import env
    from ..demo import make_classification_demo

    if cfg.DATA_DIR is not None:
        path = Path(cfg.DATA_DIR).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"DATA_DIR={cfg.DATA_DIR!r} is not a folder: point it at the "
                                    "competition folder that holds train.csv and sample_submission.csv.")
        return path
    found = env.find_competition_dir(REQUIRED_FILES)
    if found is not None:
        run.log(f"competition data found in {found}")
        return found
    demo = env.working_dir(run.platform) / "kagglekit_demo" / "classification"
    if not (demo / "sample_submission.csv").exists():
        make_classification_demo(demo, seed=0)
    run.log(f"no competition data attached: using the bundled demo (handwritten digits) in {demo}")
    return demo


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the classification notebook needs {path.name} "
                                f"in DATA_DIR ({path.parent}).")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable CSV file ({e}).") from e
    if df.empty:
        raise ValueError(f"{path} has no rows.")
    return df


def _image_index(root: Path) -> dict[str, list[Path]]:
    """Every file under `root` by file name and by stem (one scan, reused for train and test)."""
    index: dict[str, list[Path]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".csv"):
                continue
            p = Path(dirpath) / name
            index.setdefault(name, []).append(p)
            stem = name.rsplit(".", 1)[0]
            if stem != name:
                index.setdefault(stem, []).append(p)
    return index


def _resolve_images(ids: pd.Series, index: dict[str, list[Path]], split: str, csv_name: str,
                    data_dir: Path) -> list[str]:
    paths, missing, unknown = [], [], []
    for i in ids:
        cands = index.get(i, [])
        if len(cands) > 1:  # the same name in train/ and test/: prefer the folder of this split
            cands = [p for p in cands if split in p.relative_to(data_dir).as_posix().lower()] or cands
        if not cands:
            missing.append(i)
            paths.append("")
            continue
        p = cands[0]
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            unknown.append(f"{p.name}")
        paths.append(str(p))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} images listed in {csv_name} were not found under {data_dir} "
            f"(e.g. {', '.join(repr(m) for m in missing[:5])}; looked for '<id>' and '<id>.<ext>'). "
            "Check DATA_DIR, or that the image folder of this split is attached."
        )
    if unknown:
        raise ValueError(
            f"{len(unknown)} {split} images have an unknown format (e.g. {', '.join(unknown[:5])}); "
            f"supported: {', '.join(IMAGE_EXTENSIONS)}. Convert them, e.g. with PIL, to PNG."
        )
    return paths


def _channels(paths: list[str]) -> int:
    from PIL import Image

    for p in paths[:16]:
        try:
            with Image.open(p) as img:
                if img.mode not in ("L", "1", "I", "I;16", "F", "LA"):
                    return 3
        except OSError as e:
            raise ValueError(f"cannot read image {p}: {e}. Replace or remove the file.") from e
    return 1


def load_competition(cfg: Config, run: Run) -> Competition:
    """Read train.csv, the sample submission (and test.csv), find every image, encode labels."""
    data_dir = _find_data_dir(cfg, run)
    sample_path = data_dir / "sample_submission.csv"
    train_df, sample = _read_csv(data_dir / "train.csv"), _read_csv(sample_path)
    id_col, target_cols = sample.columns[0], list(sample.columns[1:])
    if not target_cols:
        raise ValueError(f"{sample_path} has only the column {id_col!r}: a sample submission needs the "
                         "id column and at least one target column.")
    if id_col not in train_df.columns:
        raise ValueError(
            f"train.csv has no column {id_col!r} (the id column of sample_submission.csv); its columns are "
            f"{list(train_df.columns)}. Rename the id column of train.csv to {id_col!r}."
        )
    kind = "label" if len(target_cols) == 1 else "class_proba"
    label_col = cfg.LABEL_COLUMN or (target_cols[0] if kind == "label" else None)
    if kind == "class_proba" and label_col is None:
        if all(c in train_df.columns for c in target_cols):  # one-hot training labels
            onehot = train_df[target_cols].astype(float).to_numpy()
            train_df["_label"] = np.asarray(target_cols)[onehot.argmax(1)]
            label_col = "_label"
        else:
            others = [c for c in train_df.columns if c != id_col]
            if len(others) != 1:
                raise ValueError(f"cannot tell the label column of train.csv among {others}: set LABEL_COLUMN.")
            label_col = others[0]
    if label_col not in train_df.columns:
        raise ValueError(f"train.csv has no label column {label_col!r}; its columns are "
                         f"{list(train_df.columns)}. Set LABEL_COLUMN to the right one.")
    labels = train_df[label_col].str.strip()
    if (labels == "").any():
        raise ValueError(f"train.csv has {int((labels == '').sum())} rows with an empty {label_col!r}: "
                         "drop or label them.")
    if kind == "class_proba":
        classes = list(target_cols)
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise ValueError(f"train.csv labels {unknown[:5]} are not columns of sample_submission.csv "
                             f"({classes}).")
    else:
        classes = sorted(set(labels), key=lambda c: (0, int(c)) if c.lstrip("-").isdigit() else (1, c))
    if len(classes) < 2:
        raise ValueError(f"train.csv has a single class {classes}: nothing to classify.")
    if train_df[id_col].duplicated().any():
        dup = train_df.loc[train_df[id_col].duplicated(), id_col].head(3).tolist()
        raise ValueError(f"train.csv repeats ids (e.g. {dup}); each id must appear once.")

    index = _image_index(data_dir)
    train = pd.DataFrame({"id": train_df[id_col].to_numpy(),
                          "label": pd.Categorical(labels, categories=classes).codes.astype(np.int64)})
    train["path"] = _resolve_images(train["id"], index, "train", "train.csv", data_dir)
    test = pd.DataFrame({"id": sample[id_col].to_numpy()})
    test["path"] = _resolve_images(test["id"], index, "test", "sample_submission.csv", data_dir)
    if (data_dir / "test.csv").exists():
        test_ids = _read_csv(data_dir / "test.csv")
        if id_col in test_ids.columns and set(test_ids[id_col]) != set(test["id"]):
            run.log("WARNING: test.csv and sample_submission.csv list different ids; "
                    "the submission follows sample_submission.csv.")
    comp = Competition(data_dir=data_dir, train=train, test=test, sample=sample, sample_path=sample_path,
                       id_col=id_col, target_cols=target_cols, kind=kind, classes=classes,
                       in_chans=_channels(train["path"].tolist()))
    _save_labels(comp, run)
    counts = train["label"].value_counts().sort_index()
    run.log(f"{len(train)} train / {len(test)} test images, {comp.n_classes} classes "
            f"({'one label column' if kind == 'label' else 'one probability column per class'}), "
            f"{comp.in_chans} channel(s); rarest class {comp.classes[counts.idxmin()]!r} has {counts.min()} images")
    return comp


def _save_labels(comp: Competition, run: Run) -> None:
    """The label encoder is saved once; a later session must see the very same classes."""
    path = run.dir / LABELS_FILE
    data = {"classes": comp.classes, "kind": comp.kind, "id_col": comp.id_col, "target_cols": comp.target_cols}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["classes"] != comp.classes:
            raise ValueError(f"{path} holds classes {saved['classes'][:10]} but the data now has "
                             f"{comp.classes[:10]}: use a new OUTPUT_DIR for different data.")
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- data


class ImageDataset(Dataset):
    """Images from disk through an albumentations pipeline; yields (image, label) or image."""

    def __init__(self, paths: list[str], labels: np.ndarray | None, transform: Any, in_chans: int):
        self.paths, self.labels, self.transform = paths, labels, transform
        self.mode = "L" if in_chans == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as img:
                if self.mode == "L" and img.mode.startswith("I"):  # 16-bit: keep every level
                    arr = np.asarray(img, dtype=np.float32) / 257.0
                else:
                    arr = np.asarray(img.convert(self.mode))
        except OSError as e:
            raise ValueError(f"cannot read image {self.paths[i]}: {e}. Replace or remove the file.") from e
        if arr.ndim == 2:
            arr = arr[:, :, None]
        x = self.transform(image=arr)["image"]
        if self.labels is None:
            return x
        return x, torch.tensor(self.labels[i], dtype=torch.long)


def normalization(model: nn.Module, in_chans: int) -> tuple[list[float], list[float]]:
    """Mean/std from the model's own config: the one source used by training and inference."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if in_chans == 1:
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    elif in_chans != len(mean):
        mean, std = [float(np.mean(mean))] * in_chans, [float(np.mean(std))] * in_chans
    return mean, std


def transforms(img_size: int, mean: list[float], std: list[float], *, train: bool, hflip: bool = False):
    """Albumentations pipelines; augmentation only when `train` (never on validation or test)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    steps: list[Any] = [A.Resize(img_size, img_size)]
    if train:
        steps.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.8))
        if hflip:
            steps.append(A.HorizontalFlip(p=0.5))
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def _tta(name: str) -> list:
    flips = {"hflip": [lambda x: torch.flip(x, dims=[3])], "vflip": [lambda x: torch.flip(x, dims=[2])]}
    flips["hvflip"] = flips["hflip"] + flips["vflip"]
    return flips.get(name, [])


def build_model(cfg: Config, n_classes: int, in_chans: int) -> nn.Module:
    """A timm model; pretrained weights only from a local file (`WEIGHTS`), never downloaded."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": n_classes, "in_chans": in_chans}
    if cfg.WEIGHTS:
        if not Path(cfg.WEIGHTS).is_file():
            raise FileNotFoundError(f"WEIGHTS={cfg.WEIGHTS!r} is not a file: attach the weights as a "
                                    "dataset and point WEIGHTS at the .pth/.safetensors file, or use None.")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(cfg.WEIGHTS)})
    try:
        return timm.create_model(cfg.MODEL, **kwargs)
    except RuntimeError as e:
        if "Unknown model" not in str(e):
            raise
        close = timm.list_models(f"*{cfg.MODEL.split('_')[0][:6]}*")[:8]
        raise ValueError(f"MODEL={cfg.MODEL!r} is not a timm model; similar names: {close}.") from None


# ----------------------------------------------------------------------------- folds & training


def make_folds(comp: Competition, cfg: Config, run: Run) -> pd.Series:
    """Stratified folds, made once and saved in the run folder (`folds.csv`)."""
    return _folds.make_folds(comp.train["id"], comp.train["label"], n_splits=cfg.FOLDS, seed=cfg.SEED,
                             path=run.dir / _folds.FOLDS_FILE)


def _checkpoint(run: Run, fold: int) -> Path:
    return run.checkpoints / CHECKPOINT_NAME.format(fold=fold)


def _save_fold_model(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"state_dict": state, "meta": meta}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_fold_model(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class TrainResult:
    """Per-fold results, the out-of-fold score, and the plan that was followed."""

    folds: dict[int, dict[str, Any]] = field(default_factory=dict)
    cv_score: float | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "completed"

    def table(self) -> pd.DataFrame:
        return pd.DataFrame.from_dict(self.folds, orient="index").rename_axis("fold")


def _estimate_epoch(model, train_loader, val_loader, loss_fn, device) -> tuple[float, float]:
    """Smoke step: one forward/backward and one evaluation batch, timed; returns (epoch s, s/image eval).

    The smoke step leaves no trace (weights, BatchNorm statistics, RNGs, shuffle order), so whether
    it ran in this session does not change what a fold learns.
    """
    smoke = smoke_step(model, train_loader, val_loader, loss_fn=loss_fn, device=device)
    # Optimizer step and loading add ~15% to forward/backward on small models.
    epoch_s = smoke.step_s * 1.15 * len(train_loader) + smoke.eval_s_per_sample * len(val_loader.dataset)
    return epoch_s, smoke.eval_s_per_sample


def train(comp: Competition, folds: pd.Series, cfg: Config, run: Run) -> TrainResult:
    """Train every unfinished fold inside the budget; a fold already done is kept, not retrained."""
    metric = get_metric(cfg.METRIC)
    registry = _folds.FoldRegistry(run.dir)
    result = TrainResult()
    n_folds = cfg.TRAIN_FOLDS or cfg.FOLDS
    todo = []
    for k in range(n_folds):
        if registry.is_done(k) and _checkpoint(run, k).exists():
            result.folds[k] = registry.get(k)
        else:
            if registry.is_done(k):
                run.log(f"fold {k} is marked done but {_checkpoint(run, k)} is missing: retraining it")
            todo.append(k)
    if len(todo) < n_folds:
        run.log(f"folds already done: {sorted(result.folds)} (kept); to train: {todo}")
    run.budget.add_phase("setup", run.budget.elapsed() - sum(run.budget.phases.values()))
    tta = _tta(cfg.TTA)
    epoch_s = per_image = None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.LABEL_SMOOTHING)
    for i, k in enumerate(todo):
        train_idx = np.flatnonzero(folds.to_numpy() != k)
        val_idx = np.flatnonzero(folds.to_numpy() == k)
        torch.manual_seed(cfg.SEED + k)  # each fold's init depends on the fold, not on what ran before
        model = build_model(cfg, comp.n_classes, comp.in_chans).to(run.device)
        mean, std = normalization(model, comp.in_chans)
        tr, va = comp.train.iloc[train_idx], comp.train.iloc[val_idx]
        train_ds = ImageDataset(tr["path"].tolist(), tr["label"].to_numpy(),
                                transforms(cfg.IMG_SIZE, mean, std, train=True, hflip=cfg.HFLIP), comp.in_chans)
        val_ds = ImageDataset(va["path"].tolist(), va["label"].to_numpy(),
                              transforms(cfg.IMG_SIZE, mean, std, train=False), comp.in_chans)
        train_loader = make_loader(train_ds, cfg.BATCH_SIZE, train=True, seed=cfg.SEED + k, device=run.device,
                                   num_workers=cfg.NUM_WORKERS)
        val_loader = make_loader(val_ds, cfg.BATCH_SIZE * 2, train=False, device=run.device,
                                 num_workers=cfg.NUM_WORKERS)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY)
        if epoch_s is None:
            epoch_s, per_image = _estimate_epoch(model, train_loader, val_loader, loss_fn, run.device)
            run.budget.reserve_s = _reserve_s(per_image, len(comp.test), n_folds, len(tta))
            run.log(f"smoke step ok: ~{epoch_s:.1f}s per epoch; reserve for predict + verify "
                    f"{run.budget.reserve_s:.0f}s")
        epochs, fits = plan_epochs(available_s=run.budget.training_left(), epoch_s=epoch_s,
                                   folds_left=len(todo) - i, max_epochs=cfg.EPOCHS,
                                   min_epochs=min(cfg.MIN_EPOCHS, cfg.EPOCHS))
        result.plan[f"fold{k}"] = {"epochs": epochs, "epoch_s": round(epoch_s, 2), "folds_that_fit": fits}
        if epochs == 0:
            result.stop_reason = "budget: no time left for another fold"
            run.log(f"fold {k}: skipped, the budget leaves no time for one epoch (~{epoch_s:.0f}s)")
            break
        run.log(f"fold {k}: {len(tr)} train / {len(va)} valid, plan {epochs} epochs "
                f"(~{epochs * epoch_s:.0f}s); {fits} fold(s) fit at this pace")
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.LR, total_steps=max(1, epochs * steps_per_epoch(train_loader)), pct_start=0.2)

        def should_stop(where: str, _step=[None]) -> str | None:  # noqa: B006 - per-fold closure state
            need = epoch_s / max(1, len(train_loader)) if where == "step" else per_image * len(va)
            return None if run.budget.fits(need) else "budget: stopped to keep time for predict + verify"

        def log_epoch(row: dict[str, float], fr) -> None:
            run.log(f"fold {k} epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f} "
                    f"val_loss {row['val_loss']:.4f} {cfg.METRIC} {row['score']:.4f} ({row['seconds']:.1f}s)")

        t0 = time.monotonic()
        with run.budget.timed("train"):
            fr = fit(model, train_loader, val_loader, optimizer=optimizer, loss_fn=loss_fn, epochs=epochs,
                     device=run.device, metric=metric, scheduler=scheduler, should_stop=should_stop,
                     on_epoch_end=log_epoch, log=run.log)
        full_epochs = [h["seconds"] for h in fr.history if not h["partial"]]
        if full_epochs:  # re-plan on measured speed
            epoch_s = float(np.mean(full_epochs))
        if fr.best_state is None:
            result.stop_reason = fr.stop_reason
            run.log(f"fold {k}: stopped before its first evaluation ({fr.stop_reason}); no model kept")
            break
        info = {"status": "done", "score": fr.best_score, "best_epoch": fr.best_epoch,
                "epochs_done": len(fr.history), "steps": fr.steps, "seconds": round(time.monotonic() - t0, 1),
                "stop_reason": fr.stop_reason, "checkpoint": CHECKPOINT_NAME.format(fold=k)}
        _save_fold_model(_checkpoint(run, k), fr.best_state, {
            "model": cfg.MODEL, "img_size": cfg.IMG_SIZE, "in_chans": comp.in_chans,
            "classes": comp.classes, "mean": mean, "std": std, "fold": k, "score": fr.best_score})
        oof = pd.DataFrame(fr.best_probs, columns=[f"p{c}" for c in range(comp.n_classes)])
        oof.insert(0, "id", va["id"].to_numpy())
        oof.insert(1, "label", va["label"].to_numpy())
        oof.to_csv(run.dir / f"oof_fold{k}.csv", index=False)
        registry.mark(k, **info)
        result.folds[k] = info
        run.log(f"fold {k}: best {cfg.METRIC} {fr.best_score:.4f} at epoch {fr.best_epoch} ({fr.stop_reason})")
        if fr.stop_reason.startswith("budget"):
            result.stop_reason = fr.stop_reason
            break
    result.cv_score = _oof_score(run, comp, metric, sorted(result.folds))
    if result.cv_score is not None:
        run.log(f"CV {cfg.METRIC} (out-of-fold, {len(result.folds)} folds): {result.cv_score:.4f}")
    run.record.update(train_summary(result, cfg))
    run.save()
    return result


def _reserve_s(per_image: float, n_test: int, n_folds: int, n_tta: int) -> float:
    """Time kept for prediction, writing and verification: measured throughput x the real test
    size x folds x TTA, doubled for loading and model building, plus a fixed margin."""
    return 2.0 * per_image * n_test * n_folds * (1 + n_tta) + 10.0 + 0.5 * n_folds


def _oof_score(run: Run, comp: Competition, metric, folds: list[int]) -> float | None:
    frames = [pd.read_csv(run.dir / f"oof_fold{k}.csv") for k in folds if (run.dir / f"oof_fold{k}.csv").exists()]
    if not frames:
        return None
    oof = pd.concat(frames)
    return metric(oof["label"].to_numpy(), oof[[f"p{c}" for c in range(comp.n_classes)]].to_numpy())


def train_summary(result: TrainResult, cfg: Config) -> dict[str, Any]:
    return {"cv_score": result.cv_score, "metric": cfg.METRIC, "folds_done": sorted(result.folds),
            "folds": {str(k): v for k, v in result.folds.items()}, "plan": result.plan,
            "stop_reason": result.stop_reason}


# ----------------------------------------------------------------------------- predict & submit


def predict_test(comp: Competition, cfg: Config, run: Run) -> np.ndarray | None:
    """Average class probabilities over every saved fold model (+ TTA); None if no fold trained."""
    registry = _folds.FoldRegistry(run.dir)
    done = [k for k in registry.done() if _checkpoint(run, k).exists()]
    if not done:
        run.log("no trained fold model: the emergency baseline will be written instead")
        return None
    total = None
    with run.budget.timed("predict"):
        for k in done:
            ckpt = _load_fold_model(_checkpoint(run, k))
            meta = ckpt["meta"]
            if list(meta["classes"]) != comp.classes:
                raise ValueError(f"fold {k}'s model was trained on classes {meta['classes'][:10]}, the data now "
                                 f"has {comp.classes[:10]}: use a new OUTPUT_DIR.")
            model = build_model(dataclasses.replace(cfg, MODEL=meta["model"], WEIGHTS=None),
                                comp.n_classes, meta["in_chans"])
            model.load_state_dict(ckpt["state_dict"])
            model.to(run.device)
            ds = ImageDataset(comp.test["path"].tolist(), None,
                              transforms(meta["img_size"], meta["mean"], meta["std"], train=False), meta["in_chans"])
            loader = make_loader(ds, cfg.BATCH_SIZE * 2, train=False, device=run.device, num_workers=cfg.NUM_WORKERS)
            probs = predict(model, loader, device=run.device, tta=_tta(cfg.TTA))
            total = probs if total is None else total + probs
    run.log(f"predicted {len(comp.test)} test images with {len(done)} fold model(s) {done}, TTA {cfg.TTA}")
    run.record["predicted_with_folds"] = done
    return total / len(done)


def write_submission(comp: Competition, probs: np.ndarray | None, run: Run) -> Path:
    """Write `submission.csv` in the sample's format (ids and row order from the sample).

    With `probs=None` (nothing trained) the emergency baseline from the training prior is written.
    """
    from ..submission import baseline, write_csv

    path = run.dir / "submission.csv"
    if probs is None:
        prior = comp.train["label"].map(dict(enumerate(comp.classes)))
        sub = baseline(comp.sample, train_labels=prior.tolist(), kind=comp.kind)
        run.record["submission"] = "emergency baseline (training prior)"
    else:
        sub = comp.sample[[comp.id_col]].copy()
        if comp.kind == "label":
            sub[comp.target_cols[0]] = np.asarray(comp.classes, dtype=object)[probs.argmax(1)]
        else:
            for j, c in enumerate(comp.classes):
                sub[c] = probs[:, j]
            sub = sub[[comp.id_col, *comp.target_cols]]
        run.record["submission"] = "model"
    write_csv(sub, path)
    return path


def finish(comp: Competition, path: Path, run: Run) -> Any:
    """Verify the submission against the sample, write verification.json and run.json.

    An invalid submission is replaced by the emergency baseline and the notebook fails with reasons.
    """
    from ..submission import finalize

    prior = comp.train["label"].map(dict(enumerate(comp.classes))).tolist()
    labels = comp.classes if comp.kind == "label" else None
    try:
        with run.budget.timed("verify"):
            report = finalize(path, comp.sample_path, run.dir, labels=labels, train_labels=prior)
    finally:
        run.save()
    run.log(f"submission {path} is valid; report in {run.dir / 'verification.json'}")
    return report
