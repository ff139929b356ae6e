"""Reproducibility: one place that seeds every RNG, and RNG state capture/restore.

Seeding in one place matters: a notebook that seeds numpy in one cell and torch in another
reproduces nothing once cells are re-run out of order.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "seed_everything",
    "set_deterministic",
    "make_generator",
    "seed_worker",
    "rng_state",
    "restore_rng_state",
]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"SEED={seed!r} is not valid: use an integer in [0, 2**32).")
    return int(seed)


def seed_everything(seed: int, *, deterministic: bool | None = None) -> int:
    """Seed python, numpy, torch (CPU and every CUDA device) from one integer; returns the seed.

    `deterministic=True` also switches torch to deterministic kernels (slower on GPU), False switches
    them off (cuDNN benchmark on), None keeps what was set before (so `start_run`, which seeds every
    run, never undoes a `set_deterministic(True)` made earlier in the notebook).
    Seeding CUDA here is lazy in torch: it does not initialise CUDA.
    """
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too, lazily
    os.environ["PYTHONHASHSEED"] = str(seed)  # for child processes (workers spawned later)
    set_deterministic(torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic)
    return seed


def set_deterministic(enabled: bool = True) -> None:
    """Turn deterministic algorithms on or off (cuDNN benchmark is the opposite switch)."""
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        # Needed by cuBLAS for deterministic matmuls; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def make_generator(seed: int) -> torch.Generator:
    """A torch.Generator for a DataLoader: the shuffle order then depends on this seed alone."""
    g = torch.Generator()
    g.manual_seed(_check_seed(seed))
    return g


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive numpy/python seeds from torch's per-worker seed.

    torch seeds each worker as base_seed + worker_id (base_seed drawn from the loader's
    generator); without this, numpy-based augmentations repeat across workers and epochs.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Capture python, numpy, torch and (if initialised) CUDA RNG states as plain tensors/values."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured; a missing key is an error, never skipped silently."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing {sorted(missing)}; it cannot be restored exactly.")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # each visible GPU gets its saved stream; a state saved for a GPU this process cannot see (two
        # GPUs then, one now) has no stream left to drive, so it is not restored
        for index, saved in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved, index)
