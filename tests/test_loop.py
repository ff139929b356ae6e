"""Tests for kagglekit_nb.loop: fit (best weights, stopping, patience, accumulation, AMP, recovery, resume),
evaluate, predict."""

from __future__ import annotations

import copy
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from kagglekit_nb import loop
from kagglekit_nb.loaders import make_loader, steps_per_epoch
from kagglekit_nb.loop import FitResult, evaluate, fit, predict
from kagglekit_nb.metrics import Metric, get_metric
from kagglekit_nb.options import LoopOptions, make_scaler
from kagglekit_nb.state import capture_state, restore_state


def _separable(n: int = 64, seed: int = 0) -> TensorDataset:
    """Two classes split by the line x0 + x1 = 0, with a margin."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x.sum(1) > 0).long()
    x = x + 0.5 * (2 * y - 1).float()[:, None]  # push each class away from the boundary
    return TensorDataset(x, y)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


def _loaders(train_seed: int = 0, batch_size: int = 8):
    train_ds, val_ds = _separable(64, seed=1), _separable(40, seed=2)
    return (make_loader(train_ds, batch_size, train=True, seed=train_seed, num_workers=0),
            make_loader(val_ds, 16, train=False, num_workers=0))


class _Index(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fit(model, train_loader, val_loader, *, lr=0.5, epochs=2, opt=None, **kw):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    return fit(model, train_loader, val_loader, optimizer=opt, loss_fn=kw.pop("loss_fn", nn.CrossEntropyLoss()),
               epochs=epochs, device="cpu", metric=kw.pop("metric", get_metric("accuracy")),
               log=kw.pop("log", None), **kw)


class _Noisy(nn.Module):
    """BatchNorm and dropout: state and randomness a careless smoke step would disturb."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


# --------------------------------------------------------------------------- fit


def _snapshot_hook(model: nn.Module):
    """An on_epoch_end hook keeping a copy of the weights after every epoch."""
    states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(row, result):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    return states, on_epoch_end


def test_fit_learns_and_keeps_the_best_weights():
    model = _model()
    train_loader, val_loader = _loaders()
    metric = get_metric("accuracy")
    before = evaluate(model, val_loader, loss_fn=None, device="cpu", metric=metric)["score"]
    states, on_epoch_end = _snapshot_hook(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=4,
                 device="cpu", metric=metric, on_epoch_end=on_epoch_end)
    assert isinstance(result, FitResult)
    assert result.stop_reason == "completed"
    assert result.steps == 4 * 8
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert all(set(h) == {"epoch", "train_loss", "val_loss", "score", "lr", "seconds"} for h in result.history)
    assert result.best_score >= 0.95 > before
    scores = [h["score"] for h in result.history]
    assert result.best_score == max(scores)
    assert result.best_epoch == scores.index(max(scores)) + 1
    best = states[result.best_epoch - 1]
    assert all(torch.equal(result.best_state[k], best[k]) for k in best)


def test_fit_best_follows_the_metric_direction_and_is_a_copy():
    """With "higher loss is better" the first epoch wins; its weights must not follow later training."""
    model = _model()
    train_loader, val_loader = _loaders()
    worst = Metric("loss_high", get_metric("log_loss").fn, greater_is_better=True)
    states, on_epoch_end = _snapshot_hook(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=3,
                 device="cpu", metric=worst, on_epoch_end=on_epoch_end)
    scores = [h["score"] for h in result.history]
    assert scores[0] > scores[-1]  # training lowered the loss
    assert result.best_epoch == 1 and result.best_score == scores[0]
    assert all(torch.equal(result.best_state[k], states[0][k]) for k in states[0])
    assert not torch.equal(result.best_state["weight"], model.weight.detach())
    # the kept probabilities are those of the best weights
    again = _model()
    again.load_state_dict(result.best_state)
    probs = evaluate(again, val_loader, loss_fn=None, device="cpu")["probs"]
    np.testing.assert_allclose(result.best_probs, probs, rtol=1e-6)


def test_fit_zeroes_gradients_before_each_backward():
    class Recording(torch.optim.SGD):
        def __init__(self, params):
            super().__init__(params, lr=0.0)
            self.grads: list[torch.Tensor] = []

        def step(self, closure=None):
            self.grads.append(self.param_groups[0]["params"][0].grad.clone())
            return super().step(closure)

    model = _model()
    train_loader, val_loader = _loaders(train_seed=3)
    opt = Recording(model.parameters())
    fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=1,
        device="cpu", metric=get_metric("accuracy"))
    same_order, _ = _loaders(train_seed=3)
    expected = []
    for x, y in same_order:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        expected.append(model.weight.grad.clone())
    assert len(opt.grads) == len(expected) == 8
    for got, want in zip(opt.grads, expected):
        torch.testing.assert_close(got, want)


def test_fit_steps_the_scheduler_once_per_optimizer_step():
    model = _model()
    train_loader, val_loader = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=2,
                 device="cpu", metric=get_metric("accuracy"), scheduler=sched)
    assert result.steps == 16
    assert [h["lr"] for h in result.history] == [pytest.approx(0.5**8), pytest.approx(0.5**16)]


def test_fit_stops_mid_epoch_when_asked_without_evaluating_the_cut_epoch():
    model = _model()
    train_loader, val_loader = _loaders()
    calls: list[str] = []

    def should_stop(where):
        calls.append(where)
        return "budget: out of time" if calls.count("step") > 10 else None

    states, on_epoch_end = _snapshot_hook(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=5,
                 device="cpu", metric=get_metric("accuracy"), should_stop=should_stop, on_epoch_end=on_epoch_end)
    assert result.stop_reason == "budget: out of time"
    assert result.steps == 10  # 8 in epoch 1, 2 in epoch 2, then the 11th step was refused
    assert calls == ["step"] * 8 + ["eval"] + ["step"] * 3
    assert [h["epoch"] for h in result.history] == [1]  # the cut epoch 2 has no row: it was not evaluated
    assert len(states) == 1 and result.best_epoch == 1
    assert _same(result.best_state, states[0])
    assert not torch.equal(model.weight, states[0]["weight"])  # the 2 steps of epoch 2 stay in the model


def test_fit_stop_at_evaluation_ends_training_without_evaluating_that_epoch():
    model = _model()
    weight = model.weight.detach().clone()
    train_loader, val_loader = _loaders()
    calls: list[str] = []

    def should_stop(where):
        calls.append(where)
        return "signal: SIGTERM" if where == "eval" else None

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ended: list[dict] = []
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=5,
                 device="cpu", metric=get_metric("accuracy"), should_stop=should_stop,
                 on_epoch_end=lambda row, r: ended.append(row))
    assert result.stop_reason == "signal: SIGTERM"
    assert result.steps == 8
    assert calls == ["step"] * 8 + ["eval"]
    assert result.history == [] and ended == []
    assert result.best_state is None and result.best_score is None and result.best_epoch is None
    assert not torch.equal(model.weight, weight)  # the epoch's training is kept, for a checkpoint


def test_fit_stopped_before_the_first_step_keeps_nothing():
    model = _model()
    weight = model.weight.detach().clone()
    train_loader, val_loader = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=5,
                 device="cpu", metric=get_metric("accuracy"), should_stop=lambda where: "budget")
    assert result.stop_reason == "budget"
    assert result.steps == 0
    assert result.history == []
    assert result.best_state is None and result.best_score is None
    assert torch.equal(model.weight, weight)


@pytest.mark.parametrize(("patience", "epochs_run"), [(0, 2), (1, 3), (2, 4), (None, 6)])
def test_patience_early_stopping(patience, epochs_run):
    model = _model()
    train_loader, val_loader = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no learning: the score never improves
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=6,
                 device="cpu", metric=get_metric("accuracy"), options=LoopOptions(patience=patience))
    assert len(result.history) == epochs_run
    assert result.best_epoch == 1
    if patience is None:
        assert result.stop_reason == "completed"
    else:
        assert result.stop_reason == f"early stopping: no improvement for {patience + 1} epochs"


# --------------------------------------------------------------------------- evaluate / predict


class _Probe(nn.Module):
    """Identity logits (a linear layer fixed to the identity) that records how it was called."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(dim))
            self.lin.bias.zero_()
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x):
        out = self.lin(x)
        self.calls.append((self.training, out.requires_grad, torch.is_grad_enabled()))
        return out


def _rows(n: int = 10, dim: int = 3) -> torch.Tensor:
    return torch.arange(n * dim, dtype=torch.float32).reshape(n, dim).remainder(7) - 3.0


def test_evaluate_runs_in_eval_mode_without_grad_and_averages_the_loss():
    x = _rows()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    model = _Probe()
    model.train()
    loader = make_loader(TensorDataset(x, y), 4, train=False, num_workers=0)
    out = evaluate(model, loader, loss_fn=nn.CrossEntropyLoss(), device="cpu", metric=get_metric("accuracy"))
    assert not model.training
    assert model.calls and all(c == (False, False, False) for c in model.calls)
    assert out["loss"] == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-6)  # ragged last batch weighted
    np.testing.assert_allclose(out["probs"], torch.softmax(x, 1).numpy(), rtol=1e-6)
    assert out["targets"].tolist() == y.tolist()
    assert out["score"] == pytest.approx((x.argmax(1) == y).float().mean().item())


def test_evaluate_without_loss_or_metric_gives_nan():
    loader = make_loader(TensorDataset(_rows(), torch.zeros(10, dtype=torch.long)), 4, train=False, num_workers=0)
    out = evaluate(_Probe(), loader, loss_fn=None, device="cpu")
    assert math.isnan(out["loss"]) and math.isnan(out["score"])


@pytest.mark.parametrize("tuple_batches", [True, False])
def test_predict_returns_rows_in_order_in_eval_mode_without_grad(tuple_batches):
    x = _rows()
    ds = TensorDataset(x) if tuple_batches else _Tensors(x)
    model = _Probe()
    model.train()
    probs = predict(model, make_loader(ds, 3, train=False, num_workers=0), device="cpu")
    assert not model.training
    assert all(c == (False, False, False) for c in model.calls)
    assert isinstance(probs, np.ndarray) and probs.shape == (10, 3)
    np.testing.assert_allclose(probs, torch.softmax(x, 1).numpy(), rtol=1e-6)


class _Tensors(Dataset):
    """Yields bare tensors (no label), like a test set."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_predict_averages_tta():
    x = _rows()
    loader = make_loader(TensorDataset(x), 4, train=False, num_workers=0)
    negate, double = (lambda t: -t), (lambda t: 2 * t)
    probs = predict(_Probe(), loader, device="cpu", tta=[negate, double])
    expected = (torch.softmax(x, 1) + torch.softmax(-x, 1) + torch.softmax(2 * x, 1)) / 3
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_fit_rejects_bad_arguments():
    train_loader, val_loader = _loaders()
    with pytest.raises(ValueError, match="epochs=-1"):
        _fit(_model(), train_loader, val_loader, epochs=-1)
    with pytest.raises(ValueError, match="options=.*must be a LoopOptions"):
        _fit(_model(), train_loader, val_loader, options={"accumulate": 2})
    empty = make_loader(_Index(3), 4, train=True, num_workers=0, drop_last=True)
    with pytest.raises(ValueError, match="train_loader yields no batches"):
        _fit(_model(), empty, val_loader)


# --------------------------------------------------------------------------- accumulation, clipping, AMP


class _Recording(torch.optim.SGD):
    def __init__(self, params, lr=0.0):
        super().__init__(params, lr=lr)
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.grads.append(self.param_groups[0]["params"][0].grad.clone())
        return super().step(closure)


def _batch_grads(loader, model=None) -> list[torch.Tensor]:
    model = model or _model()
    out = []
    for x, y in loader:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        out.append(model.weight.grad.clone())
    return out


def test_accumulation_averages_each_window_including_the_last_partial_one():
    train = make_loader(_separable(40, seed=1), 8, train=True, seed=3, num_workers=0, drop_last=False)  # 5 batches
    _, val_loader = _loaders()
    model = _model()
    opt = _Recording(model.parameters())
    result = _fit(model, train, val_loader, epochs=1, opt=opt, options=LoopOptions(accumulate=2))
    g = _batch_grads(make_loader(_separable(40, seed=1), 8, train=True, seed=3, num_workers=0, drop_last=False))
    assert result.steps == 3 == len(opt.grads)
    torch.testing.assert_close(opt.grads[0], (g[0] + g[1]) / 2)
    torch.testing.assert_close(opt.grads[1], (g[2] + g[3]) / 2)
    torch.testing.assert_close(opt.grads[2], g[4])  # the last window holds one batch: not divided by 2


def test_accumulation_matches_one_big_batch():
    big, val_loader = _loaders(train_seed=5, batch_size=16)
    small, _ = _loaders(train_seed=5, batch_size=8)
    a, b = _model(), _model()
    _fit(a, big, val_loader, epochs=2)
    result = _fit(b, small, val_loader, epochs=2, options=LoopOptions(accumulate=2))
    assert result.steps == 2 * 4
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


class _Stream(torch.utils.data.IterableDataset):
    """A dataset without a length: the loop cannot know where the last window ends."""

    def __init__(self, ds):
        self.ds = ds

    def __iter__(self):
        return iter(self.ds)


def test_accumulation_without_a_known_length_still_averages_the_last_window():
    ds = _separable(40, seed=1)
    stream = torch.utils.data.DataLoader(_Stream(ds), batch_size=8)
    _, val_loader = _loaders()
    model = _model()
    opt = _Recording(model.parameters())
    result = _fit(model, stream, val_loader, epochs=1, opt=opt, options=LoopOptions(accumulate=2))
    g = _batch_grads(torch.utils.data.DataLoader(ds, batch_size=8))
    assert result.steps == 3
    torch.testing.assert_close(opt.grads[2], g[4])


def _clipped(loader, max_norm: float) -> list[torch.Tensor]:
    """The weight gradient of each batch after scaling the total (weight + bias) norm down to `max_norm`."""
    model = _model()
    out = []
    for x, y in loader:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        total = torch.cat([model.weight.grad.flatten(), model.bias.grad]).norm()
        assert total > max_norm  # every raw gradient is above the limit
        out.append(model.weight.grad * max_norm / total)
    return out


def test_clipping_limits_the_gradient_norm():
    train_loader, val_loader = _loaders(train_seed=2)
    model = _model()
    opt = _Recording(model.parameters())
    _fit(model, train_loader, val_loader, epochs=1, opt=opt, options=LoopOptions(clip_grad_norm=0.05))
    want = _clipped(_loaders(train_seed=2)[0], 0.05)
    assert len(opt.grads) == len(want) == 8
    for got, w in zip(opt.grads, want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-7)


def test_fp16_clipping_unscales_before_clipping():
    """Under fp16 the GradScaler multiplies the loss (x65536): clipping the scaled gradients would shrink
    the true step 65536-fold. The clipped gradient must be the true one at the limit."""
    train_loader, val_loader = _loaders(train_seed=2)
    model = _model()
    opt = _Recording(model.parameters())
    _fit(model, train_loader, val_loader, epochs=1, opt=opt, options=LoopOptions(amp="fp16", clip_grad_norm=0.05))
    batches = list(_loaders(train_seed=2)[0])
    want = _clipped(batches, 0.05)
    # At the initial scale (2**16) fp16 gradients overflow: GradScaler skips the first such step and halves its
    # scale, after which none overflows (lr=0: the weights, hence each batch's gradient, never change).
    skipped = next(i for i, (x, y) in enumerate(batches) if _fp16_overflows(x, y, 2.0**16))
    assert not any(_fp16_overflows(x, y, 2.0**15) for x, y in batches[skipped + 1:])
    assert len(opt.grads) == 7
    for got, w in zip(opt.grads, want[:skipped] + want[skipped + 1:]):
        torch.testing.assert_close(got, w, rtol=2e-2, atol=1e-4)  # fp16 forward: close, not bit-equal


def _fp16_overflows(x: torch.Tensor, y: torch.Tensor, scale: float) -> bool:
    """Whether the fp16 gradients of one batch, with the loss multiplied by `scale`, are not finite."""
    model = _model()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x), y)
    (loss * scale).backward()
    return not all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_autocast_covers_the_forward_and_the_loss():
    seen: list[tuple[torch.dtype, bool]] = []

    class Probe(nn.Linear):
        def forward(self, x):
            out = super().forward(x)
            seen.append((out.dtype, torch.is_autocast_enabled("cpu")))
            return out

    def loss_fn(logits, y):
        seen.append((logits.dtype, torch.is_autocast_enabled("cpu")))
        return F.cross_entropy(logits, y)

    torch.manual_seed(0)
    model = Probe(2, 2)
    train_loader, val_loader = _loaders()
    result = _fit(model, train_loader, val_loader, epochs=1, loss_fn=loss_fn, options=LoopOptions(amp="bf16"))
    assert result.steps == 8
    assert seen and all(s == (torch.bfloat16, True) for s in seen)
    assert model.weight.dtype == torch.float32  # weights stay in full precision


def test_channels_last_keeps_the_results():
    def conv():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.arange(32) % 2
    loaders = lambda: (make_loader(TensorDataset(x, y), 8, train=True, seed=1, num_workers=0),
                       make_loader(TensorDataset(x, y), 8, train=False, num_workers=0))
    a, b = conv(), conv()
    _fit(a, *loaders(), lr=0.1)
    _fit(b, *loaders(), lr=0.1, options=LoopOptions(channels_last=True))
    assert b[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a[0].weight, b[0].weight.contiguous(), rtol=1e-5, atol=1e-6)


def test_compile_option_trains_the_same_weights():
    a, b = _model(), _model()
    _fit(a, *_loaders(train_seed=1))
    result = _fit(b, *_loaders(train_seed=1), options=LoopOptions(compile="eager"))
    assert _same(_weights(a), _weights(b))
    assert set(result.best_state) == {"weight", "bias"}  # the plain module's keys, not _orig_mod.*


# --------------------------------------------------------------------------- schedulers


def test_epoch_interval_steps_the_scheduler_once_per_epoch():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    result = _fit(model, *_loaders(), epochs=3, opt=opt, scheduler=sched,
                  options=LoopOptions(scheduler_interval="epoch"))
    assert [h["lr"] for h in result.history] == [1.0, 0.5, 0.25]


def test_plateau_scheduler_is_per_epoch_only():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max")
    with pytest.raises(ValueError, match="scheduler_interval='step' with ReduceLROnPlateau"):
        _fit(model, *_loaders(), opt=opt, scheduler=plateau, options=LoopOptions(scheduler_interval="step"))


def test_one_cycle_per_step_reaches_its_last_step_exactly():
    model = _model()
    train_loader, val_loader = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=3 * steps_per_epoch(train_loader, 2))
    result = _fit(model, train_loader, val_loader, epochs=3, opt=opt, scheduler=sched,
                  options=LoopOptions(accumulate=2))
    assert result.steps == 12 and sched.last_epoch == 12  # one more step would raise in OneCycleLR


# --------------------------------------------------------------------------- NaN guard, OOM, watchdog


class _NanOnce:
    """Cross-entropy, except that call number `at` returns NaN (a bad batch, an fp16 overflow)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, logits, y):
        self.calls += 1
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if self.calls == self.at else loss


def test_nan_loss_restores_the_last_good_state_and_halves_the_lr_once():
    train_loader, val_loader = _loaders()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=3 * 8)
    logged: list[str] = []
    loss_fn = _NanOnce(at=12)  # in epoch 2
    result = _fit(model, train_loader, val_loader, epochs=3, opt=opt, scheduler=sched, loss_fn=loss_fn,
                  log=logged.append)
    assert result.stop_reason == "completed"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.steps == 24 and sched.last_epoch == 24
    assert torch.isfinite(model.weight).all()
    assert opt.param_groups[0]["max_lr"] == pytest.approx(0.2)  # the whole schedule halved
    (w,) = result.warnings
    assert "NaN/inf in epoch 2" in w and "start of epoch 1" in w  # the last good state: taken at the start
    assert any(m.startswith("WARNING: the training loss became NaN/inf") for m in logged)


def test_after_a_nan_the_run_continues_from_the_snapshot_exactly():
    """The snapshot holds the whole training state: after the NaN the run is the one that used the halved
    learning rate from the start (weights, BatchNorm statistics, momentum, dropout masks, data order)."""
    def run(lr: float, nan_at: int):
        model, (train_loader, val_loader) = _Noisy(), _loaders()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        torch.manual_seed(3)
        result = _fit(model, train_loader, val_loader, epochs=3, opt=opt, loss_fn=_NanOnce(at=nan_at))
        return model, opt, result, torch.rand(4)

    model, opt, result, draws = run(0.1, nan_at=12)  # in epoch 2: back to the start, at lr 0.05
    assert len(result.warnings) == 1 and opt.param_groups[0]["lr"] == 0.05
    want_model, want_opt, want, want_draws = run(0.05, nan_at=-1)  # never NaN
    assert want.warnings == [] and result.steps == want.steps == 24
    assert _same(_weights(model), _weights(want_model))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], want_opt.state[q]["momentum_buffer"])
               for p, q in zip(model.parameters(), want_model.parameters()))
    assert [(h["epoch"], h["val_loss"], h["score"]) for h in result.history] == \
        [(h["epoch"], h["val_loss"], h["score"]) for h in want.history]
    assert torch.equal(draws, want_draws)  # the random streams were rolled back too


def test_nan_policy_raise_stops_at_once():
    with pytest.raises(FloatingPointError, match="NaN/inf in epoch 1.*nan_policy='restore'"):
        _fit(_model(), *_loaders(), loss_fn=_NanOnce(at=3), options=LoopOptions(nan_policy="raise"))


def test_nan_is_found_between_epochs_by_the_periodic_check():
    steps: list[tuple[int, int]] = []
    loss_fn = _NanOnce(at=3)
    with pytest.raises(FloatingPointError):
        _fit(_model(), *_loaders(), loss_fn=loss_fn, epochs=1, on_step=lambda e, b: steps.append((e, b)),
             options=LoopOptions(nan_policy="raise", check_every=4))
    assert steps == [(0, 8)] * 4  # stopped at the first check after the NaN (step 3), at step 4


def test_out_of_memory_beyond_the_retries_is_an_error():
    class Always(nn.Linear):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    with pytest.raises(torch.OutOfMemoryError, match="out of memory in epoch 1 at batch size 2 after 2 halvings"):
        _fit(Always(2, 2), *_loaders(), options=LoopOptions(oom_retries=2))


# --------------------------------------------------------------------------- state, hooks, several processes


class _Jittered(Dataset):
    """Random augmentation from torch's and numpy's global RNGs, as a hand-written transform draws it."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        noise = 0.2 * torch.randn(x.shape) + torch.from_numpy(np.random.normal(0, 0.2, x.shape).astype(np.float32))
        return x + noise, y


def _resumable_run(epochs: int = 2):
    """Model (dropout + BatchNorm), AdamW, a per-step OneCycleLR over `epochs`, an augmented train loader."""
    model = _Noisy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    train = make_loader(_Jittered(_separable(64, seed=1)), 8, train=True, seed=4, num_workers=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(train))
    return model, opt, sched, train, make_loader(_separable(40, seed=2), 16, train=False, num_workers=0)


def _seed_run() -> None:
    """The global RNGs every run of `_resumable_run` starts from."""
    torch.manual_seed(5)
    np.random.seed(5)


def _save_point(model, opt, sched, train) -> dict:
    """What a checkpoint holds, copied as saving to a file would."""
    return copy.deepcopy(capture_state({"model": model, "optimizer": opt, "scheduler": sched, "sampler": train.sampler}))


def _restored(saved: dict):
    """Fresh objects, built as a new session builds them, then restored from `saved`."""
    model, opt, sched, train, val = _resumable_run()
    assert restore_state(copy.deepcopy(saved), {"model": model, "optimizer": opt, "scheduler": sched,
                                                "sampler": train.sampler}) == []
    return model, opt, sched, train, val


def _end_state(run: tuple, result: FitResult) -> dict:
    """Where a run ended: weights (BatchNorm statistics included), optimizer moments, scheduler position, the
    next random numbers, and its FitResult."""
    model, opt, sched = run[:3]
    return {"weights": _weights(model), "opt": copy.deepcopy(opt.state_dict()["state"]),
            "sched": sched.last_epoch, "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state()[1].copy(), "result": result}


@pytest.fixture(scope="module")
def straight_run() -> dict:
    """2 epochs of `_resumable_run` without a stop (fit advances its resumable sampler step by step)."""
    run = _resumable_run()
    _seed_run()
    result = _fit(run[0], *run[3:], opt=run[1], scheduler=run[2], epochs=2)
    return _end_state(run, result)


def _assert_same_run(want: dict, got: dict) -> None:
    """Everything exactly equal, and the last epoch scored the same."""
    assert _same(got["weights"], want["weights"])
    assert got["opt"].keys() == want["opt"].keys() and all(_same(got["opt"][k], want["opt"][k]) for k in want["opt"])
    assert got["sched"] == want["sched"] == 16
    assert torch.equal(got["torch_rng"], want["torch_rng"]) and np.array_equal(got["numpy_rng"], want["numpy_rng"])
    a, b = want["result"], got["result"]
    assert a.steps == b.steps == 16
    assert (b.best_epoch, b.best_score) == (a.best_epoch, a.best_score)
    assert len(b.history) == len(a.history) == 2
    keys = ("epoch", "val_loss", "score", "lr")
    assert [b.history[-1][k] for k in keys] == [a.history[-1][k] for k in keys]


def test_fit_resumes_at_an_epoch_boundary_exactly(straight_run):
    """2 epochs straight == 1 epoch, save, restore into fresh objects, fit(start_epoch=1, resume=...)."""
    first = _resumable_run()
    _seed_run()
    head = _fit(first[0], *first[3:], opt=first[1], scheduler=first[2], epochs=1)
    saved = _save_point(*first[:4])
    torch.rand(100), np.random.rand(100)  # anything may run between saving and resuming
    assert not _same(_weights(first[0]), straight_run["weights"])

    again = _restored(saved)
    tail = _fit(again[0], *again[3:], opt=again[1], scheduler=again[2], epochs=2, start_epoch=1, resume=head)
    _assert_same_run(straight_run, _end_state(again, tail))
    assert tail.history[0] == head.history[0]
    assert tail.history[1]["train_loss"] == straight_run["result"].history[1]["train_loss"]  # the same whole epoch

    # The control: without the RNG state the dropout masks differ, so the weights do.
    model, opt, sched, train, val = _resumable_run()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    train.sampler.load_state_dict(saved["sampler"])
    _fit(model, train, val, opt=opt, scheduler=sched, epochs=2, start_epoch=1, resume=head)
    assert not _same(_weights(model), straight_run["weights"])


@pytest.mark.parametrize("k", [3, 11])  # stopped in epoch 1, or in epoch 2 after one evaluated epoch
def test_fit_resumes_mid_epoch_exactly(straight_run, k):
    """Stopped by should_stop after k of 16 steps, saved, restored into fresh objects and run to the end: the
    same run as without the stop."""
    first = _resumable_run()
    done: list[int] = []

    def on_step(epoch, n):  # fit has advanced the sampler by the n samples this step trained on
        done.append(n)

    _seed_run()
    head = _fit(first[0], *first[3:], opt=first[1], scheduler=first[2], epochs=2, on_step=on_step,
                should_stop=lambda where: "budget" if where == "step" and len(done) == k else None)
    assert head.stop_reason == "budget" and head.steps == k
    assert len(head.history) == k // 8  # only whole epochs were evaluated
    saved = _save_point(*first[:4])
    assert (saved["sampler"]["epoch"], saved["sampler"]["position"]) == (k // 8, 8 * (k % 8))
    torch.rand(100), np.random.rand(100)

    again = _restored(saved)
    assert len(again[3]) == 8 - k % 8  # the resumed epoch yields only the batches not yet trained on
    tail = _fit(again[0], *again[3:], opt=again[1], scheduler=again[2], epochs=2, start_epoch=k // 8,
                resume=head)
    _assert_same_run(straight_run, _end_state(again, tail))
    assert tail.history[:len(head.history)] == head.history


def test_on_step_reports_the_samples_each_optimizer_step_consumed():
    seen: list[tuple[int, int]] = []
    train = make_loader(_separable(60, seed=1), 8, train=True, seed=0, num_workers=0, drop_last=False)  # 8 batches
    _fit(_model(), train, _loaders()[1], epochs=2, on_step=lambda epoch, n: seen.append((epoch, n)),
         options=LoopOptions(accumulate=3))
    assert seen == [(0, 24), (0, 24), (0, 12), (1, 24), (1, 24), (1, 12)]  # the last batch holds 4 samples


def test_fit_under_distributed_data_parallel(tmp_path, monkeypatch):
    """One process of a DDP run (gloo on the CPU): the train sampler takes this rank's share of the common
    order, re-shuffled each epoch; the validation loader is whole (a distributed `fit` shares it out); plain state-dict keys; the same
    weights as the single-process run."""
    import torch.distributed as dist

    from kagglekit_nb.sampler import ResumableSampler

    train_ds, val_ds = _separable(64, seed=1), _separable(40, seed=2)
    single = make_loader(train_ds, 8, train=True, seed=3, num_workers=0)
    indices = lambda loader: [i for _, i in loader.sampler]  # noqa: E731 - keys are (epoch, index)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # init_process_group wraps it with a rank prefix
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        with monkeypatch.context() as m:  # what rank 0 and rank 1 of a two-process run build
            m.setattr(dist, "get_world_size", lambda group=None: 2)
            shards = []
            for rank in (0, 1):
                m.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
                shards.append(make_loader(train_ds, 8, train=True, seed=3, num_workers=0))  # split automatically
            whole = make_loader(train_ds, 8, train=True, seed=3, num_workers=0, distributed=False)
        for rank, shard in enumerate(shards):
            assert isinstance(shard.sampler, ResumableSampler)
            assert (shard.sampler.num_replicas, shard.sampler.rank) == (2, rank)
            assert indices(shard) == indices(single)[rank::2] and len(shard) == 4
        assert (whole.sampler.num_replicas, indices(whole)) == (1, indices(single))

        train = make_loader(train_ds, 8, train=True, seed=3, num_workers=0, distributed=True)
        assert (train.sampler.num_replicas, train.sampler.rank) == (1, 0)
        assert isinstance(make_loader(val_ds, 16, train=False, num_workers=0).sampler,
                          torch.utils.data.SequentialSampler)
        orders: list[list[int]] = []
        real_set_epoch = train.sampler.set_epoch

        def set_epoch(epoch):
            real_set_epoch(epoch)
            orders.append(indices(train))

        train.sampler.set_epoch = set_epoch
        ddp = nn.parallel.DistributedDataParallel(_model())
        result = _fit(ddp, train, make_loader(val_ds, 16, train=False, num_workers=0),
                      options=LoopOptions(accumulate=2))
        assert len(orders) == 2 and orders[0] != orders[1] and sorted(orders[1]) == list(range(64))
        assert set(result.best_state) == {"weight", "bias"}
        assert loop.is_main_process()
    finally:
        dist.destroy_process_group()
    assert loop.is_main_process()
    plain = _model()
    _fit(plain, single, make_loader(val_ds, 16, train=False, num_workers=0), options=LoopOptions(accumulate=2))
    assert _same(_weights(ddp.module), _weights(plain))


def test_make_scaler_only_for_fp16_and_fit_uses_the_one_given():
    assert make_scaler(LoopOptions(), "cpu") is None  # AMP is off on the CPU unless asked
    assert make_scaler(LoopOptions(amp="bf16"), "cpu") is None
    scaler = make_scaler(LoopOptions(amp="fp16"), "cpu")
    assert isinstance(scaler, torch.amp.GradScaler)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    ds = torch.utils.data.TensorDataset(x, y)
    train = make_loader(ds, 8, train=True, seed=0, num_workers=0)
    val = make_loader(ds, 8, train=False, num_workers=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, train, val, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=1, device="cpu",
        metric=get_metric("accuracy"), options=LoopOptions(amp="fp16", preflight=False), scaler=scaler, log=None)
    assert scaler.state_dict()["_growth_tracker"] == 4  # the given scaler counted the 4 steps


# --------------------------------------------------------------------------- the "not learning" warning


def _shuffled_loaders(seed: int = 0):
    """The separable task with its labels shuffled: nothing to learn, validation stays at the prior."""
    def shuffled(n, data_seed):
        x, y = _separable(n, seed=data_seed).tensors
        return TensorDataset(x, y[torch.randperm(n, generator=torch.Generator().manual_seed(seed + data_seed))])

    return (make_loader(shuffled(256, 1), 16, train=True, seed=seed, num_workers=0),
            make_loader(shuffled(400, 2), 64, train=False, num_workers=0))


def _not_learning(result: FitResult) -> list[str]:
    return [w for w in result.warnings if "not learning" in w]


def test_a_learning_run_never_hears_not_learning_even_after_a_warm_up_epoch():
    """A warm-up epoch (here its learning rate is 0, the extreme of a one-cycle start) leaves the
    validation loss at ln(2); the later epochs learn. The old first-epoch check warned here; the
    trend rule does not."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def warmed_up(row, result):
        for group in opt.param_groups:
            group["lr"] = 0.5

    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    result = _fit(model, *_loaders(), opt=opt, epochs=4, on_epoch_end=warmed_up)
    first = result.history[0]["val_loss"]
    assert first == pytest.approx(math.log(2), rel=0.02)  # the warm-up epoch is at the prior
    assert result.history[-1]["val_loss"] < 0.5 * math.log(2)
    assert _not_learning(result) == []


def test_a_run_with_shuffled_labels_is_told_once_after_two_epochs():
    train_loader, val_loader = _shuffled_loaders()
    one = _fit(_model(), train_loader, val_loader, lr=0.1, epochs=1)
    assert _not_learning(one) == []  # one epoch is no verdict
    logged: list[str] = []
    broken = _fit(_model(), *_shuffled_loaders(), lr=0.1, epochs=4, log=logged.append)
    said = _not_learning(broken)
    assert len(said) == 1 and "after 2 epochs, and not improving" in said[0] and "ln(2) = 0.6931" in said[0]
    assert sum("not learning" in line for line in logged) == 1


@pytest.mark.parametrize("total,pct", [(5, 0.2), (10, 0.1), (2, 0.5), (1, 0.2), (7, 0.2)])
def test_one_cycle_runs_every_planned_step_count(total, pct):
    from kagglekit_nb.loop import one_cycle

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = one_cycle(opt, 0.1, total, pct_start=pct)  # torch's own OneCycleLR divides by zero at 5 x 0.2
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step() if len(lrs) < total else None
    assert len(lrs) == total and max(lrs) <= 0.1 + 1e-12 and all(np.isfinite(lrs))
    if total >= 5:
        assert max(lrs) > 0.09 and lrs[-1] < lrs[0]  # warmed up to near the peak, annealed below the start


@pytest.mark.parametrize("clip", [None, 1.0])
def test_out_of_memory_in_the_optimizer_step_retries_with_unscaled_gradients(clip):
    """fp16 training: the first optimizer step runs out of memory after the GradScaler unscaled the
    gradients (Adam allocating its state is where a large model does). The retried step must unscale
    its own new gradients, not apply them times the loss scale (or stop at unscale_ called twice)."""
    seen: list[float] = []

    class FirstStepOutOfMemory(torch.optim.SGD):
        def step(self, closure=None):
            grads = [p.grad.abs().max().item() for g in self.param_groups for p in g["params"] if p.grad is not None]
            if not seen:
                seen.append(float("nan"))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            seen.append(max(grads))
            return super().step(closure)

    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    result = _fit(model, *_loaders(), epochs=1, opt=FirstStepOutOfMemory(model.parameters(), lr=0.1), scaler=scaler,
                  options=LoopOptions(oom_retries=1, clip_grad_norm=clip))
    assert result.stop_reason == "completed" and len(seen) > 2
    assert max(seen[1:]) < 10.0   # true gradients of a cross-entropy on two features; scaled ones are ~4096x
    assert scaler.get_scale() == 2.0 ** 12
