"""Tests for kagglekit_nb.loop: loaders, fit (best weights, stopping, patience), evaluate, predict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from kagglekit_nb.loop import FitResult, default_workers, evaluate, fit, make_loader, predict
from kagglekit_nb.metrics import Metric, get_metric


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


def _order(loader) -> list[int]:
    return [int(i) for batch in loader for i in (batch[0] if isinstance(batch, (list, tuple)) else batch)]


class _Index(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


# --------------------------------------------------------------------------- make_loader


def test_train_loader_shuffles_with_a_seeded_order():
    ds = _Index(40)
    a = make_loader(ds, 8, train=True, seed=5, num_workers=0)
    torch.manual_seed(123)  # the global RNG must not change the order
    b = make_loader(ds, 8, train=True, seed=5, num_workers=0)
    c = make_loader(ds, 8, train=True, seed=6, num_workers=0)
    a1, a2 = _order(a), _order(a)
    assert (a1, a2) == (_order(b), _order(b))  # same seed: same order, epoch after epoch
    assert a1 != _order(c)
    assert a1 != a2  # a new order each epoch
    assert sorted(a1) == list(range(40)) and a1 != list(range(40))


def test_train_loader_drops_a_ragged_last_batch_only_when_there_is_more_than_one_batch():
    many = make_loader(_Index(20), 8, train=True, seed=0, num_workers=0)
    assert [len(b) for b in many] == [8, 8]
    few = make_loader(_Index(5), 8, train=True, seed=0, num_workers=0)
    assert [len(b) for b in few] == [5]


def test_val_and_test_loaders_never_shuffle_and_keep_every_sample():
    loader = make_loader(_Index(21), 8, train=False, seed=5, num_workers=0)
    assert _order(loader) == list(range(21))
    assert _order(loader) == list(range(21))
    assert [len(b) for b in loader] == [8, 8, 5]


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8", None])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="BATCH_SIZE="):
        make_loader(_Index(4), batch_size, train=False, num_workers=0)


def test_bad_worker_count():
    with pytest.raises(ValueError, match="NUM_WORKERS=-1"):
        make_loader(_Index(4), 2, train=False, num_workers=-1)


def test_default_workers():
    assert 0 <= default_workers("cpu") <= 4
    assert 1 <= default_workers("cuda") <= 8


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
    assert not any(h["partial"] for h in result.history)
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


def test_fit_stops_mid_epoch_when_asked():
    model = _model()
    train_loader, val_loader = _loaders()
    calls: list[str] = []

    def should_stop(where):
        calls.append(where)
        return "budget: out of time" if calls.count("step") > 10 else None

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=5,
                 device="cpu", metric=get_metric("accuracy"), should_stop=should_stop)
    assert result.stop_reason == "budget: out of time"
    assert result.steps == 10  # 8 in epoch 1, 2 in epoch 2, then the 11th step was refused
    assert calls == ["step"] * 8 + ["eval"] + ["step"] * 3
    assert len(result.history) == 2
    assert [h["partial"] for h in result.history] == [False, True]
    assert result.best_state is not None


def test_fit_stop_at_evaluation_ends_training_after_that_epoch():
    model = _model()
    train_loader, val_loader = _loaders()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = fit(model, train_loader, val_loader, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=5,
                 device="cpu", metric=get_metric("accuracy"),
                 should_stop=lambda where: "signal: SIGTERM" if where == "eval" else None)
    assert result.stop_reason == "signal: SIGTERM"
    assert result.steps == 8
    assert len(result.history) == 1


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
                 device="cpu", metric=get_metric("accuracy"), patience=patience)
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
