"""Optional fine-tuning of the ISIC backbone per fold: out-of-fold image scores for train, the fold
models' mean for test (FINETUNE=True)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ... import distributed
from ...loop import one_cycle
from ...metrics import get_metric
from ...run import Run
from ._time import declare_reserves
from .data import Competition, HDF5Images, ResizeToTensor, _balanced_rows
from .embeddings import _amp, _backbone, _mean_std, _weights

LGBM_SHARE = 0.5   # of the training time left before fine-tuning, kept for LightGBM after it

if TYPE_CHECKING:
    from ...cv import FoldSetup
    from .pipeline import Config

__all__ = ["ImageScores", "finetune"]


@dataclass
class ImageScores:
    """Fine-tuned image scores: out-of-fold for train (NaN where no fold model), fold mean for test."""

    train: np.ndarray
    test: np.ndarray
    folds_used: list[int]


class _FlipResize(ResizeToTensor):
    """ResizeToTensor plus random horizontal and vertical flips (numpy's RNG, seeded per item)."""

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = super().__call__(image)
        dims = [d for d, flip in ((2, np.random.random() < 0.5), (1, np.random.random() < 0.5)) if flip]
        return torch.flip(x, dims=dims) if dims else x


class _Labelled(Dataset):
    """(image, label) of selected rows of an HDF5Images; a skipped image is a blank (mean-colour) one."""

    def __init__(self, images: HDF5Images, labels: np.ndarray, rows: np.ndarray, size: int):
        self.images, self.labels, self.rows, self.size = images, labels, np.asarray(rows), size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[i])
        x = self.images[row]
        if x is None:
            x = torch.zeros(3, self.size, self.size)
        return x, torch.tensor(int(self.labels[row]), dtype=torch.long)


def _finetune_meta(cfg: Config, fold: int) -> dict[str, Any]:
    return {"model": cfg.MODEL, "img_size": cfg.IMG_SIZE, "weights": cfg.WEIGHTS, "fold": fold, "seed": cfg.SEED,
            "lr": cfg.FINETUNE_LR, "batch_size": cfg.BATCH_SIZE, "neg_per_pos": cfg.FINETUNE_NEG_PER_POS,
            "folds": cfg.FOLDS}


def _setup(comp: Competition, folds: pd.Series, cfg: Config, run: Run, k: int, start_weights: Any) -> FoldSetup:
    """Model, optimizer, balanced train loader and loss of fold `k` (each process's share of BATCH_SIZE)."""
    from ...cv import FoldSetup
    from ...loaders import make_loader

    y, fold_of = comp.y, folds.to_numpy()
    ids = comp.train["isic_id"].to_numpy(dtype=str)
    model = _backbone(cfg, num_classes=2, weights=start_weights).to(run.device)
    mean, std = _mean_std(model)
    rng = np.random.default_rng([cfg.SEED, k])
    rows = _balanced_rows(y, np.flatnonzero(fold_of != k), cfg.FINETUNE_NEG_PER_POS, rng)
    val = np.flatnonzero(fold_of == k)
    train_ds = _Labelled(HDF5Images(comp.images["train"], ids, transform=_FlipResize(cfg.IMG_SIZE, mean=mean, std=std),
                                    on_error=cfg.ON_BAD_IMAGE), y, rows, cfg.IMG_SIZE)
    val_ds = _Labelled(HDF5Images(comp.images["train"], ids, transform=ResizeToTensor(cfg.IMG_SIZE, mean=mean, std=std),
                                  on_error=cfg.ON_BAD_IMAGE), y, val, cfg.IMG_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.FINETUNE_LR, weight_decay=1e-4)
    return FoldSetup(
        model=model, optimizer=optimizer,
        train_loader=make_loader(train_ds, cfg.BATCH_SIZE // distributed.world_size(), train=True, seed=cfg.SEED + k,
                                 device=run.device, num_workers=cfg.NUM_WORKERS),  # each process's share
        val_loader=make_loader(val_ds, cfg.BATCH_SIZE, train=False, device=run.device, num_workers=cfg.NUM_WORKERS),
        loss_fn=torch.nn.CrossEntropyLoss(), val_ids=ids[val].tolist(), val_targets=y[val],
        make_scheduler=lambda opt, total: one_cycle(opt, cfg.FINETUNE_LR, total, pct_start=0.2),
        meta={**_finetune_meta(cfg, k), "train_rows": len(rows)})


def _train(comp: Competition, folds: pd.Series, cfg: Config, run: Run, start_weights: Any, test_rows: int) -> Any:
    """`train_folds` over the folds: the same code in one process and in each of several."""
    from ...cv import train_folds

    return train_folds(run, n_folds=cfg.FOLDS, setup=lambda k: _setup(comp, folds, cfg, run, k, start_weights),
                       metric=get_metric("pauc80"), max_epochs=cfg.FINETUNE_EPOCHS, predict_items=test_rows * cfg.FOLDS,
                       predict_models=cfg.FOLDS, expected_meta=lambda k: _finetune_meta(cfg, k))


def train_worker(comp: Competition, folds: pd.Series, cfg: Config, run: Run, spec: dict[str, Any]) -> dict[str, Any]:
    """One of several fine-tuning processes (`pipeline.train_worker` with stage "finetune"): the start
    weights resolved again quietly (rank 0 first: it may fetch them), then `_train`."""
    from ...cv import worker_result

    echo, run.echo = run.echo, (lambda message: None)
    try:
        with distributed.main_first():
            start_weights = _weights(cfg, run)
    finally:
        run.echo = echo
    return worker_result(_train(comp, folds, cfg, run, start_weights, int(spec["test_rows"])))


def finetune(comp: Competition, folds: pd.Series, cfg: Config, run: Run) -> ImageScores | None:
    """Fine-tune the backbone per fold (FINETUNE=True) with balanced sampling; None when off.
    Training runs through `kagglekit_nb.cv.train_folds` (checkpoints, exact resume, budget), in
    torchrun workers with several processes (DEVICES: each step's batch split between them). Each
    training row's score comes from the model of its own fold, which never trained on it (out of
    fold); test scores are averaged over the fold models that exist, here, in one process.
    """
    if not cfg.FINETUNE:
        return None
    from ...cv import OOF_FILE, fold_models, load_fold_model, train_in_workers, worker_spec
    from ...loaders import make_loader
    from ...loop import predict as loop_predict

    ids = comp.train["isic_id"].to_numpy(dtype=str)
    test_rows = declare_reserves(run, len(comp.test), cfg)
    start_weights = _weights(cfg, run)  # resolved and said once; every fold starts from the same weights
    mean, std = _mean_std(_backbone(cfg, num_classes=2, weights=start_weights))
    eval_tf = ResizeToTensor(cfg.IMG_SIZE, mean=mean, std=std)
    world = distributed.plan_world(cfg.DEVICES, device=cfg.DEVICE)
    world.batch_per_process(cfg.BATCH_SIZE)
    n_test = len(comp.test)
    run.budget.reserve_share("lgbm", LGBM_SHARE)  # LightGBM comes after the fine-tuning
    keys = ("cv_score", "folds_done", "folds", "plan", "stop_reason", "resumed_from")
    if world.distributed:
        spec = worker_spec("isic", run, {**cfg.as_dict(), "DATA_DIR": str(comp.data_dir)}, stage="finetune",
                           test_rows=test_rows)
        result = train_in_workers(spec, run, world)
    else:
        result = _train(comp, folds, cfg, run, start_weights, test_rows)
    run.record["finetune"] = {k: run.record.pop(k, None) for k in keys}
    run.budget.release("lgbm")      # LightGBM's time is now
    oof = np.full(len(ids), np.nan)
    position = {i: n for n, i in enumerate(ids)}
    for k in sorted(result.folds):
        path = run.dir / OOF_FILE.format(fold=k)
        if path.exists():
            frame = pd.read_csv(path, dtype={"id": str})
            oof[frame["id"].map(position).to_numpy()] = frame["p1"].to_numpy()
    models = fold_models(run, cfg.FOLDS)
    test = np.full(n_test, np.nan)
    if models:
        with run.budget.timed("predict"):
            images = HDF5Images(comp.images["test"], comp.test["isic_id"], transform=eval_tf,
                                on_error=cfg.ON_BAD_IMAGE)
            loader = make_loader(_Labelled(images, np.zeros(n_test, int), np.arange(n_test), cfg.IMG_SIZE),
                                 cfg.BATCH_SIZE, train=False, device=run.device, num_workers=cfg.NUM_WORKERS)
            total = np.zeros(n_test)
            for k, path, _ in models:
                weights, _meta = load_fold_model(path)
                model = _backbone(cfg, num_classes=2, weights=start_weights).to(run.device)
                model.load_state_dict(weights)
                total += loop_predict(model, loader, device=run.device, autocast=_amp(run.device))[:, 1]
            test = total / len(models)
    run.budget.release("predict")   # done; LightGBM declares its own prediction reserve
    used = [k for k, _, _ in models]
    run.log(f"fine-tuned image scores: out-of-fold for {int(np.isfinite(oof).sum())}/{len(ids)} train rows, "
            f"test averaged over fold models {used}")
    run.save()
    return ImageScores(train=oof, test=test, folds_used=used)
