"""Tests for kagglekit_nb.budget: duration parsing, the fake-clock budget, resolution, epoch planning."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
from _fakes import FakeClock

from kagglekit_nb import budget as budget_module
from kagglekit_nb.budget import Budget, parse_duration, plan_epochs, platform_limit_s, process_age_s


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (90.5, 90.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("45m", 2700.0),
        ("45min", 2700.0),
        ("2h", 7200.0),
        ("2hr", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
        (".5h", 1800.0),
        (" 2 h ", 7200.0),
        ("2H", 7200.0),
    ],
)
def test_parse_duration_good_forms(value, seconds):
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize("value", ["", "   ", "abc", "10x", "h", -5, 0, 0.0, "0s", True, False, None,
                                   "1h-2m", float("inf"), float("nan"), [90]])
def test_parse_duration_rejects_bad_values_and_repeats_them(value):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert repr(value) in str(info.value)
    assert "BUDGET=" in str(info.value)


def test_parse_duration_error_uses_the_given_name():
    with pytest.raises(ValueError, match=r"--budget='abc'"):
        parse_duration("abc", name="--budget")


def test_parse_duration_accepts_sec_unit():
    assert parse_duration("90sec") == 90.0


# --------------------------------------------------------------------------- Budget


def test_budget_elapsed_remaining_and_training_left_follow_the_clock():
    clock = FakeClock(1000.0)
    b = Budget(total_s=100.0, clock=clock, reserve_s=20.0)
    assert b.start == 1000.0
    assert b.limited
    assert b.elapsed() == 0.0
    assert b.remaining() == 100.0
    clock.advance(30.0)
    assert b.elapsed() == 30.0
    assert b.remaining() == 70.0
    assert b.training_left() == 50.0
    assert b.fits(50.0)
    assert not b.fits(50.5)
    clock.advance(90.0)  # past the deadline
    assert b.remaining() == -20.0
    assert b.training_left() == -40.0
    assert not b.fits(0.0)


def test_budget_explicit_start_counts_time_before_creation():
    clock = FakeClock(500.0)
    b = Budget(total_s=60.0, start=480.0, clock=clock)
    assert b.elapsed() == 20.0
    assert b.remaining() == 40.0


def test_budget_timed_phases_accumulate():
    clock = FakeClock()
    b = Budget(total_s=600.0, clock=clock)
    with b.timed("train"):
        clock.advance(5.0)
    clock.advance(100.0)  # outside any phase
    with b.timed("train"):
        clock.advance(7.5)
    with b.timed("predict"):
        clock.advance(2.0)
    b.add_phase("setup", 1.25)
    assert b.phases == {"train": 12.5, "predict": 2.0, "setup": 1.25}


def test_budget_timed_records_the_phase_even_when_the_block_raises():
    clock = FakeClock()
    b = Budget(total_s=600.0, clock=clock)
    with pytest.raises(RuntimeError):
        with b.timed("train"):
            clock.advance(3.0)
            raise RuntimeError("boom")
    assert b.phases == {"train": 3.0}


def test_budget_summary():
    clock = FakeClock()
    b = Budget(total_s=3600.0, clock=clock, reserve_s=12.345, source="env")
    with b.timed("train"):
        clock.advance(10.004)
    summary = b.summary()
    assert set(summary) == {"budget_s", "budget_source", "elapsed_s", "reserve_s", "phases"}
    assert summary == {"budget_s": 3600.0, "budget_source": "env", "elapsed_s": 10.0,
                       "reserve_s": 12.35, "phases": {"train": 10.0}}


def test_budget_without_limit():
    clock = FakeClock()
    b = Budget(total_s=math.inf, clock=clock, reserve_s=30.0)
    clock.advance(1e6)
    assert not b.limited
    assert b.remaining() == math.inf
    assert b.training_left() == math.inf
    assert b.fits(1e9)
    assert b.summary()["budget_s"] is None


@pytest.mark.parametrize("total", [0.0, -1.0, math.nan])
def test_budget_rejects_non_positive_totals(total):
    with pytest.raises(ValueError, match="total_s"):
        Budget(total_s=total, clock=FakeClock())


# --------------------------------------------------------------------------- Budget.resolve


def test_resolve_parameter_wins_over_env_and_platform():
    b = Budget.resolve("10m", platform="kaggle", environ={"KAGGLEKIT_BUDGET": "1h"},
                       clock=FakeClock(), process_age=0.0)
    assert b.total_s == 600.0
    assert b.source == "parameter"


def test_resolve_env_wins_over_platform_limit():
    b = Budget.resolve(None, platform="kaggle", environ={"KAGGLEKIT_BUDGET": "1h"},
                       clock=FakeClock(), process_age=0.0)
    assert b.total_s == 3600.0
    assert b.source == "env"


def test_resolve_bad_env_budget_names_the_variable():
    with pytest.raises(ValueError, match=r"KAGGLEKIT_BUDGET='soon'"):
        Budget.resolve(None, environ={"KAGGLEKIT_BUDGET": "soon"}, clock=FakeClock(), process_age=0.0)


def test_resolve_empty_env_budget_is_ignored():
    b = Budget.resolve(None, platform="local", environ={"KAGGLEKIT_BUDGET": ""},
                       clock=FakeClock(), process_age=0.0)
    assert b.source == "unlimited"


@pytest.mark.parametrize("platform", ["kaggle", "colab"])
def test_resolve_platform_limit(platform):
    b = Budget.resolve(None, platform=platform, environ={}, clock=FakeClock(), process_age=0.0)
    assert b.total_s == 12 * 3600.0
    assert b.source == f"{platform} session limit"
    assert platform_limit_s(platform) == 12 * 3600.0


def test_resolve_local_without_anything_is_unlimited():
    b = Budget.resolve(None, platform="local", environ={}, clock=FakeClock(), process_age=0.0)
    assert b.total_s == math.inf
    assert not b.limited
    assert b.source == "unlimited"
    assert platform_limit_s("local") is None


def test_resolve_starts_at_kagglekit_start():
    clock = FakeClock(1000.0)
    b = Budget.resolve("100s", environ={"KAGGLEKIT_START": "900.5"}, clock=clock, process_age=5.0)
    assert b.start == 900.5  # the env start wins over the process age
    assert b.elapsed() == 99.5
    assert b.remaining() == 0.5


def test_resolve_start_in_the_future_is_clamped_to_now():
    clock = FakeClock(1000.0)
    b = Budget.resolve("100s", environ={"KAGGLEKIT_START": "1500"}, clock=clock, process_age=0.0)
    assert b.start == 1000.0
    assert b.elapsed() == 0.0


def test_resolve_uses_process_age_without_kagglekit_start():
    clock = FakeClock(1000.0)
    b = Budget.resolve("100s", environ={}, clock=clock, process_age=40.0)
    assert b.start == 960.0
    assert b.remaining() == 60.0


def test_process_age_of_this_process_is_a_plausible_number():
    age = process_age_s()
    if age is None:
        pytest.skip("/proc is not available on this system")
    assert 0.0 <= age < 24 * 3600


def test_process_age_of_a_missing_process_is_none():
    assert process_age_s(2**31 - 1) is None


# --------------------------------------------------------------------------- plan_epochs


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # everything fits: the maximum epochs for every fold
        (dict(available_s=1000, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (12, 5)),
        # fewer epochs per fold, all folds kept
        (dict(available_s=300, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (6, 5)),
        # exactly min_epochs per fold still keeps every fold
        (dict(available_s=150, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (3, 5)),
        # below min_epochs per fold: drop folds, keep min_epochs
        (dict(available_s=100, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (3, 3)),
        # not even min_epochs for one fold: as many whole epochs of one fold as fit
        (dict(available_s=25, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (2, 1)),
        # nothing fits
        (dict(available_s=5, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (0, 0)),
        (dict(available_s=-50, epoch_s=10, folds_left=5, max_epochs=12, min_epochs=3), (0, 0)),
        # min_epochs above max_epochs is capped at max_epochs
        (dict(available_s=40, epoch_s=10, folds_left=4, max_epochs=2, min_epochs=5), (2, 2)),
        # no limit
        (dict(available_s=math.inf, epoch_s=10, folds_left=5, max_epochs=12), (12, 5)),
        # no work left
        (dict(available_s=1000, epoch_s=10, folds_left=0, max_epochs=12), (0, 0)),
        (dict(available_s=1000, epoch_s=10, folds_left=3, max_epochs=0), (0, 0)),
    ],
)
def test_plan_epochs_cases(kwargs, expected):
    assert plan_epochs(**kwargs) == expected


def test_plan_epochs_never_plans_more_than_fits():
    grid = itertools.product([0, 7, 30, 99, 250, 1234], [1.5, 10, 60], [1, 3, 5], [1, 4, 12], [1, 3])
    for available, epoch_s, folds_left, max_epochs, min_epochs in grid:
        epochs, folds = plan_epochs(available_s=available, epoch_s=epoch_s, folds_left=folds_left,
                                    max_epochs=max_epochs, min_epochs=min_epochs)
        case = (available, epoch_s, folds_left, max_epochs, min_epochs, epochs, folds)
        assert 0 <= epochs <= max_epochs, case
        assert 0 <= folds <= folds_left, case
        assert (epochs == 0) == (folds == 0), case
        assert epochs * folds * epoch_s <= available + 1e-9, case
        if available >= epoch_s:
            assert epochs >= 1, case  # one epoch of one fold fits, so something is planned


def test_plan_epochs_rejects_non_positive_epoch_time():
    with pytest.raises(ValueError, match="epoch_s"):
        plan_epochs(available_s=100, epoch_s=0, folds_left=2, max_epochs=3)


def test_docstring_examples_hold():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(budget_module) if t.examples]
    names = {t.name.rsplit(".", 1)[-1] for t in tests}
    assert {"plan_epochs", "parse_duration"} <= names
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 2
    assert result.failed == 0
