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

`DEVICES` says how many processes train the deep model: one (today's path, the default with one GPU
or none), or several with DistributedDataParallel — every visible GPU with DEVICES = None (Kaggle's two
T4s), or "cpu:2". Then `train` starts the workers with torchrun (`kagglekit_nb.worker`, which calls
`train_worker` here: the same `_train_deep` as one process) and streams their output into the cell;
the notebook process never initialises CUDA while they run, and afterwards predicts on one device from
the fold models they saved. BATCH_SIZE is the batch of one optimizer step, shared by the processes.

`MODEL = "auto"` (the default) sizes the deep model to the budget: `train` times each rung of
`LADDER` (a timm model and an image size, from small and fast to larger) on one batch, cheapest
first, and the budget picks the strongest rung whose folds x epochs fit (`choose_model`,
`Budget.pick_rung`). The choice is saved in run.json and kept by every later session of the run.

The column names come from `sample_submission.csv`: its first column is the id; one other column
means "predict a label", several mean "one probability column per class".

This module is the whole task (about 900 lines, over the ~600 a module aims at): the verbs above and
the steps only this task has — the model ladder's place in the run (`choose_model`), the classical
stage's, the choice among the candidates and the hand-over to training workers — kept together so the
task reads top to bottom. Reading the competition is in `tasks.competition` and `tasks.layout`, image
files (decoding, skipping, the dataset and transforms) in `tasks.images`, the classical model in
`tasks.classical`, the chooser in `kagglekit_nb.blend`, the processes in `kagglekit_nb.distributed`, the
time decisions in `kagglekit_nb.budget`; the ladder and the candidate steps are the next to move out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import distributed
from .. import folds as _folds
from .._atomic import write_json
from .. import checkpoint as _ckpt
from ..cv import (CVResult, FoldSetup, fold_dir, fold_models, load_fold_model, time_setup, train_folds, train_in_workers,
                  worker_result, worker_spec)
from ..loaders import make_loader
from ..loop import one_cycle, predict as _predict_loader
from ..options import LoopOptions
from ..metrics import get_metric
from ..run import Run, join_run
from ..ui import progress
from . import classical, frozen
from .classical import ClassicalResult
from .competition import (IMAGE_EXTENSIONS, Competition, Overrides, best_threshold, probe_channels, read,
                          read_sample, submission_frame)
from .images import UNREADABLE_FILE, ImageDataset, _channels, _journal, _tta, normalization, read_image, scan_images, transforms
from ._config import (Demo, RunConfig, early_baseline, find_data, record_written, sized_test_rows, start, timm_model,
                      training_plots, verify_csv, weights_for)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LADDER",
    "Competition",
    "Config",
    "Trained",
    "candidates",
    "check_unreadable",
    "choose_model",
    "classical_stage",
    "finish",
    "load",
    "make_folds",
    "out_of_fold",
    "plot_results",
    "predict",
    "read_image",
    "scan_images",
    "start",
    "train",
    "train_worker",
    "write_submission",
    "write_worker_spec",
]

SAMPLE_GLOB = "[sS]ample*[sS]ubmission*"  # how a competition folder under /kaggle/input is recognised
CLASSES_FILE = "labels.json"  # the classes and format, saved once; every later session must match
TTA_CHOICES = ("none", "hflip", "vflip", "hvflip")
MAX_UNREADABLE = 0.005    # more than this share of unreadable images is an error (before training)
CLASSICAL_FILE = "classical.npz"           # the classical stage's out-of-fold and test probabilities
# MODEL = "auto": (timm model, image size) from small and fast to larger; the budget takes the
# strongest rung that fits (`choose_model`). The first rung is cheap enough for a CPU session.
LADDER = (("resnet18", 32), ("resnet18", 64), ("resnet34", 96), ("efficientnet_b0", 160), ("convnext_tiny", 224))
AUTO = "auto"
DEFAULT_IMG_SIZE = 224     # an explicit MODEL that is not on the LADDER, with IMG_SIZE = None
MODEL_CHOICE = "model_choice"              # run.json: the model and image size this run trains
DEMO = Demo("classification", marks=("sample_submission.csv",), note="the bundled demo (handwritten digits)")


@dataclass
class Config(RunConfig):
    """The notebook's parameters (same names, same defaults as its `parameters` cell)."""

    RUN_NAME: str = "classification"
    MODEL: str = "auto"                # "auto": the strongest rung of LADDER that fits the budget; or any timm model name
    WEIGHTS: str | None = "auto"       # "auto": attached weights, else the hub when online, else random (a warning); None = random; or a file
    IMG_SIZE: int | None = None        # None: the rung's size (MODEL "auto"), else the model's LADDER size or 224
    EPOCHS: int | None = None          # None: as many as the budget allows (at most budget.MAX_EPOCHS); else at most this many
    MIN_EPOCHS: int = 3                # fewer epochs than this per fold: drop folds instead
    BATCH_SIZE: int = 64
    LR: float = 3e-3
    WEIGHT_DECAY: float = 1e-4
    LABEL_SMOOTHING: float = 0.0
    FOLDS: int = 5
    TRAIN_FOLDS: int | None = None     # train only the first N folds (None = all)
    METRIC: str | None = None          # None: the competition's (kagglekit download), else the target's default
    HFLIP: bool = False                # horizontal flips in augmentation (wrong for digits/text)
    TTA: str = "none"                  # "none", "hflip", "vflip", "hvflip"
    PATIENCE: int | None = None        # stop a fold after this many epochs without improvement (None = never)
    CHECKPOINT_EVERY: str = "3m"       # full-state checkpoint cadence (also at every epoch end and on SIGTERM)
    FOLDS_PER_SESSION: int | None = None  # train at most this many unfinished folds per run (None = all)
    LABEL_COLUMN: str | None = None    # None: named like the sample's target, its class columns, or their names
    LABELS_FILE: str | None = None     # the labels CSV (None: found: train.csv, train_labels.csv, labels.csv, ...)
    IMAGE_DIR: str | None = None       # the training images' folder (None: found by id anywhere under DATA_DIR)
    TEST_IMAGE_DIR: str | None = None  # the test images' folder (None: found by id)
    SAMPLE_FILE: str | None = None     # None: sample_submission.csv or the one file named like it
    TARGET: str | None = None          # None: detected; label, binary_proba, class_proba, multilabel_proba, label_list, topk
    TEST_ROWS: int | None = None       # the hidden test set's size when a code competition's rerun scores more rows
    CHECK_IMAGES: bool = False         # decode every image at load (slow on big data); unreadable ones are skipped anyway
    NUM_WORKERS: int | None = None     # None = automatic
    DEVICES: int | str | None = None   # training processes: None = every visible GPU (one GPU or none: one process); 1; 2; "cpu:2"
    SYNC_BN: bool = False              # several GPUs: BatchNorm statistics over the whole batch (small batches per GPU)
    DEVICE: str | None = None          # None = CUDA when available

    def check(self) -> None:
        self.at_least(1, "IMG_SIZE", "EPOCHS", "BATCH_SIZE", "FOLDS", "MIN_EPOCHS", "TEST_ROWS")
        if not self.MODEL.strip():
            raise ValueError(f"MODEL={self.MODEL!r} is empty: use 'auto' (sized to the budget) or a timm model "
                             "name such as 'resnet18'.")
        if self.FOLDS < 2:
            raise ValueError(f"FOLDS={self.FOLDS!r} must be at least 2 (cross-validation needs two folds).")
        if self.TRAIN_FOLDS is not None and not 1 <= self.TRAIN_FOLDS <= self.FOLDS:
            raise ValueError(f"TRAIN_FOLDS={self.TRAIN_FOLDS!r} must be None or between 1 and FOLDS={self.FOLDS}.")
        if not self.LR > 0:
            raise ValueError(f"LR={self.LR!r} must be positive.")
        if self.TTA not in TTA_CHOICES:
            raise ValueError(f"TTA={self.TTA!r} is not valid; choose one of {', '.join(TTA_CHOICES)}.")
        if self.METRIC is not None:
            get_metric(self.METRIC)
        distributed.check_config(self.DEVICES, self.DEVICE, self.BATCH_SIZE)
        Overrides.from_config(self).check()


# ----------------------------------------------------------------------------- setup


def check_unreadable(comp: Competition, run: Run, *, limit: float = MAX_UNREADABLE) -> None:
    """Record the unreadable images found so far in run.json; more than `limit` of all images is an
    error listing some of them (they are skipped otherwise: their predictions are the class prior)."""
    bad = {**comp.unreadable, **_journal(run.dir)}
    comp.unreadable.update(bad)
    if not bad:
        return
    total = len(comp.train) + len(comp.test)
    run.record["unreadable_images"] = {"count": len(bad), "of": total, "files": sorted(bad)[:100]}
    examples = "\n".join(f"  - {bad[p]}" for p in sorted(bad)[:5])
    if len(bad) > limit * total:
        run.save()
        raise ValueError(f"{len(bad)} of {total} images cannot be read ({len(bad) / total:.1%}, more than the "
                         f"{limit:.1%} a run skips); e.g.:\n{examples}\nReplace or remove these files (and their "
                         "rows), or check that the image folders are complete.")
    run.log(f"{len(bad)} unreadable image(s) will be skipped (not trained on; predicted as the class prior):\n"
            + examples)


def load(cfg: Config, run: Run) -> Competition:
    """Read the competition as Kaggle publishes it (`tasks.competition.read`: the sample, the labels under any
    layout, the target kind, the metric, every image) and show how it was read, each decision with the
    parameter that overrides it. The sample's own values are written as the emergency baseline as soon as
    the sample is read, then the training prior once the labels are: a cell failing on bad data still
    leaves a valid file."""
    from .. import env

    data_dir = find_data(cfg, run, required=(SAMPLE_GLOB,), what="competition folder (with a sample submission)",
                         demo=DEMO)
    overrides = Overrides.from_config(cfg)
    scratch = env.make_scratch_dir(run.platform, log=run.log)
    sample = read_sample(data_dir, overrides.sample_file, scratch=scratch, log=run.log)
    before = _stamp(run.dir / "submission.csv")
    early_baseline(run, _sample_arg(*sample[:2]), train_labels=None, kind=None)  # unless a valid one is there
    sample_values = _stamp(run.dir / "submission.csv") != before
    def prior_baseline(comp: Competition) -> None:
        if sample_values:  # the sample's own values written just now: the training prior replaces them
            _early_baseline(comp, run)

    try:
        comp = read(data_dir, overrides, scratch=scratch, log=run.log, sample=sample, on_labels=prior_baseline)
    except (ValueError, FileNotFoundError) as e:
        run.record["load_error"] = str(e)[:2000]
        run.save()
        raise type(e)(f"{e}\n(submission.csv holds {run.record.get('submission', 'a valid file')} meanwhile.)") from None
    probe_channels(comp, _channels)
    if cfg.CHECK_IMAGES:
        with run.budget.timed("check images"):
            comp.unreadable.update(scan_images(comp.train["path"].tolist() + comp.test["path"].tolist(),
                                               "L" if comp.in_chans == 1 else "RGB"))
        run.log(f"CHECK_IMAGES: decoded all {len(comp.train) + len(comp.test)} images, {len(comp.unreadable)} unreadable")
    check_unreadable(comp, run)
    _save_labels(comp, run)
    run.record["reading"] = {d.what: d.value for d in comp.decisions}
    run.record["metric"] = comp.metric  # the metric the run picks epochs and candidates by (and blends use)
    run.log(f"how the kit reads {comp.data_dir.name}:\n{comp.describe()}")
    return comp


def _stamp(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _sample_arg(path: Path, sample: pd.DataFrame) -> Any:
    """The sample to verify against: its file, or the frame read from it when it is not UTF-8."""
    return path if sample.attrs.get("encoding", "utf-8") == "utf-8" else sample


def _train_labels(comp: Competition) -> Any:
    """The training targets as `submission.baseline` takes them for this submission format."""
    y = comp.y
    if comp.kind == "binary_proba":
        return (np.asarray(comp.classes)[y] == comp.positive).astype(int).tolist()
    if comp.kind == "multilabel_proba":
        return pd.DataFrame(y, columns=comp.target_cols)
    if comp.kind == "label_list":
        names = np.asarray(comp.classes, dtype=object)
        return [" ".join(names[row > 0]) for row in y]
    return list(np.asarray(comp.classes, dtype=object)[y])


def _early_baseline(comp: Competition, run: Run) -> None:
    """The emergency baseline from the training prior (it replaces the sample's own values)."""
    from ..submission import baseline, write_verified

    sub = baseline(_sample(comp), _train_labels(comp), kind=comp.submission_kind, labels=_legal(comp))
    report = write_verified(sub, run.dir / "submission.csv", _sample(comp), labels=_legal(comp),
                            kind=comp.submission_kind)
    if report.valid:
        run.record["submission"] = f"emergency baseline ({sub.attrs.get('note', 'training prior')})"
        run.save()


def _legal(comp: Competition) -> list[str] | None:
    """The labels a submission cell may hold (label and label-list formats), else None."""
    return comp.classes if comp.submission_kind in ("label", "label_list") else None


def _save_labels(comp: Competition, run: Run) -> None:
    """The label encoder is saved once; a later session must see the very same classes."""
    path = run.dir / CLASSES_FILE
    data = {"classes": comp.classes, "kind": comp.kind, "id_col": comp.id_col, "target_cols": comp.target_cols,
            "positive": comp.positive, "topk": comp.topk}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["classes"] != comp.classes:
            raise ValueError(f"{path} holds classes {saved['classes'][:10]} but the data now has "
                             f"{comp.classes[:10]}: use a new OUTPUT_DIR for different data.")
        return
    write_json(path, data)


# ----------------------------------------------------------------------------- data


def build_model(cfg: Config, n_classes: int, in_chans: int, run: Run | None = None) -> nn.Module:
    """A timm model starting from `WEIGHTS` (see `kagglekit_nb.weights`: "auto" = attached weights, else the
    hub when online, else random with a warning; None = random; or a file). timm adapts the first layer to
    `in_chans` and replaces the head; with a `run`, run.json records the weights' source and sha256."""
    from ..weights import timm_kwargs, timm_repo

    if cfg.MODEL == AUTO:
        raise ValueError("MODEL='auto' names no model yet: `choose_model` (called by `train`) picks one of LADDER; "
                         "pass a Config with a timm model name, e.g. dataclasses.replace(cfg, MODEL='resnet18').")
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


def _dataset(paths: list[str], labels: np.ndarray | None, transform: Any, in_chans: int, comp: Competition,
             run: Run) -> ImageDataset:
    """An ImageDataset that skips unreadable images (those known so far, and any met later, which
    are journaled in the run folder) instead of stopping a long run."""
    return ImageDataset(paths, labels, transform, in_chans, on_error="skip", known_bad=comp.unreadable,
                        journal=run.dir / UNREADABLE_FILE)


def _setup_fold(comp: Competition, folds: pd.Series, cfg: Config, run: Run, k: int, *,
                timing: bool = False) -> FoldSetup:
    """Model, optimizer, loaders and loss of fold `k` (the model is built on its device first).
    `timing`: only to time the setup, so the model starts from random weights (nothing is fetched or
    recorded; the pace is the same)."""
    val_mask = folds.to_numpy() == k
    tr, va = comp.train[~val_mask], comp.train[val_mask]
    built = dataclasses.replace(cfg, WEIGHTS=None) if timing else cfg
    with contextlib.nullcontext() if timing else distributed.main_first():  # rank 0 fetches the weights first
        model = build_model(built, comp.n_classes, comp.in_chans, None if timing else run).to(run.device)
    mean, std = normalization(model, comp.in_chans)
    y = comp.y
    train_ds = _dataset(tr["path"].tolist(), y[~val_mask],
                        transforms(cfg.IMG_SIZE, mean, std, train=True, hflip=cfg.HFLIP), comp.in_chans, comp, run)
    val_ds = _dataset(va["path"].tolist(), y[val_mask],
                      transforms(cfg.IMG_SIZE, mean, std, train=False), comp.in_chans, comp, run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY)
    meta = {**_fold_meta(cfg, comp, k), "mean": mean, "std": std}
    return FoldSetup(
        model=model, optimizer=optimizer,
        train_loader=make_loader(train_ds, cfg.BATCH_SIZE // distributed.world_size(), train=True, seed=cfg.SEED + k,
                                 device=run.device, num_workers=cfg.NUM_WORKERS),  # each process's share
        val_loader=make_loader(val_ds, cfg.BATCH_SIZE * 2, train=False, device=run.device,
                               num_workers=cfg.NUM_WORKERS),
        loss_fn=nn.BCEWithLogitsLoss() if comp.multilabel else nn.CrossEntropyLoss(label_smoothing=cfg.LABEL_SMOOTHING),
        val_ids=va["id"].tolist(), val_targets=y[val_mask],
        make_scheduler=lambda opt, total: one_cycle(opt, cfg.LR, total, pct_start=0.2),
        meta=meta, sync_bn=cfg.SYNC_BN)


@dataclass
class Trained(CVResult):
    """What `train` made: the deep model's folds (a CVResult) and the classical stages' results."""

    classical: ClassicalResult | None = None
    frozen: ClassicalResult | None = None     # the classical model on frozen pretrained embeddings


def train(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> Trained:
    """The classical stage first (seconds: downsized pixels + scikit-learn on the same folds, see
    `tasks.classical`; with pretrained weights at hand also on frozen embeddings, `tasks.frozen`),
    then every unfinished fold of the deep model inside the budget; finished
    folds are kept, interrupted ones resume exactly where their last checkpoint left them.

    With several processes (DEVICES) the deep model trains in torchrun workers (`cv.train_in_workers`);
    run.json records `world_size` and `backend` either way."""
    classical = classical_stage(data, folds, cfg, run)
    world = distributed.plan_world(cfg.DEVICES, device=cfg.DEVICE)
    world.batch_per_process(cfg.BATCH_SIZE)
    run.record.update(world_size=world.processes, backend=world.backend)
    if (note := distributed.sync_bn_note(cfg.SYNC_BN, world)) is not None:
        run.log(note)
    if world.distributed:  # the notebook process keeps off the GPUs while workers train: embeddings come after
        _submit_classical(data, folds, {"classical": classical}, cfg, run)
        if frozen.backbone_weights(cfg) is not None:
            run.budget.reserve_share(frozen.SHARE_NAME, frozen.SHARE)
        cv = train_in_workers(_worker_spec(data, cfg, run), run, world)
        run.budget.release(frozen.SHARE_NAME)
        embedded = frozen.stage(data, folds, cfg, run)
    else:
        embedded = frozen.stage(data, folds, cfg, run)
        _submit_classical(data, folds, {"classical": classical, frozen.CANDIDATE: embedded}, cfg, run)
        cv = _train_deep(data, folds, cfg, run)
    check_unreadable(data, run)
    run.save()
    return Trained(**{f.name: getattr(cv, f.name) for f in dataclasses.fields(CVResult)}, classical=classical,
                   frozen=embedded)


def _train_deep(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> CVResult:
    """The deep model: its choice, then every unfinished fold (`cv.train_folds`); the same code in one
    process and in each of several."""
    cfg = choose_model(data, folds, cfg, run)
    timed = run.record[MODEL_CHOICE].get("timed")  # the chosen rung's pace, measured in this session
    n_folds = cfg.TRAIN_FOLDS or cfg.FOLDS
    n_tta = len(_tta(cfg.TTA))
    cv = train_folds(
        run, n_folds=n_folds, setup=lambda k: _setup_fold(data, folds, cfg, run, k),
        metric=get_metric(data.metric), max_epochs=cfg.EPOCHS, min_epochs=cfg.MIN_EPOCHS,
        options=LoopOptions(activation="sigmoid" if data.multilabel else "softmax"),
        max_new_folds=cfg.FOLDS_PER_SESSION, patience=cfg.PATIENCE, checkpoint_every=cfg.CHECKPOINT_EVERY,
        predict_items=test_rows(data, cfg, run) * n_folds * (1 + n_tta), predict_models=n_folds,
        expected_meta=lambda k: _fold_meta(cfg, data, k),
        timed=None if timed is None else (timed["epoch_s"], timed["eval_item_s"]))
    return cv


def _worker_spec(data: Competition, cfg: Config, run: Run) -> dict[str, Any]:
    """What a worker re-creates the config, run and data from (`train_worker`)."""
    return worker_spec("classification", run, {**cfg.as_dict(), "DATA_DIR": str(data.data_dir)},
                       unreadable=dict(data.unreadable))


def write_worker_spec(data: Competition, cfg: Config, run: Run, *, backend: str = "nccl") -> Path:
    """Write `<OUTPUT_DIR>/workers/spec.json` without training, for starting the workers by hand (two
    machines: `torchrun --nnodes 2 ... -m kagglekit_nb.worker SPEC`, see the README); `backend` is "nccl"
    for GPUs, "gloo" for CPUs. Returns its path."""
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend={backend!r} is not valid: use 'nccl' (GPUs) or 'gloo' (CPUs).")
    world = distributed.World(2, "cuda" if backend == "nccl" else "cpu", backend)
    path = distributed.write_spec(_worker_spec(data, cfg, run), world, folder=run.dir)
    run.save()
    return path


def train_worker(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One training process of a multi-process run (`python -m kagglekit_nb.worker`): the config, run and
    data re-created from the spec the notebook process wrote (`train`), then `_train_deep`.
    Returns where this process stopped (fold -> optimizer steps), which rank 0 writes to result.json."""
    cfg = Config(**spec["config"])
    run = join_run(spec["run"], device=device)
    data = _read_again(cfg, run, spec.get("unreadable") or {})
    folds = make_folds(data, cfg, run)  # folds.csv, made by the notebook process
    return worker_result(_train_deep(data, folds, cfg, run))


def _read_again(cfg: Config, run: Run, unreadable: dict[str, str]) -> Competition:
    """The competition `load` read in the notebook process, read again quietly (nothing is written):
    its classes must be those saved in labels.json."""
    from .. import env

    with distributed.main_first():  # archives or pixel rows are extracted once: rank 0 checks first
        comp = read(Path(cfg.DATA_DIR), Overrides.from_config(cfg), scratch=env.make_scratch_dir(run.platform, log=run.log),
                    log=lambda message: None)
    probe_channels(comp, _channels)
    comp.unreadable.update({**unreadable, **_journal(run.dir)})
    saved = json.loads((run.dir / CLASSES_FILE).read_text())["classes"]
    if saved != comp.classes:
        raise ValueError(f"{run.dir / CLASSES_FILE} holds classes {saved[:10]} but the workers read "
                         f"{comp.classes[:10]} from {cfg.DATA_DIR}: the data changed while the run was going on.")
    return comp


def test_rows(data: Competition, cfg: Config, run: Run | None = None) -> int:
    """The test images prediction is sized for: TEST_ROWS when a code competition's rerun scores a hidden
    test set larger than the visible one (the rerun has the same time limit), else the sample's rows."""
    return sized_test_rows(run, len(data.test), cfg.TEST_ROWS, "test images")


def _ladder(cfg: Config) -> list[tuple[str, int]]:
    """The rungs MODEL="auto" climbs: LADDER, or its models at IMG_SIZE when that is set."""
    if cfg.IMG_SIZE is None:
        return list(LADDER)
    rungs: list[tuple[str, int]] = []
    for name, _ in LADDER:
        if not rungs or rungs[-1][0] != name:
            rungs.append((name, cfg.IMG_SIZE))
    return rungs


def _saved_choice(run: Run, n_folds: int) -> dict[str, Any] | None:
    """The model an earlier session of this run folder trains: its run.json record, else the meta of
    any fold checkpoint (run.json lost or torn). None for a new run."""
    saved = (run.previous or {}).get(MODEL_CHOICE)
    if isinstance(saved, dict) and saved.get("model") and saved.get("img_size"):
        return saved
    for k in range(n_folds):
        directory = fold_dir(run, k)
        found = _ckpt.find_latest(directory, log=None) if directory.exists() else None
        if found is not None:
            meta = _ckpt.read_meta(found)
            if meta.get("model") and meta.get("img_size"):
                return {"model": meta["model"], "img_size": int(meta["img_size"]), "chosen_by": f"checkpoints of fold {k}"}
    return None


def choose_model(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> Config:
    """`cfg` with the model and image size this run trains (recorded in run.json `model_choice`).

    An explicit MODEL wins (IMG_SIZE None: its LADDER size, else DEFAULT_IMG_SIZE). With MODEL="auto"
    a run folder keeps the model an earlier session chose (a resume never switches models); a new
    run times each rung of the ladder on one batch of fold 0 (`cv.time_setup`), cheapest first, and
    stops at the first that cannot fit; the budget picks the strongest rung that fits
    (`Budget.pick_rung`) and the log shows why, as a table.
    """
    choice = _choice(data, folds, cfg, run) if distributed.is_main() else None
    choice = distributed.broadcast_object(choice)  # several processes: rank 0 chose (and timed) for all
    run.record[MODEL_CHOICE] = choice
    run.save()
    return dataclasses.replace(cfg, MODEL=choice["model"], IMG_SIZE=int(choice["img_size"]))


def _choice(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> dict[str, Any]:
    n_folds = cfg.TRAIN_FOLDS or cfg.FOLDS
    if cfg.MODEL != AUTO:
        size = cfg.IMG_SIZE or next((s for m, s in LADDER if m == cfg.MODEL), DEFAULT_IMG_SIZE)
        return {"model": cfg.MODEL, "img_size": size, "chosen_by": "MODEL"}
    if (saved := _saved_choice(run, n_folds)) is not None:
        size = cfg.IMG_SIZE or int(saved["img_size"])
        run.log(f"MODEL='auto': this run trains {saved['model']} at {size} px, as chosen before "
                f"({saved.get('chosen_by', 'run.json')})")
        return {**{k: v for k, v in saved.items() if k != "timed"}, "img_size": size}  # timed on another machine
    return _climb(data, folds, cfg, run, n_folds)


def _climb(data: Competition, folds: pd.Series, cfg: Config, run: Run, n_folds: int) -> dict[str, Any]:
    """Time the rungs cheapest first until one does not fit; the budget picks the strongest that does."""
    rungs = _ladder(cfg)
    to_train = min(n_folds, cfg.FOLDS_PER_SESSION or n_folds)
    items = test_rows(data, cfg, run) * n_folds * (1 + len(_tta(cfg.TTA)))
    costs: list[float | None] = [None] * len(rungs)
    items_s: list[float] = [0.0] * len(rungs)
    other: list[float] = [0.0] * len(rungs)
    with run.budget.timed("model choice"):
        for i, (name, size) in enumerate(rungs):
            fs = _setup_fold(data, folds, dataclasses.replace(cfg, MODEL=name, IMG_SIZE=size), run, 0, timing=True)
            costs[i], items_s[i] = time_setup(run, fs)
            del fs
            other[i] = run.budget.predict_need(items=items, item_s=items_s[i], models=n_folds)
            pick = run.budget.pick_rung(costs, folds=to_train, max_epochs=cfg.EPOCHS, min_epochs=cfg.MIN_EPOCHS,
                                        other_s=other)
            if not pick.fits[i]:
                break
    name, size = rungs[pick.index]
    left = run.budget.training_left()
    rows = [("rung", "model", "img size", "epoch", f"{to_train} folds x {pick.epochs} epochs + predict", "fits")]
    for i, (m, s) in enumerate(rungs):
        rows.append((str(i), m, str(s), "-" if costs[i] is None else f"~{costs[i]:.1f}s",
                     "-" if pick.need_s[i] is None else f"{pick.need_s[i]:.0f}s",
                     {True: "yes", False: "no", None: "not timed"}[pick.fits[i]]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    table = "\n".join("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
    why = ("the strongest rung that fits" if pick.fits[pick.index]
           else "no rung fits: the smallest, and the plan trains fewer epochs or folds")
    run.log(f"MODEL='auto': {name} at {size} px (rung {pick.index}), {why}; training time left "
            + ("unlimited" if not math.isfinite(left) else f"{left:.0f}s") + f":\n{table}")
    return {"model": name, "img_size": size, "chosen_by": "ladder", "rung": pick.index,
            "epochs_needed": pick.epochs, "timed": {"epoch_s": costs[pick.index], "eval_item_s": items_s[pick.index]},
            "rungs": [{"model": m, "img_size": s, "epoch_s": None if c is None else round(c, 3),
                       "fits": f} for (m, s), c, f in zip(rungs, costs, pick.fits)]}


def _classical_key(data: Competition, folds: pd.Series) -> str:
    """What the saved classical stage must match to be reused: the rows, classes and folds."""
    import hashlib

    text = "|".join([*data.train["id"], "#", *data.test["id"], "#", *data.classes, "#",
                     *map(str, folds.to_numpy()), "#", str(classical.PIXELS), "pixels+mean+std+shifts"])
    return hashlib.sha1(text.encode()).hexdigest()


def classical_stage(data: Competition, folds: pd.Series, cfg: Config, run: Run) -> ClassicalResult | None:
    """Downsized pixels (PIXELS x PIXELS, per-image normalised) and a scikit-learn model with
    probabilities fit on the saved folds: out-of-fold and test probabilities in seconds, saved in
    the run folder (`classical.npz`, reused by a later session). It also decodes every image, so
    unreadable ones are found (and the MAX_UNREADABLE cap applied) before the deep model trains.
    Skipped (None) when the budget cannot fit it."""
    path = run.dir / CLASSICAL_FILE
    key = _classical_key(data, folds)
    metric = get_metric(data.metric)
    result = ClassicalResult.load(path, key=key)
    if result is not None:
        run.record["classical"] = result.summary()
        run.log(f"classical stage: reused {path.name} (OOF {metric.name} {_fmt(result.score)})")
        return result
    colour = data.in_chans == 3
    mode = "RGB" if colour else "L"
    paths = data.train["path"].tolist() + data.test["path"].tolist()
    t0 = run.budget.clock()
    probe, _ = classical.pixel_features(paths[:32], lambda p: read_image(p, mode), colour=colour)
    run.budget.plan_pace("classical_read", (run.budget.clock() - t0) / max(1, len(probe)))
    why = run.budget.stop_reason(run.budget.need("classical_read", len(paths)))
    if why:
        run.log(f"classical stage skipped: {why}")
        run.record["classical"] = {"skipped": why}
        return None
    with run.budget.timed("classical"):
        X_all, bad = classical.pixel_features(paths, lambda p: read_image(p, mode), colour=colour)
        data.unreadable.update({paths[i]: reason for i, reason in bad.items()})
        check_unreadable(data, run)
        n = len(data.train)
        X, X_test = X_all[:n], X_all[n:]
        y = data.y
        channels = 3 if colour else 1
        fold_s = classical.estimate_s(X, y, cfg.FOLDS, cfg.SEED, channels=channels)
        result = classical.fit_predict(X, y, folds.to_numpy(), X_test, n_classes=data.n_classes, metric=metric,
                                       seed=cfg.SEED, skip=[i for i in bad if i < n],
                                       skip_test=[i - n for i in bad if i >= n], budget=run.budget, fold_s=fold_s,
                                       channels=channels)
    if result.test is None:
        run.log(f"classical stage: no fold fitted ({result.stop_reason})")
        run.record["classical"] = result.summary()
        return None
    result.save(path, key)
    run.record["classical"] = result.summary()
    run.log(f"classical stage ({result.model} on {classical.PIXELS}x{classical.PIXELS} "
            f"{'colour' if colour else 'grey'} pixels): OOF {metric.name} {_fmt(result.score)} in "
            f"{result.seconds:.1f}s, folds {result.folds_done}")
    return result


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.4f}"


# ----------------------------------------------------------------------------- predict & submit


def predict(data: Competition, models: CVResult | None, cfg: Config, run: Run) -> np.ndarray | None:
    """The test probabilities of whichever candidate scores best out of fold by METRIC (`blend.choose`):
    the class prior (the baseline), the classical stage, the deep model, or the OOF-weighted blend of
    the last two. None when the prior wins (or nothing was trained): the baseline is submitted.

    The deep model's probabilities are the average over every fold model that exists (best epoch,
    else the last checkpoint of an interrupted fold) and the TTA views. Everything is read from the
    run folder (fold models, `oof_fold<k>.csv`, `classical.npz`), so `models` may be None: a session
    that only predicts finds what earlier sessions trained. Each candidate's OOF score and the one
    submitted go to run.json (`candidates`, `submitted`); `candidates(run)` shows them as a table.
    The submitted candidate's OOF and test probabilities go to `predictions.npz` (`ensemble`, blends).
    """
    from ..blend import choose
    from ..ensemble import save_predictions

    metric = get_metric(data.metric)
    y = data.y
    fold_of = _saved_folds(data, run)
    prior = _prior(data)
    oofs: dict[str, np.ndarray | None] = {"baseline": classical.prior_oof(y, fold_of, data.n_classes)}
    tests: dict[str, np.ndarray] = {"baseline": np.tile(prior, (len(data.test), 1))}
    stage = models.classical if isinstance(models, Trained) else None
    stage = stage or _saved_classical(data, run)
    oofs["classical"] = None if stage is None else stage.oof
    if stage is not None:
        tests["classical"] = stage.test
    embedded = models.frozen if isinstance(models, Trained) else None
    embedded = embedded or frozen.saved(data, run)
    if embedded is not None:
        oofs[frozen.CANDIDATE], tests[frozen.CANDIDATE] = embedded.oof, embedded.test
    deep = _predict_deep(data, cfg, run)
    oofs["deep"] = None if deep is None else _deep_oof(data, run, deep[1])
    if deep is not None:
        tests["deep"] = deep[0]
    bad_train = data.train["path"].isin(list(data.unreadable)).to_numpy()
    bad_test = data.test["path"].isin(list(data.unreadable)).to_numpy()
    for name in list(oofs):  # unreadable images: every candidate predicts the prior there
        if oofs[name] is not None:
            oofs[name] = np.where(bad_train[:, None] & np.isfinite(oofs[name]), oofs["baseline"], oofs[name])
        if name in tests:
            tests[name] = np.where(bad_test[:, None], prior, tests[name])
    choice = choose(oofs, y, metric)
    run.record["candidates"] = {n: choice.scores.get(n) for n in (*oofs, "blend")
                                if oofs.get(n) is not None or n in choice.scores}
    run.record["submitted"] = choice.name
    run.record["candidates_rows"] = choice.rows
    if choice.weights:
        run.record["blend_weights"] = choice.weights
    run.log(f"out-of-fold {metric.name} on {choice.rows} rows: "
            + ", ".join(f"{n} {_fmt(v)}" for n, v in run.record["candidates"].items())
            + f" -> submitting {choice.name}")
    run.save()
    save_predictions(run.dir, train_ids=data.train["id"], targets=y, oof=choice.mix(oofs), test_ids=data.test["id"],
                     test=choice.mix(tests), candidate=choice.name, sample=data.sample_path)  # for blends of runs
    if data.kind == "label_list":  # the decision threshold that scores best out of fold
        run.record["threshold"] = best_threshold(choice.mix(oofs), y, metric)
        run.save()
    if choice.name == "baseline":
        return None
    return choice.mix(tests)


def _saved_folds(data: Competition, run: Run) -> np.ndarray:
    """The fold of every training row from `folds.csv` (all 0 before any split was made: the prior
    is then scored on the whole training set, and no other candidate exists)."""
    path = run.dir / _folds.FOLDS_FILE
    if not path.is_file():
        return np.zeros(len(data.train), dtype=int)
    saved = pd.read_csv(path, dtype={"id": str}).set_index("id")["fold"]
    return saved.reindex(data.train["id"].astype(str)).fillna(-1).astype(int).to_numpy()


def candidates(run: Run | str | Path) -> pd.DataFrame:
    """Each candidate's out-of-fold score (from run.json) and which one was submitted, as a table."""
    folder = Path(run.dir if isinstance(run, Run) else run)
    record = run.record if isinstance(run, Run) else json.loads((folder / "run.json").read_text())
    scores = record.get("candidates") or {}
    return pd.DataFrame({"oof_score": list(scores.values()),
                         "submitted": [n == record.get("submitted") for n in scores]},
                        index=pd.Index(list(scores), name="candidate"))


def _saved_classical(data: Competition, run: Run) -> ClassicalResult | None:
    return ClassicalResult.load(run.dir / CLASSICAL_FILE, shape=(len(data.train), data.n_classes, len(data.test)))


def _deep_oof(data: Competition, run: Run, used_folds: list[int]) -> np.ndarray | None:
    """The deep model's out-of-fold probabilities in train order (NaN rows: folds without a model)."""
    oof, _ = out_of_fold(run)
    oof = oof[oof["fold"].isin(used_folds)]
    if not len(oof):
        return None
    cols = [f"p{c}" for c in range(data.n_classes)]
    out = np.full((len(data.train), data.n_classes), np.nan)
    row = pd.Series(np.arange(len(data.train)), index=data.train["id"].astype(str))
    at = row.reindex(oof["id"].astype(str)).to_numpy()
    keep = ~np.isnan(at)
    out[at[keep].astype(int)] = oof[cols].to_numpy()[keep]
    return out


def _predict_deep(data: Competition, cfg: Config, run: Run) -> tuple[np.ndarray, list[int]] | None:
    """The fold models' mean test probabilities and the folds used; None without a fold model."""
    found = fold_models(run, cfg.TRAIN_FOLDS or cfg.FOLDS)
    missing = sorted(set(range(cfg.TRAIN_FOLDS or cfg.FOLDS)) - {k for k, _, _ in found})
    if missing:
        run.log(f"folds without any model (skipped): {missing}")
    if not found:
        run.log("no trained fold model: the deep model is not a candidate")
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
            ds = _dataset(data.test["path"].tolist(), None,
                          transforms(meta["img_size"], meta["mean"], meta["std"], train=False), meta["in_chans"],
                          data, run)
            loader = make_loader(ds, cfg.BATCH_SIZE * 2, train=False, device=run.device, num_workers=cfg.NUM_WORKERS)
            probs = _predict_loader(model, bar.wrap(loader), device=run.device, tta=_tta(cfg.TTA),
                                    activation="sigmoid" if data.multilabel else "softmax")
            total = probs if total is None else total + probs
    used = [f"{k} ({which})" for k, _, which in found]
    run.log(f"predicted {len(data.test)} test images with fold models {', '.join(used)}, TTA {cfg.TTA}")
    run.record["predicted_with"] = used
    return total / len(found), [k for k, _, _ in found]


def write_submission(data: Competition, preds: np.ndarray | None, cfg: Config, run: Run) -> Path:
    """Write `submission.csv` in the sample's format (ids and row order from the sample): written
    beside it and verified first, it replaces the file there (the emergency baseline written by
    `load`, or the classical stage's) only when valid; an invalid one is reported and not used.

    With `preds=None` (the prior won out of fold, or nothing was trained) the emergency baseline from
    the training prior is written.
    """
    from ..submission import baseline

    if preds is None:
        sub = baseline(_sample(data), train_labels=_train_labels(data), kind=data.submission_kind, labels=_legal(data))
        return _write_verified(data, sub, run, "emergency baseline (training prior)")
    return _write_verified(data, _frame(data, preds, run.record.get("threshold", 0.5)), run, "model")


def _frame(data: Competition, preds: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """The submission in the sample's format (`competition.submission_frame`, shared with blends)."""
    return submission_frame(data.sample, preds, kind=data.kind, classes=data.classes, id_col=data.id_col,
                            target_cols=data.target_cols, positive=data.positive, topk=data.topk,
                            threshold=threshold)


def _prior(data: Competition) -> np.ndarray:
    """The training prior: class frequencies (multi-label: each label's positive rate)."""
    y = data.y
    return y.mean(0) if data.multilabel else np.bincount(y, minlength=data.n_classes) / len(y)


def _sample(data: Competition) -> Any:
    """The sample to verify against: its file, or the frame read from it when it is not UTF-8."""
    return _sample_arg(data.sample_path, data.sample)


def _write_verified(data: Competition, sub: pd.DataFrame, run: Run, what: str) -> Path:
    from ..submission import write_verified

    path = run.dir / "submission.csv"
    with run.budget.timed("write"):
        report = write_verified(sub, path, _sample(data), labels=_legal(data), kind=data.submission_kind)
    record_written(run, report, what, path)
    run.save()
    return path


def _submit_classical(data: Competition, folds: pd.Series, results: dict[str, ClassicalResult | None] | ClassicalResult,
                      cfg: Config, run: Run) -> None:
    """The best classical stage's submission (pixels, or frozen embeddings: `results` by candidate
    name; None: the stage did not run) replaces the baseline, after verification, when its
    out-of-fold score beats the class prior's: the run's first real submission."""
    from ..blend import choose

    if isinstance(results, ClassicalResult):
        results = {"classical": results}
    results = {n: r for n, r in results.items() if r is not None}
    if not results:
        return
    y = data.y
    metric = get_metric(data.metric)
    choice = choose({"baseline": classical.prior_oof(y, folds.to_numpy(), data.n_classes),
                     **{n: r.oof for n, r in results.items()}}, y, metric, blend=())
    if choice.name not in results:
        run.log("the classical stage (" + ", ".join(f"{n} {_fmt(choice.scores.get(n))}" for n in results)
                + f") does not beat the class prior ({_fmt(choice.scores.get('baseline'))}) out of fold: "
                "the baseline stays")
        return
    result = results[choice.name]
    what = "classical stage" if choice.name == "classical" else f"classical stage ({choice.name})"
    test = np.where(data.test["path"].isin(list(data.unreadable)).to_numpy()[:, None], _prior(data), result.test)
    threshold = best_threshold(result.oof, y, metric) if data.kind == "label_list" else 0.5
    path = _write_verified(data, _frame(data, test, threshold), run, what)
    if run.record.get("submission") == what:
        run.log(f"{path} now holds the {what}'s predictions (verified)")


def finish(data: Competition, path: Path, cfg: Config, run: Run) -> Any:
    """Verify the submission against the sample (columns, ids, values, and labels among the classes),
    write verification.json and run.json; an invalid file is replaced by the emergency baseline (the
    training prior) and the cell fails with the reasons. The log shows each candidate's OOF score."""
    if run.record.get("candidates"):
        run.log("out-of-fold scores of the candidates:\n" + candidates(run).to_string())
    return verify_csv(run, path, _sample(data), labels=_legal(data), train_labels=_train_labels(data),
                      kind=data.submission_kind)


# ----------------------------------------------------------------------------- plots


def out_of_fold(run: Run | str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The out-of-fold predictions of every fold that has them (`oof_fold<k>.csv`, the best epoch's
    class probabilities) as one frame with columns id, fold, target, pred (the most probable
    class), p0..pN, and the class names from `labels.json`. The frame is empty while no fold has
    finished an epoch."""
    from ..cv import OOF_FILE

    folder = Path(run.dir if isinstance(run, Run) else run)
    labels_path = folder / CLASSES_FILE
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
    if len(oof) and "target" in oof.columns:
        out["confusion_matrix"] = plots.confusion_matrix(oof["target"].to_numpy(), oof["pred"].to_numpy(),
                                                         classes, run)
    else:
        run.log("no confusion matrix: no fold has out-of-fold predictions yet (no epoch has finished)")
    return out
