"""Resumable data order: a sampler whose order is a pure function of (seed, epoch) and which can
start an epoch at a saved position without reading the samples before it.

    sampler = ResumableSampler(dataset, seed=SEED, with_epoch=True)
    loader = DataLoader(IndexSeeded(dataset, SEED), batch_size=64, sampler=sampler,
                        generator=torch.Generator().manual_seed(SEED), num_workers=2)
    for epoch in range(sampler.epoch, EPOCHS):
        sampler.set_epoch(epoch)                # keeps a restored position in the resumed epoch
        for x, y in loader:
            ...                                 # one optimizer step
            sampler.advance(len(y))             # the samples this step consumed
            # a checkpoint saved here holds sampler.state_dict()

Why `advance` instead of counting the indices the sampler yields: DataLoader workers prefetch
several batches ahead, so the sampler has always handed out more indices than the loop has
trained on. Only the loop knows what it consumed, so the loop reports it.

Why a `generator=` on the DataLoader: without one, every `iter(loader)` draws its worker base seed
from the global torch RNG, so a resumed run (which calls `iter` once more than the straight run)
would see different dropout masks from there on.

Augmentation randomness: `IndexSeeded` re-seeds python, numpy, torch and the dataset's
albumentations pipeline before every item from (seed, epoch, index), so each sample's augmentation
is the same whichever worker loads it, however many workers there are, and after a resume.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["ResumableSampler", "IndexSeeded", "seed_for"]

_STATE_KEYS = ("seed", "epoch", "position", "length", "shuffle", "drop_last", "num_replicas")


def _check_int(name: str, value: Any, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer.")
    value = int(value)
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r} must be {bound}.")
    return value


def _mix(*parts: int | str) -> int:
    """A 63-bit seed from the parts; unlike seed + epoch, nearby inputs give unrelated seeds."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") >> 1


def seed_for(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's randomness: a pure function of (seed, epoch, index)."""
    return _mix("item", seed, epoch, index)


class ResumableSampler(Sampler):
    """A seeded, shardable sampler that resumes mid-epoch without re-reading skipped samples.

    The order of epoch `e` is a permutation drawn from a torch.Generator seeded from (seed, e)
    (identity when `shuffle=False`), so it never depends on the global RNG. With
    `num_replicas > 1` the order is padded (or cut, with `drop_last`) to a multiple of
    `num_replicas` and rank `r` takes every `num_replicas`-th index from `r`, as
    `DistributedSampler` does; every rank consumes the same number of samples per step, so the
    state saved by rank 0 resumes all ranks. `with_epoch=True` yields `(epoch, index)` pairs for
    `IndexSeeded`.

    The order of an epoch is the same whatever the number of replicas: `position` samples taken by
    each of R ranks are the first `position * R` of it. So a state saved with one number of replicas
    resumes with another (2 processes yesterday, 1 today) at the same place in the same order.
    """

    def __init__(
        self,
        data_source: Sized | int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        with_epoch: bool = False,
    ) -> None:
        length = data_source if isinstance(data_source, (int, np.integer)) else len(data_source)
        self.length = _check_int("data_source length", length)
        if self.length == 0:
            raise ValueError("ResumableSampler got an empty dataset: check the data folder and the fold split.")
        self.seed = _check_int("seed", seed, high=2**63)
        self.num_replicas = _check_int("num_replicas", num_replicas, low=1)
        self.rank = _check_int("rank", rank, high=self.num_replicas)
        self.shuffle, self.drop_last, self.with_epoch = bool(shuffle), bool(drop_last), bool(with_epoch)
        if self.drop_last and self.length < self.num_replicas:
            raise ValueError(f"drop_last=True with {self.length} samples and num_replicas={self.num_replicas} "
                             "leaves every rank empty: use drop_last=False or fewer replicas.")
        if self.drop_last:
            self.num_samples = self.length // self.num_replicas
        else:
            self.num_samples = -(-self.length // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[int]] | None = None

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full order for `epoch` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(_mix("epoch", self.seed, epoch))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.total_size > self.length:  # pad by repeating from the start, as DistributedSampler
            reps = -(-(self.total_size - self.length) // self.length)
            order += (order * reps)[: self.total_size - self.length]
        order = order[: self.total_size][self.rank :: self.num_replicas]
        self._cache = (epoch, order)
        return order

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch` at position 0; the current epoch keeps its position (a resumed one)."""
        epoch = _check_int("epoch", epoch)
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def restart(self, epoch: int = 0) -> None:
        """Go to the start of `epoch`, even the current one (a fresh run over the same loader)."""
        self.epoch, self.position = _check_int("epoch", epoch), 0

    def advance(self, n_samples: int) -> None:
        """Record that the loop consumed `n_samples` more samples of this epoch (call after each step)."""
        n = _check_int("n_samples", n_samples)
        if self.position + n > self.num_samples:
            raise ValueError(
                f"advance({n}) goes past the end of epoch {self.epoch}: {self.position} of "
                f"{self.num_samples} samples were consumed already. Call advance once per batch "
                "with that batch's size."
            )
        self.position += n

    def __iter__(self) -> Iterator[Any]:
        remaining = self.indices()[self.position :]  # snapshot: later advance() calls do not move it
        if self.with_epoch:
            return zip(itertools.repeat(self.epoch), remaining)
        return iter(remaining)

    def __len__(self) -> int:
        """Samples left in the current epoch (the full epoch is `num_samples`)."""
        return self.num_samples - self.position

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch, position (samples consumed this epoch) and the settings that fix the order."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "length": self.length,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "num_replicas": self.num_replicas,
                "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved epoch and position; a sampler over other data or settings is an error.

        A state saved with another number of replicas resumes at the same place of the epoch's order:
        its per-rank position is converted (rounded up where it does not divide, so that no sample is
        trained twice: at most `num_replicas - 1` of the epoch are skipped)."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"sampler state is missing {missing}: it was not saved by ResumableSampler.")
        mine = self.state_dict()
        keys = ["seed", "length", "shuffle"]
        if state["num_replicas"] == self.num_replicas:  # the same split: the shards' tails must match too
            keys.append("drop_last")
        diffs = [f"{k}: saved {state[k]!r}, now {mine[k]!r}" for k in keys if state[k] != mine[k]]
        if diffs:
            raise ValueError(
                "the saved sampler does not match this one (" + "; ".join(diffs) + "): resuming would "
                "mix two data orders. Use the same data, SEED and settings, or start fresh."
            )
        epoch = _check_int("saved epoch", state["epoch"])
        position = _check_int("saved position", state["position"])
        replicas = _check_int("saved num_replicas", state["num_replicas"], low=1)
        if replicas != self.num_replicas:  # the same order, another split: the same number of it consumed
            position = min(-(-position * replicas // self.num_replicas), self.num_samples)
        if position > self.num_samples:
            raise ValueError(f"saved position {position} is past the end of the epoch ({self.num_samples} samples).")
        self.epoch, self.position = epoch, position


class IndexSeeded(Dataset):
    """A dataset wrapper whose items' randomness is a pure function of (seed, epoch, index).

    Keys must be `(epoch, index)` pairs, as `ResumableSampler(..., with_epoch=True)` yields them:
    the epoch travels with the index because persistent workers hold a copy of this object that
    the main process cannot update. Before each item python's `random`, numpy's global RNG, torch's
    CPU generator and every `transforms` pipeline (objects with `set_random_seed`, as albumentations
    `Compose`; by default the dataset's `transform`/`transforms` attribute when it has one) are
    seeded from `seed_for(seed, epoch, index)`. In the main process (`num_workers=0`) the global RNG
    states are restored afterwards, so loading data never moves the training RNG.
    """

    def __init__(self, dataset: Dataset, seed: int, *, transforms: Sequence[Any] | None = None) -> None:
        self.dataset = dataset
        self.seed = _check_int("seed", seed, high=2**63)
        if transforms is None:
            found = (getattr(dataset, name, None) for name in ("transform", "transforms"))
            transforms = [t for t in found if callable(getattr(t, "set_random_seed", None))]
        for t in transforms:
            if not callable(getattr(t, "set_random_seed", None)):
                raise ValueError(f"transforms: {t!r} has no set_random_seed(seed) method, so it cannot be seeded.")
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"IndexSeeded got key {key!r}; it needs (epoch, index) pairs: build the sampler "
                             "with ResumableSampler(..., with_epoch=True).")
        epoch, index = key
        if get_worker_info() is not None:  # a worker process: its RNGs serve data loading only
            self._seed(seed_for(self.seed, epoch, index))
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            self._seed(seed_for(self.seed, epoch, index))
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])

    def _seed(self, s: int) -> None:
        random.seed(s)
        np.random.seed([s & 0xFFFFFFFF, s >> 32])
        torch.default_generator.manual_seed(s)  # CPU only: torch.manual_seed would touch CUDA too
        for t in self.transforms:
            t.set_random_seed(s)
