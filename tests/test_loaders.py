"""Tests for kagglekit_nb.loaders: make_loader (only training shuffles), steps_per_epoch, the watchdog."""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from test_loop import _fit, _Index, _model, _same, _separable, _weights

from kagglekit_nb import loaders
from kagglekit_nb.loaders import _rebuild, default_workers, make_loader, steps_per_epoch
from kagglekit_nb.options import LoopOptions


def _order(loader) -> list[int]:
    return [int(i) for batch in loader for i in (batch[0] if isinstance(batch, (list, tuple)) else batch)]


# --------------------------------------------------------------------------- make_loader


def test_train_loader_shuffles_with_a_seeded_order():
    ds = _Index(40)
    a = make_loader(ds, 8, train=True, seed=5, num_workers=0)
    torch.manual_seed(123)  # the global RNG must not change the order
    b = make_loader(ds, 8, train=True, seed=5, num_workers=0)
    c = make_loader(ds, 8, train=True, seed=6, num_workers=0)
    def epoch_order(loader, epoch):
        loader.sampler.set_epoch(epoch)  # as fit does before each epoch
        return _order(loader)

    a1, a2 = epoch_order(a, 0), epoch_order(a, 1)
    assert (a1, a2) == (epoch_order(b, 0), epoch_order(b, 1))  # same seed: same order, epoch after epoch
    assert a1 == epoch_order(a, 0)  # the order is a function of (seed, epoch) alone
    assert a1 != epoch_order(c, 0)
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


def test_iterating_a_validation_loader_leaves_the_global_rng_alone():
    loader = make_loader(_Index(10), 4, train=False, num_workers=0)
    before = torch.get_rng_state()
    assert _order(loader) == list(range(10))
    assert torch.equal(torch.get_rng_state(), before)
    naive = torch.utils.data.DataLoader(_Index(10), batch_size=4)
    _order(naive)
    assert not torch.equal(torch.get_rng_state(), before)


def test_only_a_train_loader_can_be_split_across_processes():
    with pytest.raises(ValueError, match="distributed=True for a validation/test loader: these are never split"):
        make_loader(_Index(8), 4, train=False, num_workers=0, distributed=True)
    train = make_loader(_Index(8), 4, train=True, seed=0, num_workers=0, distributed=False)
    assert (train.sampler.num_replicas, train.sampler.rank) == (1, 0)


def test_split_train_loaders_take_the_steps_of_one_process_at_the_whole_batch(tmp_path, monkeypatch):
    """Two processes at batch b train each step on the samples one process takes at 2b, in as many steps
    (the shards drop the odd sample out instead of repeating one: in a set smaller than one step's
    batch that sample is missing from the step)."""
    import torch.distributed as dist

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # init_process_group wraps it with a rank prefix
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        with monkeypatch.context() as m:  # what rank 0 and rank 1 of a two-process run build
            m.setattr(dist, "get_world_size", lambda group=None: 2)
            for n, batch in ((21, 4), (7, 4), (5, 8)):
                shards = []
                for rank in (0, 1):
                    m.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
                    shards.append(make_loader(_Index(n), batch // 2, train=True, seed=1, num_workers=0))
                whole = make_loader(_Index(n), batch, train=True, seed=1, num_workers=0, distributed=False)
                assert [len(s) for s in shards] == [len(whole)] * 2, n
                for a, b, w in zip(*shards, whole):
                    both = sorted(a.tolist() + b.tolist())
                    assert both == sorted(w.tolist()) if n > batch else set(both) < set(w.tolist()), n
    finally:
        dist.destroy_process_group()


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
    assert default_workers("cuda", {"LOCAL_WORLD_SIZE": "64"}) == 1  # many processes share the cores


def test_steps_per_epoch_counts_the_last_partial_window():
    loader = make_loader(_Index(50), 8, train=False, num_workers=0)  # 7 batches
    assert [steps_per_epoch(loader, k) for k in (1, 2, 3, 7, 8)] == [7, 4, 3, 1, 1]
    with pytest.raises(ValueError, match="accumulate=0 must be an integer >= 1"):
        steps_per_epoch(loader, 0)


def test_rebuild_keeps_the_order_at_another_batch_size():
    loader = make_loader(_Index(20), 8, train=True, seed=3, num_workers=0)
    loader.sampler.set_epoch(1)
    halved = _rebuild(loader, batch_size=4)
    assert halved.sampler is loader.sampler and halved.generator is loader.generator
    assert [len(b) for b in loader] == [8, 8] and [len(b) for b in halved] == [4] * 5  # drop_last kept
    assert _order(halved)[:16] == _order(loader)  # the same samples in the same order, in smaller batches


# --------------------------------------------------------------------------- first-batch watchdog


def test_first_batch_returns_the_batch_or_times_out_without_waiting():
    assert loaders._first_batch(iter([1, 2]), 5.0) == 1
    with pytest.raises(StopIteration):
        loaders._first_batch(iter([]), 5.0)
    release = threading.Event()

    class Stuck:
        def __next__(self):
            release.wait()
            return "late"

    try:
        with pytest.raises(TimeoutError, match="no batch within 0s"):
            loaders._first_batch(Stuck(), 0)
    finally:
        release.set()


def test_watchdog_rebuilds_a_stuck_loader_without_workers(monkeypatch):
    def stuck(iterator, limit_s):
        assert limit_s == 30
        raise TimeoutError("no batch")

    monkeypatch.setattr(loaders, "_first_batch", stuck)
    train_ds, val_ds = _separable(64, seed=1), _separable(40, seed=2)
    with_workers = make_loader(train_ds, 8, train=True, seed=4, num_workers=1)
    logged: list[str] = []
    a = _model()
    result = _fit(a, with_workers, make_loader(val_ds, 16, train=False, num_workers=0), log=logged.append,
                  options=LoopOptions(watchdog_s=30))
    assert any("rebuilt with num_workers=0" in w for w in result.warnings)
    assert any("1 worker processes gave no batch within 30s" in m for m in logged)
    b = _model()
    _fit(b, make_loader(train_ds, 8, train=True, seed=4, num_workers=0), make_loader(val_ds, 16, train=False,
                                                                                     num_workers=0))
    assert _same(_weights(a), _weights(b))  # the same batches, in the same order
