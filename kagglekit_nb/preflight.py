"""Checks that run before or at the start of training, so that a broken run fails in seconds.

Before: `smoke_step` times one training step and one evaluation batch (for the plan) and leaves no
trace; `_check_setup` raises when the optimizer was built before the model moved and warns about
work on the CPU next to a GPU. At the first optimizer step: its loss is finite, one validation
batch runs, GPU memory is reported (`_check_first_step`). After two or more epochs: `LearningWatch`
warns when the model is still no better than predicting the class frequencies (ln(C) when balanced)
and not improving.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .loaders import _count, _to, _watched, _xy
from .options import LoopOptions, _autocast, _capability, amp_dtype, use_channels_last
from .repro import restore_rng_state, rng_state

__all__ = ["LearningWatch", "SmokeReport", "THREAD_VARS", "fastest_threads", "smoke_step", "thread_choices",
           "threads_fixed", "learning_check", "device_warnings", "memory_report"]


# --------------------------------------------------------------------------- pure checks


def _loss_and_prior(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float, int] | None:
    """(validation NLL, the NLL of predicting the class frequencies, C); None when the targets are not
    class indices of `probs`."""
    p, t = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    if p.ndim != 2 or p.shape[1] < 2 or t.ndim != 1 or len(t) != len(p) or not np.issubdtype(t.dtype, np.integer):
        return None
    c = p.shape[1]
    if len(t) == 0 or t.min() < 0 or t.max() >= c:
        return None
    nll = float(-np.mean(np.log(np.clip(p[np.arange(len(t)), t], 1e-12, None))))
    freq = np.bincount(t, minlength=c) / len(t)
    prior = float(-np.sum(freq[freq > 0] * np.log(freq[freq > 0])))
    return nll, prior, c


def _not_learning_message(nll: float, prior: float, c: int, epochs: int, rtol: float) -> str:
    ln_c = math.log(c)
    if prior >= (1 - rtol) * ln_c:
        base = f"ln({c}) = {ln_c:.4f}, the loss of guessing uniformly"
    else:
        base = (f"{prior:.4f}, the loss of always predicting the class frequencies (ln({c}) = {ln_c:.4f}; "
                "with imbalanced classes accuracy can look high while the model learned nothing)")
    after = "after the first epoch" if epochs == 1 else f"after {epochs} epochs, and not improving,"
    return (f"the model is not learning: validation loss {nll:.4f} {after} is no better than "
            f"{base}. Check that labels match their inputs, the learning rate, the input normalisation, "
            "and that the loss receives logits.")


def learning_check(probs: np.ndarray, targets: np.ndarray, *, rtol: float = 0.02) -> str | None:
    """A warning when this validation loss is no better than predicting the class frequencies.

    For balanced classes that loss is ln(C), the loss of uniform guessing; with imbalance it is the
    entropy of the label distribution, which a model that only learned the majority class reaches.
    None when the model beats it (or when the targets are not class indices). One epoch is no
    verdict (a warm-up epoch sits near ln(C)): `fit` asks `LearningWatch`, which needs a trend.
    """
    found = _loss_and_prior(probs, targets)
    if found is None or found[0] < (1 - rtol) * found[1]:
        return None
    return _not_learning_message(*found, epochs=1, rtol=rtol)


class LearningWatch:
    """Warns once per `fit` when the model is not learning: after `min_epochs` epochs or more, the last
    `min_epochs` validation losses are all no better than predicting the class frequencies (within
    `rtol`), and the latest did not improve on the best before it by `rtol` of that loss.

    A single warm-up epoch near ln(C) is normal (one-cycle schedules start with a small learning rate),
    so one epoch never warns; a run with shuffled labels stays at the prior and does.
    """

    def __init__(self, *, min_epochs: int = 2, rtol: float = 0.02):
        if min_epochs < 1:
            raise ValueError(f"min_epochs={min_epochs!r} must be at least 1.")
        self.min_epochs, self.rtol = min_epochs, rtol
        self.losses: list[float] = []
        self.warned = False

    def update(self, probs: np.ndarray, targets: np.ndarray) -> str | None:
        """Record one epoch's validation predictions; the warning the first time the rule holds."""
        found = _loss_and_prior(probs, targets)
        if found is None:
            return None
        nll, prior, c = found
        self.losses.append(nll)
        if self.warned or len(self.losses) < self.min_epochs:
            return None
        at_prior = all(v >= (1 - self.rtol) * prior for v in self.losses[-self.min_epochs:])
        earlier = self.losses[:-1]
        improving = bool(earlier) and nll < min(earlier) - self.rtol * prior
        if not at_prior or improving:
            return None
        self.warned = True
        return _not_learning_message(nll, prior, c, len(self.losses), self.rtol)


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


# --------------------------------------------------------------------------- before training


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


def _check_setup(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> list[str]:
    """`_check_placement`, then `device_warnings` for this model: what `fit` checks before its first step."""
    warnings = _check_placement(model, optimizer, device)
    first = next(model.parameters(), None)
    return warnings + device_warnings(device, cuda_available=torch.cuda.is_available(),
                                      model_device=None if first is None else first.device)


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


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # set: the user chose torch's thread count


def threads_fixed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user fixed the CPU thread count (one of THREAD_VARS is set): then it is not timed."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in THREAD_VARS)


def thread_choices(n: int) -> list[int]:
    """The torch thread counts worth timing on a CPU with `n` threads: one, half, all. On a shared
    machine the threads of one op wait for each other, so fewer can be much faster (a step on 2 cores
    under a noisy neighbour went from 0.24 s to 3.6 s with two threads)."""
    return sorted({1, max(1, n // 2), max(1, n)})


def fastest_threads(smoke: Callable[[], SmokeReport], choices: list[int]) -> tuple[int, SmokeReport]:
    """Run `smoke` under each of torch's thread counts in `choices`; leave torch at the fastest and
    return it with its report (a tie keeps the earlier, smaller count)."""
    reports: dict[int, SmokeReport] = {}
    for n in choices:
        torch.set_num_threads(n)
        reports[n] = smoke()
    best = min(reports, key=lambda n: reports[n].step_s)
    torch.set_num_threads(best)
    return best, reports[best]


# --------------------------------------------------------------------------- at the first step


def _check_first_step(forward: nn.Module, val_loader: DataLoader, loss: torch.Tensor, step_s: float, *,
                      device: torch.device, dtype: torch.dtype | None, channels_last: bool,
                      watchdog_s: float | None, say: Callable[..., None],
                      halve: Callable[[DataLoader], DataLoader]) -> tuple[DataLoader, dict[str, float] | None]:
    """After the first optimizer step: its loss is finite, one validation batch runs, memory is reported.

    Returns the validation loader to use from now on (rebuilt without workers by the watchdog, or by
    `halve` after out-of-memory) and the timings; None for them when the loss is not finite.
    The extra validation batch shifts no random stream.
    """
    if not math.isfinite(loss.item()):
        return val_loader, None
    point = rng_state()
    while True:
        val_loader, it = _watched(val_loader, watchdog_s, lambda: None, say, "validation")
        t0 = time.monotonic()
        try:
            x, _ = _xy(next(it), "fit (validation loader)")
        except StopIteration:
            raise ValueError("fit: val_loader yields no batches (an empty validation fold?).") from None
        try:
            with torch.inference_mode(), _autocast(device, dtype):
                forward.eval()
                forward(_to(x, device, channels_last))
                _sync(device)
            break
        except torch.OutOfMemoryError:
            val_loader = halve(val_loader)
        finally:
            forward.train()
    eval_s = time.monotonic() - t0
    restore_rng_state(point)
    line = (f"pre-flight ok: first optimizer step {step_s:.2f}s (incl. the first batch), "
            f"one validation batch {eval_s:.2f}s")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        line += "; " + memory_report(torch.cuda.max_memory_allocated(device),
                                     torch.cuda.memory_reserved(device), props.total_memory)
    say(line)
    return val_loader, {"first_step_s": round(step_s, 4), "eval_batch_s": round(eval_s, 4)}
