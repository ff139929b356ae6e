"""`LoopOptions`, the switches of `fit`, and the pure decisions they drive.

Each switch has a safe default and is validated once, where it enters; what it decides on a given
device (the autocast dtype, channels_last, a GradScaler, when the scheduler steps) is a pure
function here, so `fit`, `smoke_step` and the CV driver all decide it the same way.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from .metrics import Metric

__all__ = ["LoopOptions", "amp_dtype", "use_channels_last", "make_scaler", "plateau_mode"]

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
    learning_check: bool = True          # warn when, after 2+ epochs, the val loss is still at the prior and flat
    oom_retries: int = 4                 # batch-size halvings allowed on out-of-memory
    patience: int | None = None          # stop after this many epochs without a better score; None = never
    progress_every_s: float | None = 30.0  # at most one progress line per this many seconds; None = none
    activation: str = "softmax"          # logits -> probabilities: "softmax" (one class per row) or "sigmoid" (multi-label)

    def __post_init__(self) -> None:
        _check_int("accumulate", self.accumulate, 1)
        _check_int("check_every", self.check_every, 1)
        _check_int("oom_retries", self.oom_retries, 0)
        if self.patience is not None:
            _check_int("patience", self.patience, 0)
        if self.clip_grad_norm is not None and not _positive(self.clip_grad_norm):
            raise ValueError(f"clip_grad_norm={self.clip_grad_norm!r} must be a positive number or None.")
        if self.watchdog_s is not None and not _positive(self.watchdog_s):
            raise ValueError(f"watchdog_s={self.watchdog_s!r} must be a positive number of seconds or None.")
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation={self.activation!r} is not valid; choose softmax or sigmoid.")
        if self.progress_every_s is not None and not _positive(self.progress_every_s):
            raise ValueError(f"progress_every_s={self.progress_every_s!r} must be a positive number of seconds "
                             "or None.")
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


# --------------------------------------------------------------------------- mixed precision, memory format


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


def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return _NULL if dtype is None else torch.autocast(device.type, dtype=dtype)


def use_channels_last(option: bool | None, device_type: str) -> bool:
    """Whether to use the channels_last memory format: `option`, else on for CUDA."""
    return device_type == "cuda" if option is None else bool(option)


def make_scaler(options: LoopOptions | None, device: torch.device | str) -> torch.amp.GradScaler | None:
    """The GradScaler `fit` uses with these options on `device` (fp16 AMP), or None (bf16, fp32)."""
    device = torch.device(device)
    dtype = amp_dtype((options or LoopOptions()).amp, device.type, _capability(device))
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


# --------------------------------------------------------------------------- schedulers


def plateau_mode(metric: Metric) -> str:
    """ReduceLROnPlateau's mode for `metric`: "max" when higher is better, else "min"."""
    return "max" if metric.greater_is_better else "min"


def _scheduler_interval(scheduler: Any, interval: str | None, metric: Metric) -> str:
    """When `scheduler` steps: per optimizer step or per epoch (ReduceLROnPlateau: per epoch, in the
    metric's direction)."""
    if scheduler is None:
        return interval or "step"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        want = plateau_mode(metric)
        if scheduler.mode != want:
            raise ValueError(
                f"scheduler=ReduceLROnPlateau(mode={scheduler.mode!r}) does not fit metric {metric.name!r}, for which "
                f"{'higher' if metric.greater_is_better else 'lower'} is better: it would cut the learning rate "
                f"while the score improves. Use mode={want!r} (kagglekit_nb.options.plateau_mode(metric))."
            )
        if interval == "step":
            raise ValueError("scheduler_interval='step' with ReduceLROnPlateau: it needs the validation score, "
                             "known once per epoch; use 'epoch' or None.")
        return "epoch"
    return interval or "step"
