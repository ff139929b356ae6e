"""Tests for kagglekit_nb.options: LoopOptions validation and the decisions it drives (AMP, memory format,
GradScaler, scheduler interval)."""

from __future__ import annotations

import pytest
import torch

from kagglekit_nb.metrics import get_metric
from kagglekit_nb.options import (LoopOptions, _scheduler_interval, amp_dtype, make_scaler, plateau_mode,
                                  use_channels_last)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"accumulate": 0}, "accumulate=0 must be an integer >= 1"),
    ({"accumulate": 2.0}, "accumulate=2.0"),
    ({"clip_grad_norm": 0}, "clip_grad_norm=0 must be a positive number"),
    ({"amp": "fp8"}, "amp='fp8' is not valid; use None"),
    ({"scheduler_interval": "batch"}, "scheduler_interval='batch' is not valid; use 'step', 'epoch'"),
    ({"nan_policy": "ignore"}, "nan_policy='ignore' is not valid; choose one of restore, raise"),
    ({"watchdog_s": -1}, "watchdog_s=-1"),
    ({"check_every": 0}, "check_every=0"),
    ({"oom_retries": -1}, "oom_retries=-1"),
    ({"compile": ""}, "compile=''"),
    ({"channels_last": "yes"}, "channels_last='yes'"),
    ({"patience": -1}, "patience=-1 must be an integer >= 0"),
    ({"patience": 1.5}, "patience=1.5"),
    ({"progress_every_s": 0}, "progress_every_s=0 must be a positive number of seconds or None"),
    ({"progress_every_s": float("nan")}, "progress_every_s=nan"),
])
def test_loop_options_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        LoopOptions(**kwargs)


@pytest.mark.parametrize(("amp", "device", "capability", "expected"), [
    (None, "cpu", None, None),              # off on the CPU unless asked
    ("bf16", "cpu", None, torch.bfloat16),
    (True, "cpu", None, torch.bfloat16),
    (None, "cuda", (7, 5), torch.float16),  # T4: fp16 (+ GradScaler)
    (None, "cuda", (6, 0), torch.float16),  # P100
    (None, "cuda", (8, 0), torch.bfloat16),  # A100
    (None, "cuda", (9, 0), torch.bfloat16),  # H100
    ("fp16", "cuda", (9, 0), torch.float16),
    (False, "cuda", (9, 0), None),
    ("off", "cuda", (7, 5), None),
])
def test_amp_dtype_follows_the_device(amp, device, capability, expected):
    assert amp_dtype(amp, device, capability) == expected


def test_amp_bf16_on_an_old_gpu_is_an_error():
    with pytest.raises(ValueError, match=r"amp='bf16' needs a GPU of compute capability 8.0.*\(7, 5\)"):
        amp_dtype("bf16", "cuda", (7, 5))


def test_channels_last_is_automatic_on_cuda_only():
    assert use_channels_last(None, "cuda") is True
    assert use_channels_last(None, "cpu") is False
    assert use_channels_last(True, "cpu") is True and use_channels_last(False, "cuda") is False


def test_plateau_mode_follows_the_metric_direction():
    assert plateau_mode(get_metric("accuracy")) == "max"
    assert plateau_mode(get_metric("log_loss")) == "min"


def test_scheduler_interval():
    acc = get_metric("accuracy")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, 1)
    assert _scheduler_interval(None, None, acc) == "step"
    assert _scheduler_interval(step_lr, None, acc) == "step"
    assert _scheduler_interval(step_lr, "epoch", acc) == "epoch"
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    assert _scheduler_interval(plateau, None, acc) == "epoch"
    with pytest.raises(ValueError, match="scheduler_interval='step' with ReduceLROnPlateau"):
        _scheduler_interval(plateau, "step", acc)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau\(mode='max'\) does not fit metric 'log_loss'"):
        _scheduler_interval(plateau, None, get_metric("log_loss"))


def test_make_scaler_only_for_fp16():
    assert make_scaler(None, "cpu") is None
    assert make_scaler(LoopOptions(), "cpu") is None  # AMP is off on the CPU unless asked
    assert make_scaler(LoopOptions(amp="bf16"), "cpu") is None
    assert isinstance(make_scaler(LoopOptions(amp="fp16"), "cpu"), torch.amp.GradScaler)
