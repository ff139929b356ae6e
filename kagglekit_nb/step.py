"""One training step, resolved once per `fit`: what it needs (`_Step`) and what it does.

A batch: zero_grad at the start of an accumulation window, forward + loss under autocast, backward
of loss / window size (DDP's all-reduce skipped but for the window's last batch), and at the
window's end: unscale, clip, optimizer step, GradScaler update, a per-step scheduler. Per-epoch
schedulers step after evaluation (ReduceLROnPlateau with the score).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .loaders import _to
from .options import _autocast

_NULL = contextlib.nullcontext()


@dataclass
class _Step:
    """What one training step needs, resolved once per `fit`."""

    model: nn.Module          # as given (maybe DistributedDataParallel)
    forward: nn.Module        # what is called (maybe compiled)
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    clip: float | None
    params: list[torch.Tensor]
    scheduler: Any            # stepped per optimizer step; None when stepped per epoch
    scheduler_all: Any        # the scheduler whatever its interval (saved and restored with the state)
    channels_last: bool
    no_sync: bool             # skip the gradient all-reduce on all but the last batch of a window


def _train_step(s: _Step, x: Any, y: Any, zero: bool, divisor: int, apply: bool) -> torch.Tensor:
    """One batch: zero_grad at a window's start, forward + loss under autocast, backward of
    loss / window size, and the optimizer step at the window's end. Returns the detached loss."""
    if zero:
        s.optimizer.zero_grad(set_to_none=True)
    x, y = _to(x, s.device, s.channels_last), _to(y, s.device)
    with s.model.no_sync() if s.no_sync and not apply else _NULL:
        with _autocast(s.device, s.dtype):
            loss = s.loss_fn(s.forward(x), y)
        scaled = loss / divisor if divisor != 1 else loss
        (s.scaler.scale(scaled) if s.scaler is not None else scaled).backward()
    if apply:
        _optimizer_step(s)
    return loss.detach()


def _optimizer_step(s: _Step) -> None:
    """Clip (after unscaling), step the optimizer and the GradScaler, then a per-step scheduler."""
    if s.scaler is not None:
        if s.clip is not None:
            s.scaler.unscale_(s.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(s.params, s.clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        if s.clip is not None:
            nn.utils.clip_grad_norm_(s.params, s.clip)
        s.optimizer.step()
    if s.scheduler is not None:
        s.scheduler.step()


def _forget_scaler_step(scaler: torch.amp.GradScaler | None) -> None:
    """Forget the GradScaler's half-done step (gradients unscaled, inf checks made) of a step that
    an out-of-memory error abandoned: the retried step must unscale its own new gradients. Without
    this the retry applies gradients still multiplied by the loss scale (or, with clipping, stops
    at "unscale_() has already been called"). GradScaler has no public reset: `update()` does the
    same, but also moves the scale."""
    if scaler is None:
        return
    from collections import defaultdict

    from torch.amp import grad_scaler

    scaler._per_optimizer_states = defaultdict(grad_scaler._refresh_per_optimizer_state)


def _epoch_scheduler_step(s: _Step, score: float) -> None:
    """After an epoch's evaluation: step a scheduler that steps per epoch (ReduceLROnPlateau with `score`)."""
    if s.scheduler_all is None or s.scheduler is not None:  # none, or stepped per optimizer step
        return
    if isinstance(s.scheduler_all, torch.optim.lr_scheduler.ReduceLROnPlateau):
        s.scheduler_all.step(score)
    else:
        s.scheduler_all.step()


def _use_no_sync(model: nn.Module, accumulate: int, n_batches: int | None) -> bool:
    """Whether to skip DDP's gradient all-reduce on all but the last batch of each accumulation window."""
    return accumulate > 1 and hasattr(model, "no_sync") and n_batches is not None


def _compiled(model: nn.Module, option: bool | str) -> nn.Module:
    """What the step calls: `model`, or `torch.compile(model)` with the backend `option` names."""
    if option is False:
        return model
    return torch.compile(model, backend="inductor" if option is True else option)


def _halve_lr(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Halve every learning rate the optimizer and the scheduler hold (after a non-finite loss)."""
    for g in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if isinstance(g.get(key), torch.Tensor):
                g[key].mul_(0.5)
            elif isinstance(g.get(key), (int, float)):
                g[key] = g[key] / 2
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr / 2 for lr in scheduler.base_lrs]
