"""Tests for kagglekit_nb.sampler: seeded order, sharding, mid-epoch resume without re-reading,
and per-item augmentation randomness that ignores worker count and resume point."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kagglekit_nb.sampler import IndexSeeded, ResumableSampler, seed_for


class _Counting(Dataset):
    """Returns its index and records which indices were read."""

    def __init__(self, n: int):
        self.n, self.reads = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.reads.append(i)
        return i


class _Augmented(Dataset):
    """Each item draws from python, numpy and torch global RNGs, like a hand-written augmentation."""

    def __init__(self, n: int = 24):
        self.x = torch.arange(n * 3, dtype=torch.float64).reshape(n, 3)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        noise = torch.from_numpy(np.random.randn(3)) * random.random() + torch.rand(3, dtype=torch.float64)
        return self.x[i] + noise


def _loader(dataset, sampler, workers: int, batch_size: int = 4) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def test_order_depends_only_on_seed_and_epoch():
    a = ResumableSampler(50, seed=3)
    torch.manual_seed(123)
    first = list(a)
    torch.manual_seed(999)  # the global RNG plays no part
    b = ResumableSampler(range(50), seed=3)
    assert list(b) == first
    assert sorted(first) == list(range(50)) and first != list(range(50))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(ResumableSampler(50, seed=4)) != first
    assert a.indices(0) == first  # any epoch's order can be recomputed


def test_no_shuffle_is_identity_order():
    s = ResumableSampler(7, seed=0, shuffle=False)
    s.set_epoch(5)
    assert list(s) == list(range(7))


def test_distributed_shards_pad_or_drop():
    padded = [ResumableSampler(10, seed=1, num_replicas=3, rank=r) for r in range(3)]
    shards = [list(s) for s in padded]
    assert [len(x) for x in shards] == [4, 4, 4]
    assert set(sum(shards, [])) == set(range(10))
    order = ResumableSampler(10, seed=1).indices(0)  # the unsharded permutation
    assert [shards[r][j] for j in range(4) for r in range(3)] == order + order[:2]
    dropped = [list(ResumableSampler(10, seed=1, num_replicas=3, rank=r, drop_last=True)) for r in range(3)]
    flat = sum(dropped, [])
    assert [len(x) for x in dropped] == [3, 3, 3] and len(set(flat)) == 9
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(10, seed=1, num_replicas=2, rank=2)


def test_a_state_resumes_with_another_number_of_replicas_at_the_same_place_in_the_order():
    order = ResumableSampler(11, seed=4).indices(1)  # one process's order of epoch 1
    two = [ResumableSampler(11, seed=4, num_replicas=2, rank=r, drop_last=True) for r in range(2)]
    for s in two:
        s.set_epoch(1)
        s.advance(3)  # three steps of one sample per rank: the first six of the order are trained
    one = ResumableSampler(11, seed=4)
    one.load_state_dict(two[0].state_dict())
    assert (one.epoch, one.position) == (1, 6) and list(one) == order[6:]
    back = [ResumableSampler(11, seed=4, num_replicas=2, rank=r, drop_last=True) for r in range(2)]
    for s in back:
        s.load_state_dict(one.state_dict())
    assert [b.position for b in back] == [3, 3]
    assert sorted(list(back[0]) + list(back[1])) == sorted(order[6:10])  # the rest, less the odd one out
    one.advance(1)  # 7 taken: 2 ranks resume at 4 each, skipping one sample rather than training one twice
    back[0].load_state_dict(one.state_dict())
    assert back[0].position == 4
    with pytest.raises(ValueError, match="seed: saved 4, now 5"):
        ResumableSampler(11, seed=5, num_replicas=2, rank=0).load_state_dict(one.state_dict())


def test_resume_reads_only_the_remaining_samples():
    data = _Counting(20)
    s = ResumableSampler(data, seed=5)
    s.set_epoch(2)
    full = s.indices()
    s.advance(8)
    saved = s.state_dict()
    assert saved["epoch"] == 2 and saved["position"] == 8

    fresh = ResumableSampler(data, seed=5)
    fresh.load_state_dict(saved)
    fresh.set_epoch(2)  # the loop's usual call keeps the restored position
    assert len(fresh) == 12
    batches = [b.tolist() for b in _loader(data, fresh, workers=0)]
    assert sum(batches, []) == full[8:]
    assert data.reads == full[8:]  # nothing before the saved position was read
    fresh.set_epoch(3)
    assert fresh.position == 0 and len(fresh) == 20


def test_advance_and_load_state_are_checked():
    s = ResumableSampler(10, seed=0)
    s.advance(10)
    with pytest.raises(ValueError, match="past the end of epoch 0"):
        s.advance(1)
    with pytest.raises(ValueError, match="length: saved 10, now 11"):
        ResumableSampler(11, seed=0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        ResumableSampler(10, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="missing"):
        ResumableSampler(10, seed=0).load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="empty dataset"):
        ResumableSampler(0, seed=0)


def test_with_epoch_yields_pairs_and_index_seeded_needs_them():
    s = ResumableSampler(4, seed=0, shuffle=False, with_epoch=True)
    s.set_epoch(3)
    assert list(s) == [(3, 0), (3, 1), (3, 2), (3, 3)]
    with pytest.raises(ValueError, match="with_epoch=True"):
        IndexSeeded(_Augmented(), 0)[1]


def _epochs(workers: int, epochs: int, *, stop_after: int | None = None, state=None):
    """Augmented batches over `epochs`; optionally stop after `stop_after` batches and return the state."""
    data = _Augmented()
    s = ResumableSampler(data, seed=11, with_epoch=True)
    if state is not None:
        s.load_state_dict(state)
    loader = _loader(IndexSeeded(data, 11), s, workers)
    out = []
    for epoch in range(s.epoch, epochs):
        s.set_epoch(epoch)
        for batch in loader:
            out.append(batch)
            s.advance(len(batch))
            if stop_after is not None and len(out) == stop_after:
                return out, s.state_dict()
    return out, None


def test_augmentation_same_for_any_worker_count_and_after_resume():
    straight, _ = _epochs(0, 2)
    with_workers, _ = _epochs(2, 2)
    assert len(straight) == 12
    assert all(torch.equal(a, b) for a, b in zip(straight, with_workers))
    assert not torch.equal(straight[0], straight[6])  # epochs see different augmentations

    first, state = _epochs(2, 2, stop_after=8)  # stops mid-epoch 1
    rest, _ = _epochs(2, 2, state=state)
    assert state["epoch"] == 1 and state["position"] == 8
    assert len(first) + len(rest) == 12
    assert all(torch.equal(a, b) for a, b in zip(straight, first + rest))


def test_index_seeded_leaves_main_process_rng_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    IndexSeeded(_Augmented(), 1)[(0, 3)]
    assert torch.equal(torch.rand(2), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]


def test_index_seeded_seeds_albumentations_pipeline():
    A = pytest.importorskip("albumentations")

    class Images(Dataset):
        def __init__(self):
            self.transform = A.Compose([A.Affine(rotate=(-30, 30), translate_percent=(-0.2, 0.2), p=1.0)])
            self.img = np.random.default_rng(0).random((16, 16, 1)).astype(np.float32)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.transform(image=self.img)["image"]

    ds = IndexSeeded(Images(), 5)
    assert len(ds.transforms) == 1  # found through the dataset's `transform` attribute
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(1, 1)]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seed_for_is_a_pure_function():
    assert seed_for(1, 2, 3) == seed_for(1, 2, 3)
    assert len({seed_for(1, e, i) for e in range(3) for i in range(100)}) == 300
    assert 0 <= seed_for(2**62, 10**6, 10**9) < 2**63
