"""Tests for kagglekit_nb.step: one training step (accumulation window, scheduler stepping, LR halving)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kagglekit_nb.step import _epoch_scheduler_step, _halve_lr, _Step, _train_step, _use_no_sync


def _step(model: nn.Module, opt: torch.optim.Optimizer, scheduler=None, per_step: bool = True) -> _Step:
    return _Step(model=model, forward=model, optimizer=opt, loss_fn=nn.functional.mse_loss,
                 device=torch.device("cpu"), dtype=None, scaler=None, clip=None,
                 params=[p for g in opt.param_groups for p in g["params"]],
                 scheduler=scheduler if per_step else None, scheduler_all=scheduler, channels_last=False,
                 no_sync=False)


def test_a_window_of_two_batches_steps_once_on_the_mean_gradient():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    start = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = _step(model, opt)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    _train_step(s, x[:4], y[:4], zero=True, divisor=2, apply=False)
    assert torch.equal(model.weight, start)  # no step inside the window
    _train_step(s, x[4:], y[4:], zero=False, divisor=2, apply=True)
    ref = nn.Linear(3, 1, bias=False)
    ref.weight.data.copy_(start)
    nn.functional.mse_loss(ref(x), y).backward()  # one batch of 8 = the mean of two batches of 4
    torch.testing.assert_close(model.weight, start - 0.1 * ref.weight.grad)


def test_only_per_epoch_schedulers_step_at_the_epoch_end():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    per_step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()  # no gradients: changes nothing, but schedulers expect a step before theirs
    _epoch_scheduler_step(_step(model, opt, per_step, per_step=True), 0.0)
    assert opt.param_groups[0]["lr"] == 1.0  # stepped by the optimizer steps, not here
    _epoch_scheduler_step(_step(model, opt, per_step, per_step=False), 0.0)
    assert opt.param_groups[0]["lr"] == 0.5
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0, factor=0.5)
    s = _step(model, opt, plateau, per_step=False)
    _epoch_scheduler_step(s, 0.9)
    _epoch_scheduler_step(s, 0.8)  # worse: the plateau scheduler sees the score and cuts the rate
    assert opt.param_groups[0]["lr"] == 0.25
    _epoch_scheduler_step(_step(model, opt, None), 0.0)  # no scheduler: nothing happens
    assert opt.param_groups[0]["lr"] == 0.25


def test_halve_lr_halves_every_rate_the_optimizer_and_scheduler_hold():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.8, total_steps=10)
    before = dict(opt.param_groups[0])
    _halve_lr(opt, sched)
    group = opt.param_groups[0]
    for key in ("lr", "initial_lr", "max_lr", "min_lr"):
        assert group[key] == pytest.approx(before[key] / 2), key
    assert sched.base_lrs == [pytest.approx(before["initial_lr"] / 2)]


def test_no_sync_only_for_ddp_models_accumulating_over_a_known_length():
    class Ddp(nn.Linear):
        def no_sync(self):
            raise AssertionError("not called here")

    assert _use_no_sync(Ddp(2, 1), 2, 10) is True
    assert _use_no_sync(Ddp(2, 1), 1, 10) is False       # nothing to accumulate
    assert _use_no_sync(Ddp(2, 1), 2, None) is False     # unknown length: the last window is found late
    assert _use_no_sync(nn.Linear(2, 1), 2, 10) is False  # not a DDP model
