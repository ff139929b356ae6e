"""The training loop as plain functions: `fit`, `evaluate`, `predict`, and a DataLoader factory.

Correct by construction: gradients are zeroed before each backward, evaluation and prediction run
in eval mode under `torch.inference_mode`, validation and test loaders never shuffle, and the train
loader's order depends only on its seed. Stopping (budget, signals) is asked through one hook,
`should_stop`, checked before every step so a run can end at step granularity.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .metrics import Metric
from .repro import make_generator, seed_worker

__all__ = ["make_loader", "fit", "evaluate", "predict", "FitResult", "default_workers"]

StopHook = Callable[[str], "str | None"]


def default_workers(device: torch.device | str) -> int:
    """DataLoader workers: on CUDA most cores feed the GPU; on a small CPU box workers would
    steal the cores that compute, so decode in the main process there."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.device(device).type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 2)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader with safe defaults: only `train=True` shuffles, with a seeded generator."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"BATCH_SIZE={batch_size!r} must be a positive integer.")
    workers = default_workers(device) if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"NUM_WORKERS={num_workers!r} must be >= 0 (or None for automatic).")
    extra: dict[str, Any] = {}
    if workers > 0:
        extra.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=seed_worker)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=make_generator(seed) if train else None,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        # A last batch of one sample breaks BatchNorm in training; keep every sample at inference.
        drop_last=(train and len(dataset) > batch_size) if drop_last is None else drop_last,
        **extra,
    )


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


@dataclass
class FitResult:
    """What `fit` did: per-epoch history, the best score/epoch/weights, and why it stopped."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_probs: np.ndarray | None = None
    steps: int = 0
    stop_reason: str = "completed"


def _train_epoch(model, loader, optimizer, loss_fn, device, scheduler, should_stop):
    model.train()
    total, count, steps = 0.0, 0, 0
    for x, y in loader:
        if should_stop is not None:
            reason = should_stop("step")
            if reason:
                return total / max(count, 1), steps, reason
        x, y = _to(x, device), _to(y, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
        steps += 1
    return total / max(count, 1), steps, None


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    loss_fn: Callable | None,
    device: torch.device | str,
    metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> dict[str, Any]:
    """Loss, metric score, probabilities and targets over `loader` (eval mode, no grad)."""
    device = torch.device(device)
    model.eval()
    losses, probs, targets = [], [], []
    for x, y in loader:
        x, y = _to(x, device), _to(y, device)
        logits = model(x)
        if loss_fn is not None:
            losses.append(loss_fn(logits, y).item() * len(y))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        targets.append(y.cpu().numpy())
    p, t = np.concatenate(probs), np.concatenate(targets)
    out = {"probs": p, "targets": t, "loss": sum(losses) / len(t) if losses else math.nan}
    out["score"] = metric(t, p) if metric is not None else math.nan
    return out


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | str,
    tta: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> np.ndarray:
    """Class probabilities for every sample of `loader` in order, averaged over the identity and
    each `tta` transform (eval mode, no grad)."""
    device = torch.device(device)
    model.eval()
    out = []
    for batch in loader:
        x = _to(batch[0] if isinstance(batch, (list, tuple)) else batch, device)
        p = torch.softmax(model(x).float(), dim=1)
        for t in tta:
            p += torch.softmax(model(t(x)).float(), dim=1)
        out.append((p / (1 + len(tta))).cpu().numpy())
    return np.concatenate(out)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    epochs: int,
    device: torch.device | str,
    metric: Metric,
    scheduler: Any = None,
    patience: int | None = None,
    should_stop: StopHook | None = None,
    on_epoch_end: Callable[[dict[str, float], FitResult], None] | None = None,
) -> FitResult:
    """Train for up to `epochs`, evaluating after each; keeps the best weights by `metric`
    (its direction decides what "best" means).

    `scheduler` is stepped once per optimizer step. `should_stop(where)` is asked before each step
    and each evaluation; a non-empty answer ends training with that reason.
    """
    device = torch.device(device)
    result = FitResult()
    since_best = 0
    for epoch in range(epochs):
        t0 = time.monotonic()
        train_loss, steps, reason = _train_epoch(
            model, train_loader, optimizer, loss_fn, device, scheduler, should_stop
        )
        result.steps += steps
        if not reason and should_stop is not None:
            reason = should_stop("eval")
        if reason and steps == 0:
            result.stop_reason = reason
            break
        ev = evaluate(model, val_loader, loss_fn=loss_fn, device=device, metric=metric)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": ev["loss"],
            "score": ev["score"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.monotonic() - t0,
            "partial": bool(reason),
        }
        result.history.append(row)
        if result.best_score is None or metric.better(ev["score"], result.best_score):
            result.best_score, result.best_epoch, since_best = ev["score"], epoch + 1, 0
            result.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            result.best_probs = ev["probs"]
        else:
            since_best += 1
        if on_epoch_end is not None:
            on_epoch_end(row, result)
        if reason:
            result.stop_reason = reason
            break
        if patience is not None and since_best > patience:
            result.stop_reason = f"early stopping: no improvement for {since_best} epochs"
            break
    return result

