"""Tests for kagglekit_nb.state: the one training-state format (checkpoints and the loop's NaN
snapshot), RNG packing, complete-or-loud restore, and the exact-resume property through a file
(N steps straight == k steps, save, kill, resume in fresh objects, N-k steps)."""

from __future__ import annotations

import copy
import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import kagglekit_nb.checkpoint as ck
import kagglekit_nb.state as st
from kagglekit_nb.sampler import IndexSeeded, ResumableSampler


def _messages():
    out: list[str] = []
    return out, out.append


# ----------------------------------------------------------------------------- RNG, capture, restore


def test_rng_state_round_trips_through_weights_only():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leaves numpy with a cached gaussian, part of its state
    buf = io.BytesIO()
    torch.save(st.pack_rng_state(), buf)
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    buf.seek(0)
    st.unpack_rng_state(torch.load(buf, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]
    with pytest.raises(ValueError, match="RNG state is incomplete"):
        st.unpack_rng_state({"torch": torch.get_rng_state()})


def test_restore_is_complete_or_loud():
    model = nn.Linear(2, 2)
    state = st.capture_state({"model": model}, epoch=1)
    with pytest.raises(ValueError, match=r"optimizer \(not in the checkpoint\).*allow_partial=True"):
        st.restore_state(state, {"model": nn.Linear(2, 2), "optimizer": torch.optim.SGD(model.parameters(), 0.1)})
    with pytest.raises(ValueError, match=r"model \(saved, but not given to restore\)"):
        st.restore_state(state, {})
    msgs, log = _messages()
    fresh = nn.Linear(2, 2)
    gaps = st.restore_state(state, {"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)},
                            allow_partial=True, log=log)
    assert gaps == ["optimizer (not in the checkpoint)"] and "partial restore" in msgs[0]
    assert torch.equal(fresh.weight, model.weight)
    with pytest.raises(ValueError, match="could not restore .model.*size mismatch.*different setup"):
        st.restore_state(state, {"model": nn.Linear(3, 2)})
    with pytest.raises(ValueError, match="clash"):
        st.capture_state({"model": model}, rng=1)


def _adam_run(steps: int = 3):
    """A model with BatchNorm, Adam (moments after `steps` steps) and a scheduler."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 3)).logsumexp(1).mean().backward()
        opt.step()
        sched.step()
    return {"model": model, "optimizer": opt, "scheduler": sched}


def test_capture_holds_every_object_the_rng_and_the_values():
    parts = _adam_run()
    state = st.capture_state(parts, epoch=2, history=[{"loss": 0.5}])
    assert state["format"] == st.STATE_FORMAT == 1
    assert state["objects"] == ["model", "optimizer", "scheduler"]
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["optimizer"]["state"]  # Adam's moments are in it: weights alone do not continue a run
    assert state["scheduler"]["last_epoch"] == 3 and state["epoch"] == 2
    with pytest.raises(ValueError, match=r"objects\['weights'\] \(Tensor\) has no state_dict"):
        st.capture_state({"weights": torch.ones(2)})


def _same(a, b) -> bool:
    """Exactly equal, tensors bit for bit, through nested dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_round_trip_into_fresh_objects_continues_identically():
    parts = _adam_run()
    saved = st.cpu_copy(st.capture_state(parts))
    next_draw = torch.randn(8, 3)  # what the random stream gives right after the capture
    fresh = _adam_run(steps=0)     # a new session: other weights, no moments, scheduler at 0, RNG moved on
    assert not _same(fresh["model"].state_dict(), parts["model"].state_dict())
    assert st.restore_state(st.cpu_copy(saved), fresh) == []
    assert torch.equal(torch.randn(8, 3), next_draw)
    for name in parts:
        assert _same(fresh[name].state_dict(), parts[name].state_dict()), name
    x = torch.randn(8, 3)
    for p in (parts, fresh):  # one more step each: the same step
        p["optimizer"].zero_grad()
        p["model"](x).logsumexp(1).mean().backward()
        p["optimizer"].step()
        p["scheduler"].step()
    assert _same(fresh["model"].state_dict(), parts["model"].state_dict())
    assert _same(fresh["optimizer"].state_dict(), parts["optimizer"].state_dict())
    # the copy kept in memory is untouched by that step: it can be restored again
    assert st.restore_state(st.cpu_copy(saved), fresh) == [] and fresh["scheduler"].last_epoch == 3


def test_a_scheduler_the_state_lacks_is_an_error_not_a_silent_skip():
    parts = _adam_run()
    state = st.capture_state({"model": parts["model"], "optimizer": parts["optimizer"]})
    fresh = _adam_run(steps=0)
    before = copy.deepcopy(fresh["model"].state_dict())
    with pytest.raises(ValueError, match=r"scheduler \(not in the checkpoint\).*allow_partial=True"):
        st.restore_state(state, fresh)
    assert _same(fresh["model"].state_dict(), before)  # nothing was loaded before the error


def test_cpu_copy_is_detached_and_independent():
    live = {"w": torch.ones(3, requires_grad=True), "groups": [{"lr": 0.1}], "pair": (torch.zeros(1), "x")}
    copied = st.cpu_copy(live)
    with torch.no_grad():
        live["w"].mul_(5)
    live["groups"][0]["lr"] = 9.0
    assert torch.equal(copied["w"], torch.ones(3)) and not copied["w"].requires_grad
    assert copied["groups"] == [{"lr": 0.1}] and isinstance(copied["pair"], tuple) and copied["pair"][1] == "x"


def test_a_newer_state_format_is_refused():
    state = {**st.capture_state({}), "format": st.STATE_FORMAT + 1}
    with pytest.raises(ValueError, match="newer than this kagglekit_nb reads.*upgrade"):
        st.restore_state(state, {})


# ----------------------------------------------------------------------------- exact resume


class _Noisy(Dataset):
    """A small classification set whose items are augmented with python, numpy and torch randomness."""

    def __init__(self, n: int = 48):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = torch.from_numpy(np.random.randn(6)).float() * random.random() + 0.1 * torch.rand(6)
        return self.x[i] + 0.1 * noise, self.y[i]


def _build(workers: int, init_seed: int):
    """Fresh model, optimizer, scheduler, sampler and loader, as a restarted notebook would build them."""
    random.seed(init_seed)
    np.random.seed(init_seed)
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    data = _Noisy()
    sampler = ResumableSampler(data, seed=7, with_epoch=True)
    loader = DataLoader(IndexSeeded(data, 7), batch_size=4, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(7))
    return {"model": model, "optimizer": opt, "scheduler": sched, "sampler": sampler}, loader


def _train(parts, loader, steps: int, seen: list) -> None:
    """The loop's contract in miniature: set_epoch, step, advance, stop at a step boundary."""
    model, opt, sched, sampler = parts["model"], parts["optimizer"], parts["scheduler"], parts["sampler"]
    model.train()
    done, epoch = 0, sampler.epoch
    while done < steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            sampler.advance(len(y))
            seen.append(x)
            done += 1
            if done == steps:
                return
        epoch += 1


def _next_randoms():
    return torch.rand(4), np.random.rand(4), random.random()


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_mid_epoch(tmp_path, workers):
    n, k = 30, 17  # 12 steps per epoch: the kill lands in the middle of the second epoch
    straight, loader = _build(workers, init_seed=0)
    straight_batches: list = []
    _train(straight, loader, n, straight_batches)
    expected_randoms = _next_randoms()
    del loader

    first, loader = _build(workers, init_seed=0)
    resumed_batches: list = []
    _train(first, loader, k, resumed_batches)
    state = st.capture_state(first, global_step=k)
    ck.save_checkpoint(state, tmp_path, step=k, meta={"model": "mlp"}, log=None)
    del first, loader, state  # the process dies here (a kill, a disconnect)

    fresh, loader = _build(workers, init_seed=12345)  # a restarted notebook: other init, other RNG state
    found = ck.load_latest(tmp_path, log=None)
    assert found.step == k and found.state["global_step"] == k
    assert st.restore_state(found.state, fresh) == []
    assert fresh["sampler"].epoch == 1 and fresh["sampler"].position == (k - 12) * 4
    _train(fresh, loader, n - k, resumed_batches)
    got_randoms = _next_randoms()

    assert all(torch.equal(a, b) for a, b in zip(straight_batches, resumed_batches))
    for (name, a), b in zip(straight["model"].state_dict().items(), fresh["model"].state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = straight["optimizer"].state_dict(), fresh["optimizer"].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, per_param in sa["state"].items():
        for key, value in per_param.items():
            assert torch.equal(value, sb["state"][i][key]), (i, key)
    assert straight["scheduler"].state_dict() == fresh["scheduler"].state_dict()
    assert torch.equal(got_randoms[0], expected_randoms[0])
    assert np.array_equal(got_randoms[1], expected_randoms[1]) and got_randoms[2] == expected_randoms[2]


def test_training_does_not_depend_on_worker_count():
    results = []
    for workers in (0, 2):
        parts, loader = _build(workers, init_seed=0)
        _train(parts, loader, 14, [])
        results.append(parts["model"].state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
