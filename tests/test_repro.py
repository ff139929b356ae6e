"""Tests for kagglekit_nb.repro: one seed for every RNG, seeded loaders, RNG state capture/restore."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kagglekit_nb.repro import (
    make_generator,
    restore_rng_state,
    rng_state,
    seed_everything,
    seed_worker,
    set_deterministic,
)


@pytest.fixture(autouse=True)
def _restore_global_switches(monkeypatch):
    """seed_everything writes env vars and torch switches; put them back after each test."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (3,)).tolist(),
    )


def test_seed_everything_makes_draws_repeat():
    assert seed_everything(123) == 123
    first = _draws()
    seed_everything(123)
    second = _draws()
    seed_everything(124)
    other = _draws()
    assert first == second
    for a, b in zip(first, other):
        assert a != b  # each RNG follows the seed


def test_seed_everything_sets_hash_seed_for_child_processes():
    import os

    seed_everything(7)
    assert os.environ["PYTHONHASHSEED"] == "7"


def test_seed_everything_accepts_numpy_integers():
    result = seed_everything(np.int64(5))
    assert result == 5 and type(result) is int


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "1", None])
def test_bad_seeds_name_seed(seed):
    with pytest.raises(ValueError, match=r"SEED=") as info:
        seed_everything(seed)
    assert repr(seed) in str(info.value)
    with pytest.raises(ValueError, match=r"SEED="):
        make_generator(seed)


def test_largest_valid_seed():
    assert seed_everything(2**32 - 1) == 2**32 - 1


def test_deterministic_switch():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    seed_everything(1)  # as start_run seeds every run: the switch stays as it was set
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    seed_everything(2)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def _order(seed: int, epochs: int = 2) -> list[list[int]]:
    loader = DataLoader(list(range(32)), batch_size=32, shuffle=True, generator=make_generator(seed))
    return [next(iter(loader)).tolist() for _ in range(epochs)]


def test_make_generator_fixes_the_shuffle_order():
    torch.manual_seed(0)
    a = _order(11)
    torch.manual_seed(999)  # the global torch RNG must not matter
    b = _order(11)
    c = _order(12)
    assert a == b
    assert a != c
    assert sorted(a[0]) == list(range(32)) and a[0] != list(range(32))
    assert a[0] != a[1]  # a new order each epoch, still reproducible


def test_seed_worker_derives_numpy_and_python_seeds_from_torch():
    torch.manual_seed(4321)
    seed_worker(0)
    got = (np.random.rand(), random.random())
    np.random.seed(4321)
    random.seed(4321)
    assert got == (np.random.rand(), random.random())


def test_rng_state_round_trip():
    seed_everything(3)
    _draws()
    state = rng_state()
    after_capture = _draws()
    _draws()  # move every RNG on
    restore_rng_state(state)
    after_restore = _draws()
    assert after_capture == after_restore


def test_rng_state_is_a_snapshot_not_a_view():
    seed_everything(3)
    state = rng_state()
    before = state["torch"].clone()
    torch.rand(10)
    assert torch.equal(state["torch"], before)


@pytest.mark.parametrize("missing", ["python", "numpy", "torch"])
def test_restore_with_a_missing_key_raises_and_restores_nothing(missing):
    seed_everything(3)
    state = rng_state()
    del state[missing]
    _draws()  # move every RNG on
    python_now, numpy_now, torch_now = random.getstate(), np.random.get_state(), torch.get_rng_state()
    with pytest.raises(ValueError, match=missing):
        restore_rng_state(state)
    assert random.getstate() == python_now
    assert np.array_equal(np.random.get_state()[1], numpy_now[1])
    assert torch.equal(torch.get_rng_state(), torch_now)
