"""Tests for kagglekit_nb.preflight: the smoke step, placement and device checks, the first-step check,
the learning check against the class prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_loop import _fit, _loaders, _model, _Noisy, _same, _weights
from torch import nn

from kagglekit_nb.options import LoopOptions
from kagglekit_nb.preflight import (SmokeReport, _check_first_step, _check_setup, device_warnings, learning_check,
                                    memory_report, smoke_step)


# --------------------------------------------------------------------------- pure checks


def test_learning_check():
    t = np.array([0, 1, 2, 3] * 5)
    uniform = np.full((20, 4), 0.25)
    assert "ln(4) = 1.3863" in learning_check(uniform, t)
    good = np.where(t[:, None] == np.arange(4), 0.7, 0.1)
    assert learning_check(good, t) is None
    assert learning_check(uniform, t.astype(float)) is None  # not class indices
    assert learning_check(uniform, np.array([0, 1, 2, 9] * 5)) is None  # labels outside the classes


def test_device_warnings_and_memory_report():
    assert device_warnings("cuda:0", cuda_available=True, model_device="cuda:0") == []
    (w,) = device_warnings("cuda", cuda_available=True, batch_device="cpu")
    assert "but the batches are on the CPU" in w
    gib = 2**30
    line = memory_report(3 * gib, 4 * gib, 16 * gib)
    assert line == ("GPU memory after the first step: peak 3.00 GiB allocated, 4.00 GiB reserved, "
                    "of 16.00 GiB (19%)")
    assert "close to the limit" in memory_report(15 * gib, 15 * gib, 16 * gib)


# --------------------------------------------------------------------------- before training


def test_check_setup_raises_on_a_stale_optimizer_and_warns_about_frozen_parameters():
    model = _model()
    stale = torch.optim.SGD(_model().parameters(), lr=0.1)  # another instance (a cell re-run out of order)
    with pytest.raises(ValueError, match="optimizer holds 2 of its 2 parameter tensors that are not the model's"):
        _check_setup(model, stale, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"the model's parameters are on cpu but device='meta'"):
        _check_setup(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("meta"))
    only_weight = torch.optim.SGD([model.weight], lr=0.1)
    assert _check_setup(model, only_weight, torch.device("cpu")) == [
        "2 trainable parameters are not in the optimizer and will never change: add them, "
        "or freeze them with requires_grad_(False)."]
    assert _check_setup(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu")) == []


def test_smoke_step_is_timed_and_leaves_no_trace():
    model = _Noisy()
    train_loader, val_loader = _loaders(train_seed=6)
    before = _weights(model)
    torch.manual_seed(3)
    np.random.seed(3)
    report = smoke_step(model, train_loader, val_loader, loss_fn=nn.CrossEntropyLoss(), device="cpu")
    assert isinstance(report, SmokeReport)
    assert report.step_s > 0 and report.eval_s_per_sample > 0 and math.isfinite(report.loss)
    assert _same(_weights(model), before)  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())
    draws = torch.rand(3), np.random.rand(3)
    torch.manual_seed(3)
    np.random.seed(3)
    assert torch.equal(draws[0], torch.rand(3)) and np.array_equal(draws[1], np.random.rand(3))
    labels = lambda loader: [y.tolist() for _, y in loader]
    assert labels(train_loader) == labels(_loaders(train_seed=6)[0])  # the shuffle generator is untouched


def test_smoke_step_raises_on_a_non_finite_loss():
    with pytest.raises(FloatingPointError, match="the first training batch gives loss nan"):
        smoke_step(_model(), *_loaders(), loss_fn=lambda logits, y: F.cross_entropy(logits, y) * float("nan"),
                   device="cpu")


# --------------------------------------------------------------------------- at the first step


def test_preflight_checks_one_validation_batch_and_changes_nothing():
    logged: list[str] = []
    a = _Noisy()
    torch.manual_seed(1)
    result = _fit(a, *_loaders(train_seed=2), log=logged.append)
    b = _Noisy()
    torch.manual_seed(1)
    _fit(b, *_loaders(train_seed=2), options=LoopOptions(preflight=False))
    assert _same(_weights(a), _weights(b))
    assert set(result.preflight) == {"first_step_s", "eval_batch_s"}
    assert any(m.startswith("pre-flight ok: first optimizer step") for m in logged)


def _first_step(val_loader, loss, halve, say=lambda *a, **k: None):
    return _check_first_step(nn.Linear(2, 2), val_loader, loss, 0.5, device=torch.device("cpu"), dtype=None,
                             channels_last=False, watchdog_s=None, say=say, halve=halve)


def test_first_step_check_stops_at_a_non_finite_loss():
    _, val_loader = _loaders()
    loader, timings = _first_step(val_loader, torch.tensor(math.nan), halve=None)
    assert loader is val_loader and timings is None


def test_first_step_check_halves_the_validation_batch_on_out_of_memory():
    _, val_loader = _loaders()

    class OnceOom(nn.Module):
        calls = 0

        def forward(self, x):
            OnceOom.calls += 1
            if OnceOom.calls == 1:
                raise torch.OutOfMemoryError("CUDA out of memory.")
            return x

    halved = []

    def halve(loader):
        halved.append(loader.batch_size)
        return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size // 2)

    said: list[str] = []
    loader, timings = _check_first_step(OnceOom(), val_loader, torch.tensor(0.7), 0.25, device=torch.device("cpu"),
                                        dtype=None, channels_last=False, watchdog_s=None,
                                        say=lambda m, **k: said.append(m), halve=halve)
    assert halved == [16] and loader.batch_size == 8 and OnceOom.calls == 2
    assert set(timings) == {"first_step_s", "eval_batch_s"} and timings["first_step_s"] == 0.25
    assert said == [f"pre-flight ok: first optimizer step 0.25s (incl. the first batch), "
                    f"one validation batch {timings['eval_batch_s']:.2f}s"]


def test_first_step_check_needs_a_validation_batch():
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 2), torch.zeros(0)),
                                        batch_size=4)
    with pytest.raises(ValueError, match="fit: val_loader yields no batches"):
        _first_step(empty, torch.tensor(0.7), halve=None)


def test_learning_watch_decides_on_the_trend():
    from kagglekit_nb.preflight import LearningWatch

    t = np.array([0, 1, 2, 3] * 5)
    uniform = np.full((20, 4), 0.25)

    def confident(p):  # probability p on the true class
        probs = np.full((20, 4), (1 - p) / 3)
        probs[np.arange(20), t] = p
        return probs

    warm = LearningWatch()
    assert warm.update(uniform, t) is None              # epoch 1 at ln(4): a warm-up, no verdict
    assert warm.update(confident(0.6), t) is None       # epoch 2 learnt
    assert warm.update(confident(0.7), t) is None
    stuck = LearningWatch()
    assert stuck.update(uniform, t) is None
    message = stuck.update(uniform, t)
    assert "after 2 epochs, and not improving" in message and "ln(4) = 1.3863" in message
    assert stuck.update(uniform, t) is None             # said once
    slow = LearningWatch()                              # from above ln(4) down to it, improving: no warning
    assert slow.update(confident(0.223), t) is None     # loss 1.50, worse than guessing (a random head)
    assert slow.update(confident(0.255), t) is None     # loss 1.37: at the prior, but 0.13 better
    assert slow.update(uniform, t) is not None          # then flat at ln(4): it is not learning
    assert LearningWatch().update(uniform, t.astype(float)) is None  # not class indices
