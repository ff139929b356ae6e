"""The training loop as plain functions: `fit`, `evaluate`, `predict`.

Correct by construction: gradients are zeroed before each backward; accumulation divides the loss
by its window and steps every `accumulate` batches, the last partial window included; autocast
covers the forward pass and the loss, clipping unscales first, schedulers step per optimizer step
or per epoch, ReduceLROnPlateau's mode must match the metric's direction; evaluation and prediction
run in eval mode under `torch.inference_mode`.

Recovered loudly: a non-finite loss (restore + half LR once, then an error), CUDA out-of-memory
(half batch, same effective batch), worker processes that never deliver a batch.

Here: `fit`'s epochs, evaluation, early stopping and recovery. Elsewhere: the switches and what
they decide (`options`), one optimizer step (`step`), loaders and the first-batch watchdog
(`loaders`), the checks before and at the start of training (`preflight`).

Nothing here assumes one process: the model may be wrapped in DistributedDataParallel, the train
sampler may be a DistributedSampler, the loop writes no files and only rank 0 prints. In several
processes each rank evaluates a contiguous share of the validation set (with the plain module, so no
collective waits on the others, and rank 0's BatchNorm statistics), rank 0 gathers the shares in order
and shares the loss and score: every rank then takes the same best-epoch, early-stopping and scheduler
decisions, and no padding sample is counted twice. The probabilities stay on rank 0, which writes the
out-of-fold files. Out of memory in several processes is an error, not a back-off:
one rank at a smaller batch would no longer meet the others at each step.

The per-step cost over a hand-written loop is a few None-checks: the loss is summed as a tensor and
read (one device sync) every `check_every` steps and at the end of the epoch.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .budget import Budget
from .distributed import broadcast_buffers, broadcast_object, gather_to_main, is_main, shard, total, world_size
from .loaders import _count, _dist_on, _loader_len, _rebuild, _to, _watched, _xy
from .metrics import Metric
from .options import (LoopOptions, _autocast, _capability, _check_int, _scheduler_interval, amp_dtype, make_scaler,
                      use_channels_last)
from .preflight import LearningWatch, _check_first_step, _check_setup
from .repro import restore_rng_state, rng_state
from .state import capture_state, cpu_copy, restore_state
from .step import (_compiled, _epoch_scheduler_step, _forget_scaler_step, _halve_lr, _optimizer_step, _Step, _train_step,
                   _use_no_sync)
from .ui import Progress

__all__ = ["FitResult", "fit", "evaluate", "predict", "is_main_process"]

StopHook = Callable[[str], "str | None"]
StepHook = Callable[[int, int], None]
Log = Callable[[str], None]


def is_main_process() -> bool:
    """True in a single process, and on rank 0 of a distributed run (the one that prints and writes)."""
    return is_main()


# --------------------------------------------------------------------------- state


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


# --------------------------------------------------------------------------- schedules


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.2) -> Any:
    """`OneCycleLR` for `total_steps` steps. torch divides by zero when the warm-up ends exactly at step 0
    (pct_start x total_steps == 1, e.g. 5 steps at 0.2, which a tight budget plans): the warm-up then
    takes one step more."""
    if abs(pct_start * total_steps - 1) < 1e-9:
        pct_start = min(1.0, 2 / total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=pct_start)


# --------------------------------------------------------------------------- evaluation

# Logits -> probabilities: one class per row (softmax over the classes) or multi-label (each column a
# probability of its own). The one switch between single- and multi-label outputs; LoopOptions.activation.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: torch.softmax(logits, dim=1),
    "sigmoid": torch.sigmoid,
}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not valid; choose one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    loss_fn: Callable | None,
    device: torch.device | str,
    metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
    activation: str = "softmax",
) -> dict[str, Any]:
    """Loss, metric score, probabilities and targets over a labelled `loader` (eval mode, no grad).
    `activation`: "softmax" (one class per row) or "sigmoid" (multi-label: each column on its own)."""
    to_probs = _activation(activation)
    device = torch.device(device)
    model.eval()
    loss_sum: torch.Tensor | None = None
    probs, targets = [], []
    for batch in loader:
        x, y = _xy(batch, "evaluate")
        x, y = _to(x, device, channels_last), _to(y, device)
        with _autocast(device, autocast):
            logits = model(x)
            loss = None if loss_fn is None else loss_fn(logits, y).float() * _count(y)
        if loss is not None:
            loss_sum = loss if loss_sum is None else loss_sum + loss
        probs.append(to_probs(logits.float()).cpu().numpy())
        targets.append(y.cpu().numpy())
    if not probs:
        raise ValueError("evaluate: the loader yields no batches (an empty validation set?).")
    p, t = np.concatenate(probs), np.concatenate(targets)
    out = {"probs": p, "targets": t, "loss": loss_sum.item() / len(t) if loss_sum is not None else math.nan}
    out["score"] = metric(t, p) if metric is not None else math.nan
    return out


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device | str,
    tta: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
    autocast: torch.dtype | None = None,
    channels_last: bool = False,
    activation: str = "softmax",
) -> np.ndarray:
    """Class probabilities for every sample of `loader` in order, averaged over the identity and
    each `tta` transform (eval mode, no grad); `activation` as in `evaluate`."""
    to_probs = _activation(activation)
    device = torch.device(device)
    model.eval()
    out = []
    for batch in loader:
        x = _to(batch[0] if isinstance(batch, (list, tuple)) else batch, device, channels_last)
        with _autocast(device, autocast):
            p = to_probs(model(x).float())
            for t in tta:
                p += to_probs(model(t(x)).float())
        out.append((p / (1 + len(tta))).cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- fit


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
    warnings: list[str] = field(default_factory=list)
    preflight: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None       # the train batch size at the end (lower after out-of-memory)
    accumulate: int = 1                 # accumulation at the end (higher after out-of-memory)


def _all_finite(value: torch.Tensor) -> bool:
    """Whether `value` is finite in every process (so all of them take the same recovery path)."""
    ok = torch.isfinite(value).all()
    if _dist_on():
        flag = ok.to(torch.int32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = flag[0]
    return bool(ok)


@dataclass
class _Run:
    """The mutable state of one `fit` call."""

    loader: DataLoader
    val_loader: DataLoader
    n_batches: int | None
    accumulate: int
    oom_left: int
    say: Callable[..., None]
    preflight_due: bool
    watchdog_s: float | None
    preflight: dict[str, float] = field(default_factory=dict)
    watch_train: bool = True
    lr_halved: bool = False
    halvings: int = 0
    epochs: int = 0
    progress_every_s: float | None = None   # None: no progress within an epoch
    progress_label: str = ""
    budget: Any = None
    learning: LearningWatch = field(default_factory=LearningWatch)
    val_shard: DataLoader | None = None     # several processes: this rank's share of val_loader


@dataclass
class _Epoch:
    loss_sum: torch.Tensor
    count: int = 0
    steps: int = 0
    batches: int = 0          # batches of complete windows
    finite: bool = True
    oom: bool = False
    reason: str | None = None


def _rng_point(loader: DataLoader) -> tuple[Any, dict[str, Any]]:
    gen = loader.generator
    return (None if gen is None else gen.get_state()), rng_state()


def _rewind(loader: DataLoader, point: tuple[Any, dict[str, Any]]) -> None:
    if point[0] is not None and loader.generator is not None:
        loader.generator.set_state(point[0])
    restore_rng_state(point[1])


def _run_batches(s: _Step, r: _Run, batches: Iterator, n: int | None, k: int, ep: _Epoch, epoch: int,
                 check_every: int, should_stop: StopHook | None, on_step: StepHook | None, t0: float,
                 bar: Progress | None = None) -> None:
    """The hot loop over one epoch's batches (or what is left of them); fills `ep`."""
    window, pos, samples = k, -1, 0
    for i, batch in enumerate(batches):
        if n is not None and i >= n:
            break
        pos = i % k
        if pos == 0:
            if should_stop is not None:
                ep.reason = should_stop("step")
                if ep.reason:
                    return
            window = k if n is None else min(k, n - i)
        x, y = _xy(batch, "fit")
        try:
            loss = _train_step(s, x, y, pos == 0, window, pos == window - 1)
        except torch.OutOfMemoryError:
            ep.oom = True
            return
        ep.loss_sum += loss * _count(y)
        ep.count += _count(y)
        samples += _count(y)
        if bar is not None:
            bar.update()
        if pos == window - 1:
            ep.steps += 1
            ep.batches = i + 1
            _consumed(r, epoch, samples, on_step)
            samples = 0
            if r.preflight_due:
                r.preflight_due = False
                if not _preflight(s, r, loss, time.monotonic() - t0):
                    ep.finite = False
                    return
            if ep.steps % check_every == 0 and not _all_finite(ep.loss_sum):
                ep.finite = False
                return
            pos = -1
    if n is None and pos >= 0:  # unknown length: the last window was partial, its loss divided by k
        for p in s.params:
            if p.grad is not None:
                p.grad.mul_(k / (pos + 1))
        _optimizer_step(s)
        ep.steps += 1
        _consumed(r, epoch, samples, on_step)


def _consumed(r: _Run, epoch: int, samples: int, on_step: StepHook | None) -> None:
    """After an optimizer step: a resumable sampler learns what was trained on, then `on_step`."""
    advance = getattr(r.loader.sampler, "advance", None)
    if advance is not None:
        advance(samples)
    if on_step is not None:
        on_step(epoch, samples)


def _preflight(s: _Step, r: _Run, loss: torch.Tensor, step_s: float) -> bool:
    """After the first optimizer step: `preflight._check_first_step`; False when its loss is not finite."""
    r.val_loader, timings = _check_first_step(
        s.forward, r.val_loader, loss, step_s, device=s.device, dtype=s.dtype, channels_last=s.channels_last,
        watchdog_s=r.watchdog_s, say=r.say, halve=lambda loader: _halve_val(s, r, loader))
    if timings is None:
        return False
    r.preflight = timings
    return True


def _back_off(s: _Step, r: _Run, where: str) -> None:
    """Halve the train batch size and double accumulation after an out-of-memory error."""
    s.optimizer.zero_grad(set_to_none=True)
    _forget_scaler_step(s.scaler)
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    bs = r.loader.batch_size
    if world_size() > 1:
        raise torch.OutOfMemoryError(
            f"out of memory {where} at batch size {bs} per process: lower BATCH_SIZE (or IMG_SIZE), use a "
            "smaller model, or enable mixed precision (amp); then run again to resume from the last checkpoint.")
    if r.oom_left == 0 or bs is None or bs < 2:
        raise torch.OutOfMemoryError(
            f"out of memory {where} at batch size {bs} after {r.halvings} halvings: "
            "lower IMG_SIZE, use a smaller model, or enable mixed precision (amp).")
    r.oom_left -= 1
    r.halvings += 1
    r.loader = _rebuild(r.loader, batch_size=bs // 2)
    if r.n_batches is not None:
        r.n_batches = min(len(r.loader), 2 * r.n_batches)
    r.accumulate *= 2
    s.no_sync = _use_no_sync(s.model, r.accumulate, r.n_batches)
    r.say(f"out of memory {where} at batch size {bs}: retrying with batch size {bs // 2} x accumulate "
          f"{r.accumulate} (the same effective batch).", warning=True)


def _train_epoch(s: _Step, r: _Run, epoch: int, opts: LoopOptions, should_stop: StopHook | None,
                 on_step: StepHook | None, bar: Progress | None = None) -> _Epoch:
    """One epoch; after out-of-memory the rest of it continues at half the batch size."""
    sampler = getattr(r.loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # DistributedSampler: a new order each epoch, the same on every process
        if r.n_batches is not None:  # a resumable sampler restored mid-epoch yields only what is left
            r.n_batches = _loader_len(r.loader)
    start = _rng_point(r.loader)
    ep = _Epoch(loss_sum=torch.zeros((), device=s.device))
    done = 0
    s.forward.train()
    t0 = time.monotonic()
    if bar is not None:  # the running loss is read (one device sync) only when a line is written
        bar.info = lambda: f"train loss {ep.loss_sum.item() / max(ep.count, 1):.4f}"
    while True:
        if r.watch_train:
            r.watch_train = False
            r.loader, batches = _watched(r.loader, opts.watchdog_s, lambda: _rewind(r.loader, start), r.say,
                                         "train")
        else:
            batches = iter(r.loader)
        n = None if r.n_batches is None else r.n_batches - done
        if bar is not None and n is not None:
            bar.total = bar.n + n  # after an out-of-memory back-off the rest comes in more, smaller batches
        _run_batches(s, r, batches, n, r.accumulate, ep, epoch, opts.check_every, should_stop, on_step, t0, bar)
        if not ep.oom:
            return ep
        ep.oom = False
        resumable = hasattr(r.loader.sampler, "advance")
        done = 0 if resumable else 2 * (done + ep.batches)
        ep.batches = 0
        _back_off(s, r, f"in epoch {epoch + 1}")
        if resumable:  # the sampler yields exactly the samples not yet trained on
            r.n_batches = _loader_len(r.loader)
        if done == 0 and ep.steps == 0:
            _rewind(r.loader, start)  # nothing applied yet: the epoch restarts exactly as planned
            ep.loss_sum.zero_()
            ep.count = 0
        else:
            r.say(f"epoch {epoch + 1} continues with its remaining batches in a new order.")


def _epoch_progress(r: _Run, epoch: int) -> Any:
    """The epoch's progress (a context manager): a bar in a live notebook, else a plain line at most
    every `progress_every_s` seconds; nothing when that is None."""
    if r.progress_every_s is None:
        return contextlib.nullcontext()
    return Progress(r.n_batches, f"{r.progress_label} epoch {epoch + 1}/{r.epochs}".strip(), budget=r.budget,
                    every_s=r.progress_every_s, echo=r.say, unit="batch")


def _evaluate(s: _Step, r: _Run, loss_fn: Callable, metric: Metric, activation: str) -> dict[str, Any]:
    """`evaluate`, halving the validation batch size on out-of-memory. In several processes each rank
    evaluates its contiguous share of the validation set with rank 0's BatchNorm statistics (the plain
    module: DDP's forward would wait for the others), rank 0 gathers the shares in order (no padding
    sample, no duplicate), scores them once and every rank gets the loss and score; the probabilities
    and targets are rank 0's alone (None elsewhere). A loader with a batch sampler of its own cannot be
    split: rank 0 evaluates all of it."""
    if world_size() == 1:
        return _evaluate_here(s.forward, s, r, loss_fn, metric, activation)
    model = _unwrap(s.forward)
    if r.val_loader.batch_size is None or not hasattr(r.val_loader.dataset, "__len__"):
        ev = _evaluate_here(model, s, r, loss_fn, metric, activation) if is_main() else None
        shared = broadcast_object(None if ev is None else {"loss": ev["loss"], "score": ev["score"]})
        return ev if ev is not None else {**shared, "probs": None, "targets": None}
    broadcast_buffers(model)
    if r.val_shard is None:
        r.val_shard = _rebuild(r.val_loader, sampler=shard(len(r.val_loader.dataset)))
    part = None
    if len(r.val_shard.sampler):
        ev = _evaluate_here(model, s, r, loss_fn, None, activation, shard=True)
        part = (ev["probs"], ev["targets"], ev["loss"] * len(ev["targets"]))
    parts = [p for p in gather_to_main(part) or () if p is not None]
    shared = None
    if is_main():
        probs, targets = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        loss = math.fsum(p[2] for p in parts) / len(targets)
        shared = {"loss": loss, "score": metric(targets, probs) if metric is not None else math.nan}
    shared = broadcast_object(shared)
    return {**shared, "probs": probs, "targets": targets} if is_main() else {**shared, "probs": None, "targets": None}


def _evaluate_here(model: nn.Module, s: _Step, r: _Run, loss_fn: Callable, metric: Metric | None,
                   activation: str, *, shard: bool = False) -> dict[str, Any]:
    """`evaluate` on the validation loader (`shard`: this rank's share of it), halving its batch size
    on out-of-memory."""
    while True:
        loader = r.val_shard if shard else r.val_loader
        try:
            return evaluate(model, loader, loss_fn=loss_fn, device=s.device, metric=metric,
                            autocast=s.dtype, channels_last=s.channels_last, activation=activation)
        except torch.OutOfMemoryError:
            if shard:
                r.val_shard = _halve_val(s, r, loader)
            else:
                r.val_loader = _halve_val(s, r, loader)


def _halve_val(s: _Step, r: _Run, loader: DataLoader) -> DataLoader:
    """`loader` at half its batch size after out-of-memory in evaluation (one of the retries)."""
    bs = loader.batch_size
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    if r.oom_left == 0 or bs is None or bs < 2:
        raise torch.OutOfMemoryError(f"out of memory in evaluation at batch size {bs}: lower the validation "
                                     "batch size, IMG_SIZE or the model size.")
    r.oom_left -= 1
    loader = _rebuild(loader, batch_size=bs // 2)
    r.say(f"out of memory in evaluation at batch size {bs}: retrying with {bs // 2}.", warning=True)
    return loader


class _Snapshot:
    """The last good state (weights, optimizer, scheduler, scaler, sampler, RNGs, position), kept on
    the CPU in the checkpoint's state format (`kagglekit_nb.state`).

    Taken at the start of training and then at an epoch start when enough time has passed that the
    copy costs under 2% of the training time.
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.where: tuple[Any, ...] = ()
        self.taken = -math.inf
        self.cost = 0.0

    def due(self) -> bool:
        return self.state is None or time.monotonic() - self.taken >= max(60.0, 50.0 * self.cost)

    def take(self, s: _Step, r: _Run, epoch: int, result: FitResult, since_best: int) -> None:
        t0 = time.monotonic()
        self.state = cpu_copy(capture_state(_snapshot_objects(s, r)))
        gen = r.loader.generator
        self.where = (epoch, result.steps, since_best, len(result.history), None if gen is None else gen.get_state())
        self.taken = time.monotonic()
        self.cost = self.taken - t0

    def restore(self, s: _Step, r: _Run, result: FitResult) -> tuple[int, int]:
        restore_state(cpu_copy(self.state), _snapshot_objects(s, r), log=None)  # complete, or it raises
        epoch, steps, since_best, n_history, gen = self.where
        if gen is not None and r.loader.generator is not None:
            r.loader.generator.set_state(gen)
        result.steps = steps
        del result.history[n_history:]
        return epoch, since_best


def _snapshot_objects(s: _Step, r: _Run) -> dict[str, Any]:
    """What the snapshot holds: the model (unwrapped), optimizer, and the scheduler, scaler and
    resumable sampler where there are any."""
    objects = {"model": _unwrap(s.model), "optimizer": s.optimizer, "scheduler": s.scheduler_all,
               "scaler": s.scaler, "sampler": r.loader.sampler if hasattr(r.loader.sampler, "advance") else None}
    return {name: obj for name, obj in objects.items() if obj is not None}


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
    options: LoopOptions | None = None,
    should_stop: StopHook | None = None,
    on_step: StepHook | None = None,
    on_epoch_end: Callable[[dict[str, float], FitResult], None] | None = None,
    log: Log | None = print,
    start_epoch: int = 0,
    resume: FitResult | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress_label: str = "",
    budget: Budget | None = None,
) -> FitResult:
    """Train for up to `epochs`, evaluating after each; keeps the best weights by `metric`
    (its direction decides what "best" means, for early stopping and ReduceLROnPlateau too).

    The model must already be on `device` and the optimizer built from its parameters afterwards.
    `options` (a `LoopOptions`) holds the switches: accumulation, clipping, AMP, early-stopping
    `patience`, the NaN and out-of-memory policies, the watchdog, the progress cadence.
    `should_stop(where)` is asked before each optimizer step ('step') and each evaluation ('eval');
    a non-empty answer ends training with that reason. `on_step(epoch, samples)` is called after each
    optimizer step with the number of samples it consumed; a resumable sampler (make_loader's train
    loaders) is advanced by fit itself, so a checkpoint taken in a hook holds the exact position.
    A sampler with `set_epoch` (DistributedSampler, resumable samplers) gets it before each epoch.
    Warnings go to `log` (rank 0 only) and to `FitResult.warnings`.

    To continue a run, pass `start_epoch` (0-based; a resumable sampler restored mid-epoch continues
    that epoch where it stopped) and `resume`, the history and best score so far; with fp16 AMP pass
    the restored `scaler` too (`make_scaler` builds one to checkpoint), else fit makes its own.

    Progress within an epoch goes to `log` as a plain line at most every `options.progress_every_s`
    seconds (none for shorter epochs; a tqdm bar instead in a live notebook; None turns it off), e.g.
    "fold 2 epoch 3/12: batch 120/400 (30%), 0.35 s/batch, ~1m38s to go, budget left 14m10s,
    train loss 0.4121" with `progress_label="fold 2"` and the run's `budget`. It changes nothing
    that training computes.
    """
    opts = _checked(options, epochs, start_epoch)
    device = torch.device(device)
    result = _continued(resume)
    say = _reporter(result, log)
    s = _prepare_step(model, optimizer, loss_fn, device, metric, scheduler, scaler, opts, say)
    n_batches = _start_position(train_loader, start_epoch, resumed=resume is not None)
    s.no_sync = _use_no_sync(model, opts.accumulate, n_batches)
    r = _Run(loader=train_loader, val_loader=val_loader, n_batches=n_batches, accumulate=opts.accumulate,
             oom_left=opts.oom_retries, say=say, preflight_due=opts.preflight, watchdog_s=opts.watchdog_s,
             epochs=epochs, progress_label=progress_label, budget=budget,
             progress_every_s=opts.progress_every_s if log is not None and is_main_process() else None)
    snapshot = _Snapshot() if opts.nan_policy == "restore" else None
    since_best = 0 if result.best_epoch is None else len(result.history) - result.best_epoch
    epoch = start_epoch
    while epoch < epochs:
        t0 = time.monotonic()
        if snapshot is not None and snapshot.due():
            snapshot.take(s, r, epoch, result, since_best)
        with _epoch_progress(r, epoch) as bar:
            ep = _train_epoch(s, r, epoch, opts, should_stop, on_step, bar)
        result.steps += ep.steps
        result.preflight = r.preflight
        if not ep.finite or not _all_finite(ep.loss_sum):
            epoch, since_best = _recover(s, r, snapshot, result, epoch)
            continue
        reason = ep.reason or (should_stop("eval") if should_stop is not None else None)
        if reason:  # no evaluation of a cut epoch: the time is kept for what the stop asked for
            result.stop_reason = reason
            break
        row, improved = _close_epoch(s, r, result, ep, epoch, metric, opts, t0)
        since_best = 0 if improved else since_best + 1
        if on_epoch_end is not None:
            on_epoch_end(row, result)
        if opts.patience is not None and since_best > opts.patience:
            result.stop_reason = f"early stopping: no improvement for {since_best} epochs"
            break
        epoch += 1
    result.batch_size, result.accumulate = r.loader.batch_size, r.accumulate
    return result


def _checked(options: LoopOptions | None, epochs: int, start_epoch: int) -> LoopOptions:
    """The options to use (the defaults for None), after checking `fit`'s other plain arguments."""
    opts = LoopOptions() if options is None else options
    if not isinstance(opts, LoopOptions):
        raise ValueError(f"options={options!r} must be a LoopOptions.")
    _check_int("epochs", epochs, 0)
    _check_int("start_epoch", start_epoch, 0)
    return opts


def _continued(resume: FitResult | None) -> FitResult:
    """A fresh result, carrying the history, steps and best score of `resume` when given."""
    result = FitResult()
    if resume is not None:
        result.history, result.steps = list(resume.history), resume.steps
        result.best_score, result.best_epoch = resume.best_score, resume.best_epoch
    return result


def _reporter(result: FitResult, log: Log | None) -> Callable[..., None]:
    """`say(message, warning=False)`: to `log` on rank 0; warnings also into `result.warnings`."""

    def say(message: str, warning: bool = False) -> None:
        if warning:
            result.warnings.append(message)
        if log is not None and is_main_process():
            log(("WARNING: " if warning else "") + message)

    return say


def _prepare_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, device: torch.device,
                  metric: Metric, scheduler: Any, scaler: torch.amp.GradScaler | None, opts: LoopOptions,
                  say: Callable[..., None]) -> _Step:
    """Resolve once what every step needs: memory format, placement checks, AMP dtype and scaler,
    when the scheduler steps, the (compiled) forward."""
    interval = _scheduler_interval(scheduler, opts.scheduler_interval, metric)
    cl = use_channels_last(opts.channels_last, device.type)
    if cl and _unwrap(model) is model:  # a wrapped (DDP) model is converted before wrapping, by its owner
        model.to(memory_format=torch.channels_last)
    for w in _check_setup(model, optimizer, device):
        say(w, warning=True)
    if device.type == "cuda":  # the pre-flight memory line reports this fit's peak, not an earlier fold's
        torch.cuda.reset_peak_memory_stats(device)
    dtype = amp_dtype(opts.amp, device.type, _capability(device))
    if scaler is None and dtype == torch.float16:
        scaler = make_scaler(opts, device)
    return _Step(model=model, forward=_compiled(model, opts.compile), optimizer=optimizer, loss_fn=loss_fn,
                 device=device, dtype=dtype, scaler=scaler, clip=opts.clip_grad_norm,
                 params=[p for g in optimizer.param_groups for p in g["params"]],
                 scheduler=scheduler if interval == "step" else None, scheduler_all=scheduler, channels_last=cl,
                 no_sync=False)


def _start_position(loader: DataLoader, start_epoch: int, *, resumed: bool) -> int | None:
    """Put a resumable sampler at `start_epoch` (a resume keeps its position within it); the number of
    batches per epoch (None when unknown). An empty train loader is an error."""
    if hasattr(loader.sampler, "restart"):  # a fresh fit reads whole epochs; a resume keeps its position
        if resumed:
            loader.sampler.set_epoch(start_epoch)
        else:
            loader.sampler.restart(start_epoch)
    n_batches = _loader_len(loader)
    if n_batches == 0:
        raise ValueError(f"train_loader yields no batches ({len(loader.dataset)} samples, batch size "
                         f"{loader.batch_size}, drop_last={loader.drop_last}).")
    return n_batches


def _close_epoch(s: _Step, r: _Run, result: FitResult, ep: _Epoch, epoch: int, metric: Metric, opts: LoopOptions,
                 t0: float) -> tuple[dict[str, float], bool]:
    """Evaluate a finished epoch, record its row, keep the best weights, step a per-epoch scheduler.
    Returns the row and whether the score improved on the best so far."""
    loss_sum, count = total([ep.loss_sum.item(), ep.count])  # every process's share of the epoch
    train_loss = loss_sum / max(count, 1)
    ev = _evaluate(s, r, s.loss_fn, metric, opts.activation)
    row = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": ev["loss"],
        "score": ev["score"],
        "lr": float(s.optimizer.param_groups[0]["lr"]),
        "seconds": time.monotonic() - t0,
    }
    result.history.append(row)
    if opts.learning_check and ev["probs"] is not None:
        warning = r.learning.update(ev["probs"], ev["targets"])
        if warning:
            r.say(warning, warning=True)
    improved = result.best_score is None or metric.better(ev["score"], result.best_score)
    if improved:
        result.best_score, result.best_epoch = ev["score"], epoch + 1
        result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(s.model).state_dict().items()}
        result.best_probs = ev["probs"]
    _epoch_scheduler_step(s, ev["score"])
    return row, improved


def _recover(s: _Step, r: _Run, snapshot: _Snapshot | None, result: FitResult, epoch: int) -> tuple[int, int]:
    """A non-finite loss: restore the last good state and halve the learning rate once; else raise."""
    lrs = ", ".join(f"{float(g['lr']):.3g}" for g in s.optimizer.param_groups)
    if snapshot is None:
        raise FloatingPointError(
            f"the training loss became NaN/inf in epoch {epoch + 1} (learning rate {lrs}); the model's weights are "
            "no longer usable. Lower the learning rate, check the inputs for NaN/inf, or use nan_policy='restore'.")
    back_to, since_best = snapshot.restore(s, r, result)
    if r.lr_halved:
        raise FloatingPointError(
            f"the training loss became NaN/inf again in epoch {epoch + 1}, even at the halved learning rate {lrs}; "
            f"the model is restored to its last good state (start of epoch {back_to + 1}). Lower the learning "
            "rate further, add gradient clipping (clip_grad_norm), or check the inputs and labels for NaN/inf.")
    _halve_lr(s.optimizer, s.scheduler_all)
    r.lr_halved = True
    lrs_now = ", ".join(f"{float(g['lr']):.3g}" for g in s.optimizer.param_groups)
    r.say(f"the training loss became NaN/inf in epoch {epoch + 1} (learning rate {lrs}): restored the last good "
          f"state (start of epoch {back_to + 1}) and halved the learning rate to {lrs_now}; "
          "a second time stops the run.", warning=True)
    return back_to, since_best
