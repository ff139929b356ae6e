"""The training loop as plain functions: `fit`, `evaluate`, `predict`, and a DataLoader factory.

Correct by construction: gradients are zeroed before each backward; accumulation divides the loss
by its window and steps every `accumulate` batches, the last partial window included; autocast
covers the forward pass and the loss, clipping unscales first, schedulers step per optimizer step
or per epoch, ReduceLROnPlateau's mode must match the metric's direction; evaluation and prediction
run in eval mode under `torch.inference_mode`; validation and test loaders never shuffle.

Loudly detected: an optimizer built before the model moved, a model training on the CPU next to a
GPU, worker processes that never deliver a batch, a non-finite loss (restore + half LR once, then
an error), CUDA out-of-memory (half batch, same effective batch), a model no better than the class
prior after its first epoch, a validation loader without labels (the test set).

Nothing here assumes one process: the model may be wrapped in DistributedDataParallel, the train
sampler may be a DistributedSampler, the loop writes no files and only rank 0 prints.

The per-step cost over a hand-written loop is a few None-checks: the loss is summed as a tensor and
read (one device sync) every `check_every` steps and at the end of the epoch.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .budget import Budget
from .metrics import Metric
from .repro import make_generator, restore_rng_state, rng_state, seed_worker
from .state import capture_state, cpu_copy, restore_state
from .ui import Progress

__all__ = [
    "LoopOptions", "FitResult", "SmokeReport", "fit", "evaluate", "predict", "smoke_step",
    "make_loader", "default_workers", "steps_per_epoch", "amp_dtype", "use_channels_last",
    "plateau_mode", "learning_check", "device_warnings", "memory_report", "is_main_process", "make_scaler",
]

StopHook = Callable[[str], "str | None"]
StepHook = Callable[[int, int], None]
Log = Callable[[str], None]

NAN_POLICIES = ("restore", "raise")
SCHEDULER_INTERVALS = ("step", "epoch")
_NULL = contextlib.nullcontext()


@dataclass(frozen=True)
class LoopOptions:
    """Switches of `fit`, each with a safe default; an invalid value raises ValueError."""

    accumulate: int = 1                  # batches per optimizer step (effective batch = batch x accumulate)
    clip_grad_norm: float | None = None  # max total gradient norm, applied after unscaling; None = no clipping
    amp: bool | str | None = None        # None: bf16 on Ampere+ GPUs, fp16 + GradScaler on older, off on CPU
    scheduler_interval: str | None = None  # "step" or "epoch"; None = "epoch" for ReduceLROnPlateau, else "step"
    channels_last: bool | None = None    # None = on for CUDA (faster convolutions on tensor cores)
    compile: bool | str = False          # torch.compile the model; a string names the backend
    preflight: bool = True               # check the first step, one validation batch, device and GPU memory
    watchdog_s: float | None = 120.0     # workers must deliver the first batch in time, else num_workers=0
    nan_policy: str = "restore"          # "restore": last good state + half LR once, then error; "raise": error
    check_every: int = 100               # optimizer steps between loss checks (one device sync each)
    learning_check: bool = True          # warn when the first epoch's val loss is no better than the prior
    oom_retries: int = 4                 # batch-size halvings allowed on out-of-memory

    def __post_init__(self) -> None:
        _check_int("accumulate", self.accumulate, 1)
        _check_int("check_every", self.check_every, 1)
        _check_int("oom_retries", self.oom_retries, 0)
        if self.clip_grad_norm is not None and not _positive(self.clip_grad_norm):
            raise ValueError(f"clip_grad_norm={self.clip_grad_norm!r} must be a positive number or None.")
        if self.watchdog_s is not None and not _positive(self.watchdog_s):
            raise ValueError(f"watchdog_s={self.watchdog_s!r} must be a positive number of seconds or None.")
        _amp_choice(self.amp)
        if self.scheduler_interval is not None and self.scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval={self.scheduler_interval!r} is not valid; "
                             "use 'step', 'epoch' or None (automatic).")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last={self.channels_last!r} must be True, False or None (automatic).")
        if not (isinstance(self.compile, bool) or (isinstance(self.compile, str) and self.compile)):
            raise ValueError(f"compile={self.compile!r} must be True, False or a torch.compile backend name.")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={self.nan_policy!r} is not valid; "
                             f"choose one of {', '.join(NAN_POLICIES)}.")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


# --------------------------------------------------------------------------- decisions (pure functions)


def _amp_choice(amp: Any) -> str:
    if amp is None:
        return "auto"
    if isinstance(amp, bool):
        return "on" if amp else "off"
    names = {"auto": "auto", "off": "off", "none": "off", "on": "on", "bf16": "bf16", "bfloat16": "bf16",
             "fp16": "fp16", "float16": "fp16"}
    if isinstance(amp, str) and amp.lower() in names:
        return names[amp.lower()]
    raise ValueError(f"amp={amp!r} is not valid; use None (automatic), False, True, 'bf16' or 'fp16'.")


def amp_dtype(amp: bool | str | None, device_type: str,
              capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The autocast dtype for `amp` on a device (None = full precision).

    Automatic: bf16 on CUDA GPUs of compute capability 8.0+ (A100, L4, H100), fp16 (with a GradScaler)
    on older ones (T4, P100), off on the CPU. `capability` is the GPU's (major, minor).

    >>> amp_dtype(None, "cuda", (7, 5))
    torch.float16
    """
    choice = _amp_choice(amp)
    if choice == "off" or (choice == "auto" and device_type != "cuda"):
        return None
    bf16_ok = device_type != "cuda" or (capability is not None and tuple(capability) >= (8, 0))
    if choice in ("auto", "on"):
        return torch.bfloat16 if bf16_ok else torch.float16
    if choice == "bf16" and not bf16_ok:
        raise ValueError(f"amp={amp!r} needs a GPU of compute capability 8.0 or newer; this one is {capability} "
                         "(a T4 is 7.5): use amp='fp16' or None (automatic).")
    return torch.bfloat16 if choice == "bf16" else torch.float16


def use_channels_last(option: bool | None, device_type: str) -> bool:
    """Whether to use the channels_last memory format: `option`, else on for CUDA."""
    return device_type == "cuda" if option is None else bool(option)


def plateau_mode(metric: Metric) -> str:
    """ReduceLROnPlateau's mode for `metric`: "max" when higher is better, else "min"."""
    return "max" if metric.greater_is_better else "min"


def steps_per_epoch(loader: DataLoader, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch of `loader` (the last partial accumulation window counts)."""
    _check_int("accumulate", accumulate, 1)
    return math.ceil(len(loader) / accumulate)


def learning_check(probs: np.ndarray, targets: np.ndarray, *, rtol: float = 0.02) -> str | None:
    """A warning when the validation loss is no better than predicting the class frequencies.

    For balanced classes that loss is ln(C), the loss of uniform guessing; with imbalance it is the
    entropy of the label distribution, which a model that only learned the majority class reaches.
    None when the model beats it (or when the targets are not class indices).
    """
    p, t = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    if p.ndim != 2 or p.shape[1] < 2 or t.ndim != 1 or len(t) != len(p) or not np.issubdtype(t.dtype, np.integer):
        return None
    c = p.shape[1]
    if len(t) == 0 or t.min() < 0 or t.max() >= c:
        return None
    nll = float(-np.mean(np.log(np.clip(p[np.arange(len(t)), t], 1e-12, None))))
    freq = np.bincount(t, minlength=c) / len(t)
    prior = float(-np.sum(freq[freq > 0] * np.log(freq[freq > 0])))
    if nll < (1 - rtol) * prior:
        return None
    ln_c = math.log(c)
    if prior >= (1 - rtol) * ln_c:
        base = f"ln({c}) = {ln_c:.4f}, the loss of guessing uniformly"
    else:
        base = (f"{prior:.4f}, the loss of always predicting the class frequencies (ln({c}) = {ln_c:.4f}; "
                "with imbalanced classes accuracy can look high while the model learned nothing)")
    return (f"the model is not learning: validation loss {nll:.4f} after the first epoch is no better than "
            f"{base}. Check that labels match their inputs, the learning rate, the input normalisation, "
            "and that the loss receives logits.")


def device_warnings(device: torch.device | str, *, cuda_available: bool,
                    model_device: torch.device | str | None = None,
                    batch_device: torch.device | str | None = None) -> list[str]:
    """Warnings for work on the CPU while a CUDA GPU is available (training, model or batches)."""
    if not cuda_available:
        return []
    on_cpu = [what for what, d in (("training runs", device), ("the model is", model_device),
                                   ("the batches are", batch_device))
              if d is not None and torch.device(d).type == "cpu"]
    if not on_cpu:
        return []
    return [f"a CUDA GPU is available but {' and '.join(on_cpu)} on the CPU, many times slower: "
            "pass device='cuda' (or DEVICE=None) and move the model with model.to(device) "
            "before building the optimizer."]


def memory_report(peak_bytes: int, reserved_bytes: int, total_bytes: int) -> str:
    """One line on GPU memory use; flags use above 90% of the card."""
    gib = 2.0**30
    share = peak_bytes / total_bytes if total_bytes else 0.0
    line = (f"GPU memory after the first step: peak {peak_bytes / gib:.2f} GiB allocated, "
            f"{reserved_bytes / gib:.2f} GiB reserved, of {total_bytes / gib:.2f} GiB ({share:.0%})")
    if share > 0.9:
        line += " - close to the limit: an epoch with larger inputs may run out of memory"
    return line


def make_scaler(options: LoopOptions | None, device: torch.device | str) -> torch.amp.GradScaler | None:
    """The GradScaler `fit` uses with these options on `device` (fp16 AMP), or None (bf16, fp32)."""
    device = torch.device(device)
    dtype = amp_dtype((options or LoopOptions()).amp, device.type, _capability(device))
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def is_main_process() -> bool:
    """True in a single process, and on rank 0 of a distributed run (the one that prints and writes)."""
    return not _dist_on() or torch.distributed.get_rank() == 0


def _dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


# --------------------------------------------------------------------------- loaders


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
    distributed: bool | None = None,
) -> DataLoader:
    """A DataLoader with safe defaults: only `train=True` shuffles, through a `ResumableSampler`
    (order from (seed, epoch), resumable mid-epoch) over `IndexSeeded(dataset)` (augmentation from
    (seed, epoch, index), whatever the number of workers).

    Every loader has its own generator (unused for order when not training), so iterating a
    validation loader never draws from the global torch RNG: evaluating more or less often does
    not change the dropout masks of training.

    `distributed=None` splits a train loader across processes (the sampler shards by rank) when
    torch.distributed runs with several processes; validation and test loaders are never split, so
    every process sees the same scores and takes the same best-epoch and early-stopping decisions.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"BATCH_SIZE={batch_size!r} must be a positive integer.")
    workers = default_workers(device) if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"NUM_WORKERS={num_workers!r} must be >= 0 (or None for automatic).")
    split = (train and _dist_on() and torch.distributed.get_world_size() > 1) if distributed is None else distributed
    if split and not train:
        raise ValueError("distributed=True for a validation/test loader: these are never split across processes "
                         "(every process evaluates the whole set); use distributed=None.")
    # A last batch of one sample breaks BatchNorm in training; keep every sample at inference.
    drop = (train and len(dataset) > batch_size) if drop_last is None else drop_last
    sampler = None
    if train:  # order and augmentation a function of (seed, epoch, index): exact mid-epoch resume
        from .sampler import IndexSeeded, ResumableSampler

        replicas, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if split else (1, 0)
        sampler = ResumableSampler(dataset, seed=seed, num_replicas=replicas, rank=rank, with_epoch=True)
        dataset = IndexSeeded(dataset, seed)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=seed_worker)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=make_generator(seed),
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop,
        **extra,
    )


def _rebuild(loader: DataLoader, *, batch_size: int | None = None, num_workers: int | None = None) -> DataLoader:
    """The same loader (dataset, sampler, generator, collate) with another batch size or worker count."""
    workers = loader.num_workers if num_workers is None else num_workers
    kw: dict[str, Any] = dict(num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                              worker_init_fn=loader.worker_init_fn, generator=loader.generator)
    if workers > 0:
        kw.update(persistent_workers=loader.persistent_workers, prefetch_factor=loader.prefetch_factor,
                  timeout=loader.timeout, multiprocessing_context=loader.multiprocessing_context)
    if loader.batch_size is None:
        if batch_size is not None:
            raise ValueError("the loader uses its own batch_sampler, so its batch size cannot be halved: "
                             "lower the batch size of that sampler.")
        return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **kw)
    if not isinstance(loader.dataset, IterableDataset):
        kw["sampler"] = loader.sampler
    return DataLoader(loader.dataset, batch_size=batch_size or loader.batch_size, drop_last=loader.drop_last, **kw)


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _first_batch(iterator: Iterator, limit_s: float) -> Any:
    """`next(iterator)`, or TimeoutError when it takes longer than `limit_s` (the fetch is abandoned)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def fetch() -> None:
        try:
            box["batch"] = next(iterator)
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=fetch, daemon=True, name="kagglekit-first-batch").start()
    if not done.wait(limit_s):
        raise TimeoutError(f"no batch within {limit_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["batch"]


def _watched(loader: DataLoader, limit_s: float | None, restart: Callable[[], None], say: Callable,
             what: str) -> tuple[DataLoader, Iterator]:
    """An iterator over `loader` whose first batch from worker processes must come within `limit_s`;
    otherwise the loader is rebuilt with num_workers=0 (after `restart()` rewinds its RNG)."""
    it = iter(loader)
    if not limit_s or loader.num_workers == 0:
        return loader, it
    try:
        first = _first_batch(it, limit_s)
    except StopIteration:
        return loader, iter(())
    except TimeoutError:
        say(f"the {what} loader's {loader.num_workers} worker processes gave no batch within {limit_s:g}s "
            "(a stuck worker or too little shared memory): rebuilt with num_workers=0, slower but safe. "
            "Set NUM_WORKERS=0 to skip the wait.", warning=True)
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        restart()
        loader = _rebuild(loader, num_workers=0)
        return loader, iter(loader)
    return loader, _chain(first, it)


def _chain(first: Any, rest: Iterator) -> Iterator:
    yield first
    yield from rest


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


# --------------------------------------------------------------------------- evaluation


def _to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4:
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device, channels_last) for k, v in batch.items()}
    return batch


def _xy(batch: Any, where: str) -> tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    got = f"{type(batch).__name__} of {len(batch)}" if isinstance(batch, (list, tuple)) else type(batch).__name__
    raise ValueError(f"{where} needs (inputs, labels) batches but the loader yields a {got}: is it the test "
                     "loader? Train, pick the best epoch and early-stop on a labelled validation fold "
                     "(make_folds), never on the test set; use predict() for the test set.")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return _NULL if dtype is None else torch.autocast(device.type, dtype=dtype)


def _count(y: Any) -> int:
    return y.shape[0] if isinstance(y, torch.Tensor) else len(y)


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
) -> dict[str, Any]:
    """Loss, metric score, probabilities and targets over a labelled `loader` (eval mode, no grad)."""
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
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
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
) -> np.ndarray:
    """Class probabilities for every sample of `loader` in order, averaged over the identity and
    each `tta` transform (eval mode, no grad)."""
    device = torch.device(device)
    model.eval()
    out = []
    for batch in loader:
        x = _to(batch[0] if isinstance(batch, (list, tuple)) else batch, device, channels_last)
        with _autocast(device, autocast):
            p = torch.softmax(model(x).float(), dim=1)
            for t in tta:
                p += torch.softmax(model(t(x)).float(), dim=1)
        out.append((p / (1 + len(tta))).cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- smoke step


@dataclass(frozen=True)
class SmokeReport:
    """Timings of one training forward/backward and one evaluation batch, and the batch's loss."""

    step_s: float
    eval_s_per_sample: float
    loss: float


def _peek(loader: DataLoader) -> Any:
    """The loader's first batch, read in this process (no worker processes started)."""
    if loader.batch_size is not None and not isinstance(loader.dataset, IterableDataset):
        keys = [key for _, key in zip(range(loader.batch_size), loader.sampler)]  # (epoch, index) or index
        return loader.collate_fn([loader.dataset[key] for key in keys])
    return next(iter(loader))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smoke_step(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, *, loss_fn: Callable,
               device: torch.device | str, options: LoopOptions | None = None) -> SmokeReport:
    """One timed forward/backward on a training batch and one timed evaluation batch, before training.

    Leaves no trace: weights, BatchNorm statistics, gradients, every RNG and the train loader's
    shuffle generator are exactly as before, so a run with a smoke step trains like one without.
    Raises FloatingPointError when the loss of that batch is not finite.
    """
    opts = LoopOptions() if options is None else options
    device = torch.device(device)
    dtype = amp_dtype(opts.amp, device.type, _capability(device))
    cl = use_channels_last(opts.channels_last, device.type)
    rng, gen = rng_state(), None if train_loader.generator is None else train_loader.generator.get_state()
    params = list(model.parameters())
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    try:
        x, y = _xy(_peek(train_loader), "smoke_step")
        xv, _ = _xy(_peek(val_loader), "smoke_step")
        x, y, xv = _to(x, device, cl), _to(y, device), _to(xv, device, cl)
        model.train()
        times = []
        # The first call pays one-off setup costs; of the next two the faster counts, because on a
        # shared CPU one step can take several times its usual time, and an inflated estimate plans
        # away epochs (or whole folds) that would have fit; an optimistic one is corrected by the
        # per-step budget checks and the re-planning after each fold.
        for _ in range(3):
            t0 = time.monotonic()
            with _autocast(device, dtype):
                loss = loss_fn(model(x), y)
            loss.backward()
            _sync(device)
            times.append(time.monotonic() - t0)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"the first training batch gives loss {value}: check the inputs for NaN/inf, "
                                     "that the labels are valid class indices, and the learning rate.")
        model.eval()
        with torch.inference_mode(), _autocast(device, dtype):
            evals = []
            for _ in range(2):  # the faster of two, as for the training step
                t0 = time.monotonic()
                model(xv)
                _sync(device)
                evals.append(time.monotonic() - t0)
            per_sample = min(evals) / max(1, _count(xv))
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        for p, g in zip(params, grads):
            p.grad = g
        model.train(was_training)
        restore_rng_state(rng)
        if gen is not None:
            train_loader.generator.set_state(gen)
    return SmokeReport(step_s=min(times[1:]), eval_s_per_sample=per_sample, loss=value)


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


def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_placement(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> list[str]:
    """Raise when the optimizer does not hold the model's own parameters on `device`; warnings else."""
    params = list(model.parameters())
    ids = {id(p) for p in params}
    in_opt = [p for g in optimizer.param_groups for p in g["params"]]
    stray = sum(id(p) not in ids for p in in_opt)
    if stray:
        raise ValueError(
            f"optimizer holds {stray} of its {len(in_opt)} parameter tensors that are not the model's: it was built "
            "before the model was moved or converted (model.to(device)), or for another model instance (a cell "
            "re-run out of order). Build it afterwards: model.to(device); optimizer = AdamW(model.parameters(), ...)."
        )
    off = next((p.device for p in params if not _same_device(p.device, device)), None)
    if off is not None:
        raise ValueError(f"the model's parameters are on {off} but device={str(device)!r}: call model.to(device) "
                         "first, then build the optimizer from model.parameters().")
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and not _same_device(v.device, device):
                raise ValueError(f"the optimizer's state is on {v.device} but device={str(device)!r}: load the "
                                 "optimizer state after model.to(device), with map_location=device.")
    opt_ids = {id(p) for p in in_opt}
    left_out = sum(p.numel() for p in params if p.requires_grad and id(p) not in opt_ids)
    if left_out:
        return [f"{left_out} trainable parameters are not in the optimizer and will never change: add them, "
                "or freeze them with requires_grad_(False)."]
    return []


def _scheduler_interval(scheduler: Any, interval: str | None, metric: Metric) -> str:
    if scheduler is None:
        return interval or "step"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        want = plateau_mode(metric)
        if scheduler.mode != want:
            raise ValueError(
                f"scheduler=ReduceLROnPlateau(mode={scheduler.mode!r}) does not fit metric {metric.name!r}, for which "
                f"{'higher' if metric.greater_is_better else 'lower'} is better: it would cut the learning rate "
                f"while the score improves. Use mode={want!r} (kagglekit_nb.loop.plateau_mode(metric))."
            )
        if interval == "step":
            raise ValueError("scheduler_interval='step' with ReduceLROnPlateau: it needs the validation score, "
                             "known once per epoch; use 'epoch' or None.")
        return "epoch"
    return interval or "step"


def _halve_lr(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    for g in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if isinstance(g.get(key), torch.Tensor):
                g[key].mul_(0.5)
            elif isinstance(g.get(key), (int, float)):
                g[key] = g[key] / 2
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr / 2 for lr in scheduler.base_lrs]


def _all_finite(value: torch.Tensor) -> bool:
    """Whether `value` is finite in every process (so all of them take the same recovery path)."""
    ok = torch.isfinite(value).all()
    if _dist_on():
        flag = ok.to(torch.int32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = flag[0]
    return bool(ok)


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
    """After the first optimizer step: its loss is finite, one validation batch runs, memory is reported."""
    if not math.isfinite(loss.item()):
        return False
    point = rng_state()  # the extra validation batch must not shift any random stream
    while True:
        r.val_loader, it = _watched(r.val_loader, r.watchdog_s, lambda: None, r.say, "validation")
        t0 = time.monotonic()
        try:
            x, _ = _xy(next(it), "fit (validation loader)")
        except StopIteration:
            raise ValueError("fit: val_loader yields no batches (an empty validation fold?).") from None
        try:
            with torch.inference_mode(), _autocast(s.device, s.dtype):
                s.forward.eval()
                s.forward(_to(x, s.device, s.channels_last))
                _sync(s.device)
            break
        except torch.OutOfMemoryError:
            _halve_val(s, r)
        finally:
            s.forward.train()
    eval_s = time.monotonic() - t0
    restore_rng_state(point)
    r.preflight = {"first_step_s": round(step_s, 4), "eval_batch_s": round(eval_s, 4)}
    line = (f"pre-flight ok: first optimizer step {step_s:.2f}s (incl. the first batch), "
            f"one validation batch {eval_s:.2f}s")
    if s.device.type == "cuda":
        props = torch.cuda.get_device_properties(s.device)
        line += "; " + memory_report(torch.cuda.max_memory_allocated(s.device),
                                     torch.cuda.memory_reserved(s.device), props.total_memory)
    r.say(line)
    return True


def _back_off(s: _Step, r: _Run, where: str) -> None:
    """Halve the train batch size and double accumulation after an out-of-memory error."""
    s.optimizer.zero_grad(set_to_none=True)
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    bs = r.loader.batch_size
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
    s.no_sync = hasattr(s.model, "no_sync") and r.n_batches is not None
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
        return _NULL
    return Progress(r.n_batches, f"{r.progress_label} epoch {epoch + 1}/{r.epochs}".strip(), budget=r.budget,
                    every_s=r.progress_every_s, echo=r.say, unit="batch")


def _evaluate(s: _Step, r: _Run, loss_fn: Callable, metric: Metric) -> dict[str, Any]:
    """`evaluate`, halving the validation batch size on out-of-memory."""
    while True:
        try:
            return evaluate(s.forward, r.val_loader, loss_fn=loss_fn, device=s.device, metric=metric,
                            autocast=s.dtype, channels_last=s.channels_last)
        except torch.OutOfMemoryError:
            _halve_val(s, r)


def _halve_val(s: _Step, r: _Run) -> None:
    bs = r.val_loader.batch_size
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    if r.oom_left == 0 or bs is None or bs < 2:
        raise torch.OutOfMemoryError(f"out of memory in evaluation at batch size {bs}: lower the validation "
                                     "batch size, IMG_SIZE or the model size.")
    r.oom_left -= 1
    r.val_loader = _rebuild(r.val_loader, batch_size=bs // 2)
    r.say(f"out of memory in evaluation at batch size {bs}: retrying with {bs // 2}.", warning=True)


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
    patience: int | None = None,
    options: LoopOptions | None = None,
    should_stop: StopHook | None = None,
    on_step: StepHook | None = None,
    on_epoch_end: Callable[[dict[str, float], FitResult], None] | None = None,
    log: Log | None = print,
    start_epoch: int = 0,
    resume: FitResult | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress_every_s: float | None = 30.0,
    progress_label: str = "",
    budget: Budget | None = None,
) -> FitResult:
    """Train for up to `epochs`, evaluating after each; keeps the best weights by `metric`
    (its direction decides what "best" means, for early stopping and ReduceLROnPlateau too).

    The model must already be on `device` and the optimizer built from its parameters afterwards.
    `should_stop(where)` is asked before each optimizer step ('step') and each evaluation ('eval');
    a non-empty answer ends training with that reason. `on_step(epoch, samples)` is called after each
    optimizer step with the number of samples it consumed; a resumable sampler (make_loader's train
    loaders) is advanced by fit itself, so a checkpoint taken in a hook holds the exact position.
    A sampler with `set_epoch` (DistributedSampler, resumable samplers) gets it before each epoch.
    Warnings go to `log` (rank 0 only) and to `FitResult.warnings`.

    To continue a run, pass `start_epoch` (0-based; a resumable sampler restored mid-epoch continues
    that epoch where it stopped) and `resume`, the history and best score so far; with fp16 AMP pass
    the restored `scaler` too (`make_scaler` builds one to checkpoint), else fit makes its own.

    Progress within an epoch goes to `log` as a plain line at most every `progress_every_s` seconds
    (none for shorter epochs; a tqdm bar instead in a live notebook; None turns it off), e.g.
    "fold 2 epoch 3/12: batch 120/400 (30%), 0.35 s/batch, ~1m38s to go, budget left 14m10s,
    train loss 0.4121" with `progress_label="fold 2"` and the run's `budget`. It changes nothing
    that training computes.
    """
    opts = LoopOptions() if options is None else options
    if not isinstance(opts, LoopOptions):
        raise ValueError(f"options={options!r} must be a LoopOptions.")
    _check_int("epochs", epochs, 0)
    if patience is not None:
        _check_int("patience", patience, 0)
    _check_int("start_epoch", start_epoch, 0)
    if progress_every_s is not None and not _positive(progress_every_s):
        raise ValueError(f"progress_every_s={progress_every_s!r} must be a positive number of seconds or None.")
    device = torch.device(device)
    result = FitResult()
    if resume is not None:
        result.history, result.steps = list(resume.history), resume.steps
        result.best_score, result.best_epoch = resume.best_score, resume.best_epoch

    def say(message: str, warning: bool = False) -> None:
        if warning:
            result.warnings.append(message)
        if log is not None and is_main_process():
            log(("WARNING: " if warning else "") + message)

    interval = _scheduler_interval(scheduler, opts.scheduler_interval, metric)
    cl = use_channels_last(opts.channels_last, device.type)
    if cl and _unwrap(model) is model:  # a wrapped (DDP) model is converted before wrapping, by its owner
        model.to(memory_format=torch.channels_last)
    for w in _check_placement(model, optimizer, device):
        say(w, warning=True)
    first = next(model.parameters(), None)
    for w in device_warnings(device, cuda_available=torch.cuda.is_available(),
                             model_device=None if first is None else first.device):
        say(w, warning=True)
    dtype = amp_dtype(opts.amp, device.type, _capability(device))
    if scaler is None and dtype == torch.float16:
        scaler = make_scaler(opts, device)
    if hasattr(train_loader.sampler, "restart"):  # a fresh fit reads whole epochs; a resume keeps its position
        if resume is None:
            train_loader.sampler.restart(start_epoch)
        else:
            train_loader.sampler.set_epoch(start_epoch)
    n_batches = _loader_len(train_loader)
    if n_batches == 0:
        raise ValueError(f"train_loader yields no batches ({len(train_loader.dataset)} samples, batch size "
                         f"{train_loader.batch_size}, drop_last={train_loader.drop_last}).")
    s = _Step(model=model, forward=_compiled(model, opts.compile), optimizer=optimizer, loss_fn=loss_fn,
              device=device, dtype=dtype, scaler=scaler, clip=opts.clip_grad_norm,
              params=[p for g in optimizer.param_groups for p in g["params"]],
              scheduler=scheduler if interval == "step" else None, scheduler_all=scheduler, channels_last=cl,
              no_sync=opts.accumulate > 1 and hasattr(model, "no_sync") and n_batches is not None)
    r = _Run(loader=train_loader, val_loader=val_loader, n_batches=n_batches, accumulate=opts.accumulate,
             oom_left=opts.oom_retries, say=say, preflight_due=opts.preflight, watchdog_s=opts.watchdog_s,
             epochs=epochs, progress_label=progress_label, budget=budget,
             progress_every_s=progress_every_s if log is not None and is_main_process() else None)
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
        train_loss = ep.loss_sum.item() / max(ep.count, 1)
        reason = ep.reason
        if not reason and should_stop is not None:
            reason = should_stop("eval")
        if reason:  # no evaluation of a cut epoch: the time is kept for what the stop asked for
            result.stop_reason = reason
            break
        ev = _evaluate(s, r, loss_fn, metric)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": ev["loss"],
            "score": ev["score"],
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.monotonic() - t0,
        }
        result.history.append(row)
        if opts.learning_check and len(result.history) == 1:
            warning = learning_check(ev["probs"], ev["targets"])
            if warning:
                say(warning, warning=True)
        if result.best_score is None or metric.better(ev["score"], result.best_score):
            result.best_score, result.best_epoch, since_best = ev["score"], epoch + 1, 0
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}
            result.best_probs = ev["probs"]
        else:
            since_best += 1
        if scheduler is not None and interval == "epoch":
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(ev["score"])
            else:
                scheduler.step()
        if on_epoch_end is not None:
            on_epoch_end(row, result)
        if patience is not None and since_best > patience:
            result.stop_reason = f"early stopping: no improvement for {since_best} epochs"
            break
        epoch += 1
    result.batch_size, result.accumulate = r.loader.batch_size, r.accumulate
    return result


def _compiled(model: nn.Module, option: bool | str) -> nn.Module:
    if option is False:
        return model
    return torch.compile(model, backend="inductor" if option is True else option)


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
