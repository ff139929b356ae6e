"""Image classification for Kaggle image competitions: the steps the notebook calls, in order.

    cfg    = Config.from_namespace(globals())        # the notebook's parameters, type-checked
    run    = start(cfg)                               # seed, budget, output folder, environment
    data   = load(cfg, run)                           # a Competition: train/test/sample, classes, images
    folds  = make_folds(data, cfg, run)               # split once, saved to folds.csv
    models = train(data, folds, cfg, run)             # every unfinished fold, inside the budget (CVResult)
    preds  = predict(data, models, cfg, run)          # fold average (+ TTA) from the saved fold models
    path   = write_submission(data, preds, cfg, run)  # in the sample submission's own format
    report = finish(data, path, cfg, run)             # verify, verification.json, run.json
    figures = plot_results(run, data, models, folds)  # curves, time, confusion matrix

The column names come from `sample_submission.csv`: its first column is the id; one other column
means "predict a label", several mean "one probability column per class".
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import folds as _folds
from .._atomic import write_json
from ..cv import CVResult, FoldSetup, fold_models, load_fold_model, train_folds
from ..loaders import make_loader
from ..loop import predict as _predict_loader
from ..metrics import get_metric
from ..run import Run
from ..ui import progress
from ._config import Demo, RunConfig, find_data, start, timm_model, training_plots, verify_csv, weights_for

__all__ = [
    "IMAGE_EXTENSIONS",
    "Competition",
    "Config",
    "finish",
    "load",
    "make_folds",
    "out_of_fold",
    "plot_results",
    "predict",
    "start",
    "train",
    "write_submission",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
REQUIRED_FILES = ("train.csv", "sample_submission.csv")
LABELS_FILE = "labels.json"
TTA_CHOICES = ("none", "hflip", "vflip", "hvflip")
DEMO = Demo("classification", marks=("sample_submission.csv",), note="the bundled demo (handwritten digits)")


@dataclass
class Config(RunConfig):
    """The notebook's parameters (same names, same defaults as its `parameters` cell)."""

    RUN_NAME: str = "classification"
    MODEL: str = "resnet18"            # any timm model name
    WEIGHTS: str | None = "auto"       # "auto": attached weights, else the hub when online, else random (a warning); None = random; or a file
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
    PATIENCE: int | None = None        # stop a fold after this many epochs without improvement (None = never)
    CHECKPOINT_EVERY: str = "3m"       # full-state checkpoint cadence (also at every epoch end and on SIGTERM)
    FOLDS_PER_SESSION: int | None = None  # train at most this many unfinished folds per run (None = all)
    LABEL_COLUMN: str | None = None    # None = the sample submission's target column
    NUM_WORKERS: int | None = None     # None = automatic
    DEVICE: str | None = None          # None = CUDA when available

    def check(self) -> None:
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


def load(cfg: Config, run: Run) -> Competition:
    """Read train.csv, the sample submission (and test.csv), find every image, encode labels."""
    data_dir = find_data(cfg, run, required=REQUIRED_FILES, what=f"competition folder ({', '.join(REQUIRED_FILES)})",
                         demo=DEMO)
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
    write_json(path, data)


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
    """Mean/std from the model's own config (that of its pretrained weights when it has them), adapted to
    `in_chans`: the one source used by training and inference."""
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


def build_model(cfg: Config, n_classes: int, in_chans: int, run: Run | None = None) -> nn.Module:
    """A timm model starting from `WEIGHTS` (see `kagglekit_nb.weights`: "auto" = attached weights, else the
    hub when online, else random with a warning; None = random; or a file). timm adapts the first layer to
    `in_chans` and replaces the head; with a `run`, run.json records the weights' source and sha256."""
    from ..weights import timm_kwargs, timm_repo

    weights = weights_for(run, cfg.MODEL, cfg.WEIGHTS, repo=timm_repo(cfg.MODEL))
    return timm_model(cfg.MODEL, num_classes=n_classes, in_chans=in_chans, **timm_kwargs(weights))


# ----------------------------------------------------------------------------- folds & training


def make_folds(data: Competition, cfg: Config, run: Run) -> pd.Series:
    """Stratified folds, made once and saved in the run folder (`folds.csv`)."""
    return _folds.make_folds(data.train["id"], data.train["label"], n_splits=cfg.FOLDS, seed=cfg.SEED,
                             path=run.dir / _folds.FOLDS_FILE)


def _fold_meta(cfg: Config, comp: Competition, fold: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (and what prediction needs to rebuild it)."""
    return {"model": cfg.MODEL, "classes": comp.classes, "img_size": cfg.IMG_SIZE, "in_chans": comp.in_chans,
            "fold": fold, "batch_size": cfg.BATCH_SIZE, "seed": cfg.SEED, "lr": cfg.LR, "folds": cfg.FOLDS}


def _setup_fold(comp: Competition, folds: pd.Series, cfg: Config, run: Run, k: int) -> FoldSetup:
    """Model, optimizer, loaders and loss of fold `k` (the model is built on its device first)."""
    val_mask = folds.to_numpy() == k
    tr, va = comp.train[~val_mask], comp.train[val_mask]
    model = build_model(cfg, comp.n_classes, comp.in_chans, run).to(run.device)
    mean, std = normalization(model, comp.in_chans)
    train_ds = ImageDataset(tr["path"].tolist(), tr["label"].to_numpy(),
                            transforms(cfg.IMG_SIZE, mean, std, train=True, hflip=cfg.HFLIP), comp.in_chans)
    val_ds = ImageDataset(va["path"].tolist(), va["label"].to_numpy(),
                          transforms(cfg.IMG_SIZE, mean, std, train=False), comp.in_chans)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY)
    meta = {**_fold_meta(cfg, comp, k), "mean": mean, "std": std}
    return FoldSetup(
        model=model, optimizer=optimizer,
        train_loader=make_loader(train_ds, cfg.BATCH_SIZE, train=True, seed=cfg.SEED + k, device=run.device,
                                 num_workers=cfg.NUM_WORKERS),
        val_loader=make_loader(val_ds, cfg.BATCH_SIZE * 2, train=False, device=run.device,
                               num_workers=cfg.NUM_WORKERS),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.LABEL_SMOOTHING),
        val_ids=va["id"].tolist(), val_targets=va["label"].to_numpy(),
        make_scheduler=lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.LR, total_steps=total, pct_start=0.2),
        meta=meta)


def train(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> CVResult:
    """Train every unfinished fold inside the budget; finished folds are kept, interrupted ones
    resume exactly where their last checkpoint left them."""
    n_folds = cfg.TRAIN_FOLDS or cfg.FOLDS
    n_tta = len(_tta(cfg.TTA))
    return train_folds(
        run, n_folds=n_folds, setup=lambda k: _setup_fold(data, folds, cfg, run, k),
        metric=get_metric(cfg.METRIC), max_epochs=cfg.EPOCHS, min_epochs=cfg.MIN_EPOCHS,
        max_new_folds=cfg.FOLDS_PER_SESSION, patience=cfg.PATIENCE, checkpoint_every=cfg.CHECKPOINT_EVERY,
        predict_items=len(data.test) * n_folds * (1 + n_tta), predict_models=n_folds,
        expected_meta=lambda k: _fold_meta(cfg, data, k))


# ----------------------------------------------------------------------------- predict & submit


def predict(data: Competition, models: CVResult | None, cfg: Config, run: Run) -> np.ndarray | None:
    """Average class probabilities over every fold model that exists (best epoch, else the last
    checkpoint of an interrupted fold) and the TTA views; None if no fold has a model.

    The fold models are read from the run folder, so `models` (train's result) may be None: a
    session that only predicts finds what earlier sessions trained.
    """
    found = fold_models(run, cfg.TRAIN_FOLDS or cfg.FOLDS)
    missing = sorted(set(range(cfg.TRAIN_FOLDS or cfg.FOLDS)) - {k for k, _, _ in found})
    if missing:
        run.log(f"folds without any model (skipped): {missing}")
    if not found:
        run.log("no trained fold model: the emergency baseline will be written instead")
        return None
    total = None
    n_batches = len(found) * -(-len(data.test) // (cfg.BATCH_SIZE * 2))
    with run.budget.timed("predict"), \
            progress(n_batches, "predict test", budget=run.budget, echo=run.log, unit="batch") as bar:
        for k, path, which in found:
            weights, meta = load_fold_model(path)
            if list(meta["classes"]) != data.classes:
                raise ValueError(f"fold {k}'s model ({path}) was trained on classes {meta['classes'][:10]}, the "
                                 f"data now has {data.classes[:10]}: use a new OUTPUT_DIR.")
            model = build_model(dataclasses.replace(cfg, MODEL=meta["model"], WEIGHTS=None),
                                data.n_classes, meta["in_chans"])
            model.load_state_dict(weights)
            model.to(run.device)
            ds = ImageDataset(data.test["path"].tolist(), None,
                              transforms(meta["img_size"], meta["mean"], meta["std"], train=False), meta["in_chans"])
            loader = make_loader(ds, cfg.BATCH_SIZE * 2, train=False, device=run.device, num_workers=cfg.NUM_WORKERS)
            probs = _predict_loader(model, bar.wrap(loader), device=run.device, tta=_tta(cfg.TTA))
            total = probs if total is None else total + probs
    used = [f"{k} ({which})" for k, _, which in found]
    run.log(f"predicted {len(data.test)} test images with fold models {', '.join(used)}, TTA {cfg.TTA}")
    run.record["predicted_with"] = used
    return total / len(found)


def write_submission(data: Competition, preds: np.ndarray | None, cfg: Config, run: Run) -> Path:
    """Write `submission.csv` in the sample's format (ids and row order from the sample).

    With `preds=None` (nothing trained) the emergency baseline from the training prior is written.
    """
    from ..submission import baseline, write_csv

    path = run.dir / "submission.csv"
    if preds is None:
        prior = data.train["label"].map(dict(enumerate(data.classes)))
        sub = baseline(data.sample, train_labels=prior.tolist(), kind=data.kind)
        run.record["submission"] = "emergency baseline (training prior)"
    else:
        sub = data.sample[[data.id_col]].copy()
        if data.kind == "label":
            sub[data.target_cols[0]] = np.asarray(data.classes, dtype=object)[preds.argmax(1)]
        else:
            for j, c in enumerate(data.classes):
                sub[c] = preds[:, j]
            sub = sub[[data.id_col, *data.target_cols]]
        run.record["submission"] = "model"
    write_csv(sub, path)
    return path


def finish(data: Competition, path: Path, cfg: Config, run: Run) -> Any:
    """Verify the submission against the sample (columns, ids, values, and labels among the classes),
    write verification.json and run.json; an invalid file is replaced by the emergency baseline (the
    training prior) and the cell fails with the reasons."""
    prior = data.train["label"].map(dict(enumerate(data.classes))).tolist()
    labels = data.classes if data.kind == "label" else None
    return verify_csv(run, path, data.sample_path, labels=labels, train_labels=prior)


# ----------------------------------------------------------------------------- plots


def out_of_fold(run: Run | str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The out-of-fold predictions of every fold that has them (`oof_fold<k>.csv`, the best epoch's
    class probabilities) as one frame with columns id, fold, target, pred (the most probable
    class), p0..pN, and the class names from `labels.json`. The frame is empty while no fold has
    finished an epoch."""
    from ..cv import OOF_FILE

    folder = Path(run.dir if isinstance(run, Run) else run)
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} is missing: load() writes it when a classification run "
                                "reads its data. Pass the Run, or the folder of a classification run.")
    classes = list(json.loads(labels_path.read_text())["classes"])
    frames = []
    prefix, suffix = OOF_FILE.split("{fold}")
    for path in folder.glob(OOF_FILE.format(fold="*")):
        fold = path.name[len(prefix):len(path.name) - len(suffix)]
        if not fold.isdigit():
            continue
        frame = pd.read_csv(path, dtype={"id": str})
        probs = frame[[c for c in frame.columns if c.startswith("p") and c[1:].isdigit()]].to_numpy()
        frame.insert(1, "fold", int(fold))
        frame.insert(3, "pred", probs.argmax(1) if len(frame) else np.zeros(0, dtype=np.int64))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["id", "fold", "target", "pred"]), classes
    oof = pd.concat(frames, ignore_index=True).sort_values(["fold"], kind="stable", ignore_index=True)
    return oof, classes


def plot_results(run: Run, data: Competition | None = None, models: CVResult | None = None,
                 folds: pd.Series | None = None) -> dict[str, Path]:
    """The run's plots, saved in `<run>/plots` and shown in the notebook: training curves (loss and
    score per fold and epoch), time per phase against the budget, and the confusion matrix of the
    out-of-fold predictions. A plot without data yet (no epoch finished) is skipped with a log line.

    Everything is read from the run folder, so `data`, `models` and `folds` may be None."""
    from .. import plots

    out = training_plots(run)
    oof, classes = out_of_fold(run)
    if len(oof):
        out["confusion_matrix"] = plots.confusion_matrix(oof["target"].to_numpy(), oof["pred"].to_numpy(),
                                                         classes, run)
    else:
        run.log("no confusion matrix: no fold has out-of-fold predictions yet (no epoch has finished)")
    return out
