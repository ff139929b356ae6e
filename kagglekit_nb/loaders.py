"""DataLoaders with safe defaults, the first-batch watchdog, and the batches they yield.

Only training shuffles: a train loader's order and augmentation are functions of (seed, epoch,
index), resumable mid-epoch; validation and test loaders keep every sample in order and are never
split across processes. Each loader has its own generator, so iterating one never draws from the
global torch RNG.

Worker processes that never deliver a first batch (a stuck worker, too little shared memory) are
caught by a watchdog: the loader is rebuilt with num_workers=0, slower but safe.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .distributed import active as _dist_on
from .options import _check_int
from .repro import make_generator, seed_worker

__all__ = ["make_loader", "default_workers", "steps_per_epoch"]


def default_workers(device: torch.device | str, environ: Mapping[str, str] | None = None) -> int:
    """DataLoader workers: on CUDA most cores feed the GPU; on a small CPU box workers would
    steal the cores that compute, so decode in the main process there. Several training processes
    on one machine (torchrun's LOCAL_WORLD_SIZE) share its cores."""
    environ = os.environ if environ is None else environ
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = max(1, cpus // max(1, int(environ.get("LOCAL_WORLD_SIZE") or 1)))
    if torch.device(device).type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 2)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int | None = None,
    drop_last: bool | None = None,
    distributed: bool | None = None,
) -> DataLoader:
    """A DataLoader with safe defaults: only `train=True` shuffles, through a `ResumableSampler`
    (order from (seed, epoch), resumable mid-epoch) over `IndexSeeded(dataset)` (augmentation from
    (seed, epoch, index), whatever the number of workers).

    Every loader has its own generator (unused for order when not training), so iterating a
    validation loader never draws from the global torch RNG: evaluating more or less often does
    not change the dropout masks of training.

    `distributed=None` splits a train loader across processes (the sampler shards by rank) when
    torch.distributed runs with several processes; validation and test loaders are never split here (a
    distributed `fit` gives each process a contiguous share of the validation set, gathers the shares on
    rank 0 in order and shares the score, so every process takes the same best-epoch and early-stopping
    decisions).

    Split, `batch_size` is one process's share of the optimizer step's batch: R processes at
    `batch_size` b train on the same samples per step as one process at R x b (`ResumableSampler`),
    and an epoch has the same number of steps, because the shards drop the epoch's last
    len(dataset) mod R samples instead of repeating some, and the last incomplete step is dropped by
    the same rule as in one process (`drop_last=None`: when there is more than one step's batch).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"BATCH_SIZE={batch_size!r} must be a positive integer.")
    workers = default_workers(device) if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"NUM_WORKERS={num_workers!r} must be >= 0 (or None for automatic).")
    split = (train and _dist_on() and torch.distributed.get_world_size() > 1) if distributed is None else distributed
    if split and not train:
        raise ValueError("distributed=True for a validation/test loader: these are never split across processes "
                         "(every process evaluates the whole set); use distributed=None.")
    replicas, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if split else (1, 0)
    # A last batch of one sample breaks BatchNorm in training; keep every sample at inference.
    drop = (train and len(dataset) > batch_size * replicas) if drop_last is None else drop_last
    sampler = None
    if train:  # order and augmentation a function of (seed, epoch, index): exact mid-epoch resume
        from .sampler import IndexSeeded, ResumableSampler

        sampler = ResumableSampler(dataset, seed=seed, num_replicas=replicas, rank=rank, drop_last=replicas > 1,
                                   with_epoch=True)
        dataset = IndexSeeded(dataset, seed)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=seed_worker)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=make_generator(seed),
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop,
        **extra,
    )


def steps_per_epoch(loader: DataLoader, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch of `loader` (the last partial accumulation window counts)."""
    _check_int("accumulate", accumulate, 1)
    return math.ceil(len(loader) / accumulate)


def _rebuild(loader: DataLoader, *, batch_size: int | None = None, num_workers: int | None = None,
             sampler: Any = None) -> DataLoader:
    """The same loader (dataset, sampler, generator, collate) with another batch size, worker count or
    sampler (e.g. a range of indices: a share of an unshuffled loader)."""
    workers = loader.num_workers if num_workers is None else num_workers
    kw: dict[str, Any] = dict(num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                              worker_init_fn=loader.worker_init_fn, generator=loader.generator)
    if workers > 0:
        kw.update(persistent_workers=loader.persistent_workers, prefetch_factor=loader.prefetch_factor,
                  timeout=loader.timeout, multiprocessing_context=loader.multiprocessing_context)
    if loader.batch_size is None:
        if batch_size is not None:
            raise ValueError("the loader uses its own batch_sampler, so its batch size cannot be halved: "
                             "lower the batch size of that sampler.")
        return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **kw)
    if not isinstance(loader.dataset, IterableDataset):
        kw["sampler"] = loader.sampler if sampler is None else sampler
    return DataLoader(loader.dataset, batch_size=batch_size or loader.batch_size, drop_last=loader.drop_last, **kw)


def _loader_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


# --------------------------------------------------------------------------- first-batch watchdog


def _first_batch(iterator: Iterator, limit_s: float) -> Any:
    """`next(iterator)`, or TimeoutError when it takes longer than `limit_s` (the fetch is abandoned)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def fetch() -> None:
        try:
            box["batch"] = next(iterator)
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=fetch, daemon=True, name="kagglekit-first-batch").start()
    if not done.wait(limit_s):
        raise TimeoutError(f"no batch within {limit_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["batch"]


def _watched(loader: DataLoader, limit_s: float | None, restart: Callable[[], None], say: Callable,
             what: str) -> tuple[DataLoader, Iterator]:
    """An iterator over `loader` whose first batch from worker processes must come within `limit_s`;
    otherwise the loader is rebuilt with num_workers=0 (after `restart()` rewinds its RNG)."""
    it = iter(loader)
    if not limit_s or loader.num_workers == 0:
        return loader, it
    try:
        first = _first_batch(it, limit_s)
    except StopIteration:
        return loader, iter(())
    except TimeoutError:
        say(f"the {what} loader's {loader.num_workers} worker processes gave no batch within {limit_s:g}s "
            "(a stuck worker or too little shared memory): rebuilt with num_workers=0, slower but safe. "
            "Set NUM_WORKERS=0 to skip the wait.", warning=True)
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        restart()
        loader = _rebuild(loader, num_workers=0)
        return loader, iter(loader)
    return loader, _chain(first, it)


def _chain(first: Any, rest: Iterator) -> Iterator:
    yield first
    yield from rest


# --------------------------------------------------------------------------- batches


def _to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """`batch` (a tensor, or lists, tuples and dicts of them) on `device`."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4:
            return batch.to(device, memory_format=torch.channels_last, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device, channels_last) for k, v in batch.items()}
    return batch


def _xy(batch: Any, where: str) -> tuple[Any, Any]:
    """(inputs, labels) of a labelled batch; an error naming `where` for anything else (the test loader)."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    got = f"{type(batch).__name__} of {len(batch)}" if isinstance(batch, (list, tuple)) else type(batch).__name__
    raise ValueError(f"{where} needs (inputs, labels) batches but the loader yields a {got}: is it the test "
                     "loader? Train, pick the best epoch and early-stop on a labelled validation fold "
                     "(make_folds), never on the test set; use predict() for the test set.")


def _count(y: Any) -> int:
    return y.shape[0] if isinstance(y, torch.Tensor) else len(y)
