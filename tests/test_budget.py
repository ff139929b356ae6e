"""Tests for kagglekit_nb.budget: duration parsing, the fake-clock budget, resolution, epoch planning."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
from _fakes import FakeClock

from kagglekit_nb import budget

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
    b = Budget(total_s=100.0, clock=clock, reserves={"predict": 20.0})
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


def test_a_handed_over_budget_keeps_the_deadline_on_another_clock():
    clock = FakeClock(500.0)
    b = Budget(total_s=600.0, clock=clock, reserves={"write": 5.0}, source="env")
    with b.timed("classical"):
        clock.advance(40.0)
    state = b.handover()
    # another process, another monotonic clock, 2 s later on the wall clock
    other = Budget.taken_over(state, clock=FakeClock(7.0), wall=lambda: state["wall"] + 2.0)
    assert other.remaining() == pytest.approx(b.remaining() - 2.0)
    assert (other.reserves, other.phases, other.source) == ({"write": 5.0}, {"classical": 40.0}, "env")
    unlimited = Budget(total_s=math.inf, clock=clock).handover()
    assert unlimited["total_s"] is None and not Budget.taken_over(unlimited, clock=clock).limited
    assert budget.WORKER_GRACE_S < budget.STOP_GRACE_S  # the notebook keeps time to write after the workers


def test_budget_summary():
    clock = FakeClock()
    b = Budget(total_s=3600.0, clock=clock, reserves={"predict": 12.345}, source="env")
    with b.timed("train"):
        clock.advance(10.004)
    summary = b.summary()
    assert set(summary) == {"budget_s", "budget_source", "elapsed_s", "reserve_s", "reserves", "phases"}
    assert summary == {"budget_s": 3600.0, "budget_source": "env", "elapsed_s": 10.0,
                       "reserve_s": 12.35, "reserves": {"predict": 12.35}, "phases": {"train": 10.0}}


def test_budget_without_limit():
    clock = FakeClock()
    b = Budget(total_s=math.inf, clock=clock, reserves={"predict": 30.0})
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
    tests = [t for t in finder.find(budget) if t.examples]
    names = {t.name.rsplit(".", 1)[-1] for t in tests}
    assert {"plan_epochs", "parse_duration"} <= names
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 2
    assert result.failed == 0


# --------------------------------------------------------------------------- every stop decision


def test_named_reserves_add_up_and_replace_by_name():
    b = Budget(total_s=100.0, clock=FakeClock())
    b.reserve_submission()
    assert b.reserves == {"write": budget.WRITE_S, "verify": budget.VERIFY_S}
    b.reserve("package", 20.0)
    b.reserve("package", 30.0)          # a step declares its need once; a second call replaces it
    assert b.reserve_s == budget.WRITE_S + budget.VERIFY_S + 30.0
    assert b.release("package") == 30.0 and "package" not in b.reserves
    assert b.training_left() == 100.0 - budget.WRITE_S - budget.VERIFY_S


@pytest.mark.parametrize("name, seconds, match", [
    ("", 1.0, "non-empty string"), ("predict", -1.0, "must be >= 0"), ("predict", math.nan, "must be >= 0")])
def test_reserve_rejects_bad_values(name, seconds, match):
    with pytest.raises(ValueError, match=match):
        Budget(total_s=10.0, clock=FakeClock()).reserve(name, seconds)


def test_reserve_predict_is_the_measured_pace_times_the_safety_factor():
    b = Budget(total_s=100.0, clock=FakeClock())
    assert b.reserve_predict(items=1000, item_s=0.002, models=4) == pytest.approx(
        budget.SAFETY * 2.0 + budget.MODEL_LOAD_S * 4)
    assert b.reserves["predict"] == pytest.approx(budget.SAFETY * 2.0 + budget.MODEL_LOAD_S * 4)


def test_predict_rows_is_test_rows_when_the_rerun_scores_more_rows():
    assert budget.predict_rows(3, 500_000) == 500_000
    assert budget.predict_rows(40, None) == 40 and budget.predict_rows(40, 10) == 40


def test_how_many_fit_starts_an_item_while_its_safety_margin_fits_and_spends_its_pace():
    clock = FakeClock()
    b = Budget(total_s=100.0, clock=clock, reserves={"write": 10.0})
    assert b.how_many_fit("batch", [10, 10]) == 2          # no pace yet: nothing to refuse
    b.observe("batch", 2.0)
    # 90 s: each item of 10 batches starts while 1.5 x 20 s = 30 s fit, then spends 20 s
    assert b.how_many_fit("batch", [10] * 6) == 4
    b.allot("stage", 0.5)                                  # 45 s for the stage
    assert b.how_many_fit("batch", [10] * 6, share="stage") == 1
    clock.advance(30.0)
    assert b.how_many_fit("batch", [10] * 6, share="stage") == 0
    assert b.describe_reserves() == "10s (write 10s)"


def test_reserve_share_takes_a_fraction_of_what_the_other_reserves_leave():
    clock = FakeClock()
    b = Budget(total_s=100.0, clock=clock, reserves={"verify": 20.0})
    clock.advance(20.0)
    assert b.reserve_share("lgbm", 0.5) == 30.0       # (100 - 20 elapsed - 20 verify) / 2
    assert b.reserve_share("lgbm", 0.5) == 30.0       # re-declaring does not count itself
    assert b.training_left() == 30.0
    assert Budget(total_s=math.inf, clock=clock).reserve_share("lgbm", 0.5) == 0.0


def test_stop_reason_is_none_while_the_work_fits_and_names_the_reserves_after():
    clock = FakeClock()
    b = Budget(total_s=60.0, clock=clock, reserves={"predict": 8.0, "verify": 2.0})
    assert b.stop_reason(50.0) is None
    assert b.stop_reason(50.01) == "budget: stopped to keep time for predict + verify (10s)"
    clock.advance(49.0)
    assert b.stop_reason(1.0) is None and b.stop_reason(1.5) is not None
    assert Budget(total_s=math.inf, clock=clock).stop_reason(1e12) is None


def test_need_is_the_safety_factor_times_the_slower_of_estimate_and_measurement():
    b = Budget(total_s=100.0, clock=FakeClock())
    assert b.need("step") == 0.0                      # nothing known yet
    b.plan_pace("step", 0.2)
    assert b.need("step") == pytest.approx(budget.SAFETY * 0.2)
    b.observe("step", 0.1)                            # faster than planned: the estimate still counts
    assert b.need("step", 10) == pytest.approx(budget.SAFETY * 0.2 * 10)
    b.observe("step", 0.4)                            # slower (contention): the measurement counts
    assert b.need("step") == pytest.approx(budget.SAFETY * 0.4)
    b.plan_pace("step", 0.2)                          # a new fold forgets the old measurement
    assert b.need("step") == pytest.approx(budget.SAFETY * 0.2)


def test_epoch_estimate_adds_the_smoke_overhead_to_training_steps_only():
    assert Budget.epoch_estimate(step_s=0.1, steps=10, eval_item_s=0.01, val_items=50) == pytest.approx(
        0.1 * budget.SMOKE_OVERHEAD * 10 + 0.5)


def test_allot_gives_a_stage_a_share_of_the_training_time_left():
    clock = FakeClock()
    b = Budget(total_s=100.0, clock=clock, reserves={"verify": 20.0})
    end = b.allot("embeddings", 0.5)
    assert end == clock.now + 40.0
    clock.advance(39.0)
    assert b.stop_reason(1.0, share="embeddings") is None
    assert b.stop_reason(1.5, share="embeddings") == "budget: the share of the time given to embeddings is used"
    assert b.stop_reason(1.5) is None                 # the run as a whole still has time
    with pytest.raises(ValueError, match="fraction=0"):
        b.allot("embeddings", 0)


def test_plan_fold_never_plans_below_min_epochs_next_to_trained_folds():
    clock = FakeClock()
    b = Budget(total_s=25.0, clock=clock)
    # Alone, a fold that can only get 2 of MIN_EPOCHS=3 epochs still runs: a weak model beats none.
    alone = b.plan_fold(epoch_s=10.0, folds_left=1, max_epochs=10, min_epochs=3, folds_trained=0)
    assert alone["epochs"] == 2 and alone["folds_that_fit"] == 1
    # Next to a trained fold it would only dilute the ensemble: not started.
    after = b.plan_fold(epoch_s=10.0, folds_left=1, max_epochs=10, min_epochs=3, folds_trained=1)
    assert after["epochs"] == 0 and "MIN_EPOCHS=3" in after["note"]
    # With time for the floor, the floor is kept and folds are dropped instead.
    b2 = Budget(total_s=65.0, clock=clock)
    assert b2.plan_fold(epoch_s=10.0, folds_left=5, max_epochs=10, min_epochs=3, folds_trained=2)["epochs"] == 3


def test_close_setup_books_the_time_before_the_first_phase_once():
    clock = FakeClock()
    b = Budget(total_s=100.0, clock=clock)
    clock.advance(7.0)
    b.close_setup()
    clock.advance(5.0)
    b.close_setup()
    assert b.phases == {"setup": 7.0}


# ----------------------------------------------------------------------------- stop signals and the checkpoint cadence

import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from kagglekit_nb.budget import CheckpointTimer, StopSignal, install_sigterm_handler  # noqa: E402


def test_timer_on_a_fake_clock():
    now = [100.0]
    timer = CheckpointTimer("5m", clock=lambda: now[0])
    assert timer.every_s == 300 and not timer.due() and timer.remaining() == 300
    now[0] += 299.9
    assert not timer.due()
    now[0] += 0.1
    assert timer.due() and timer.remaining() == 0
    timer.reset()
    assert not timer.due()
    with pytest.raises(ValueError, match="CHECKPOINT_EVERY='soon'"):
        CheckpointTimer("soon")


def _wait_for(flag, timeout=2.0):
    end = time.monotonic() + timeout
    while not flag and time.monotonic() < end:
        time.sleep(0.001)


def test_sigterm_sets_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    names: list[str] = []
    with install_sigterm_handler(names.append) as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(stop)
        assert stop.received == "SIGTERM" and names == ["SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_second_sigint_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with install_sigterm_handler(signals=(signal.SIGTERM, signal.SIGINT)) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(stop)
            assert stop.received == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGINT) == before


def test_stop_signal_is_falsy_until_a_signal_arrives():
    flag = StopSignal()
    assert not flag and flag.received is None
    flag.received = "SIGTERM"
    assert flag and flag.received == "SIGTERM"


# --------------------------------------------------------------------------- EPOCHS = None, the model ladder


def test_plan_fold_without_max_epochs_plans_what_fits_up_to_the_cap():
    clock = FakeClock(0.0)
    b = Budget(total_s=1000.0, clock=clock)
    b.reserve("predict", 100.0)
    # 900 s of training left, 5 folds of 10 s epochs: 18 epochs each
    assert b.plan_fold(epoch_s=10.0, folds_left=5, max_epochs=None, min_epochs=3)["epochs"] == 18
    clock.advance(400.0)  # 500 s left: 10 epochs each
    assert b.plan_fold(epoch_s=10.0, folds_left=5, max_epochs=None, min_epochs=3)["epochs"] == 10
    # an explicit EPOCHS still caps the plan
    assert b.plan_fold(epoch_s=10.0, folds_left=5, max_epochs=4, min_epochs=3)["epochs"] == 4
    # what fits is capped at MAX_EPOCHS, with or without a limit
    assert b.plan_fold(epoch_s=0.001, folds_left=5, max_epochs=None, min_epochs=3)["epochs"] == budget.MAX_EPOCHS
    unlimited = Budget(total_s=math.inf, clock=clock)
    assert unlimited.plan_fold(epoch_s=10.0, folds_left=5, max_epochs=None, min_epochs=3)["epochs"] == budget.MAX_EPOCHS
    assert budget.epoch_limit(None) == budget.MAX_EPOCHS and budget.epoch_limit(7) == 7


def test_pick_rung_takes_the_strongest_rung_that_fits():
    clock = FakeClock(0.0)
    b = Budget(total_s=1000.0, clock=clock)
    b.reserve("write", 100.0)   # 900 s of training left
    need = budget.RUNG_EPOCHS * 3  # 3 folds x RUNG_EPOCHS epochs per rung
    fast = b.pick_rung([1.0, 900.0 / need, 900.0 / need + 1.0], folds=3, max_epochs=None, min_epochs=3)
    assert fast.index == 1 and fast.fits == [True, True, False] and fast.epochs == budget.RUNG_EPOCHS
    assert fast.need_s == [pytest.approx(need), pytest.approx(900.0), pytest.approx(900.0 + need)]
    # the same ladder on a slower machine (every epoch 3x): only the first rung fits
    slow = b.pick_rung([3.0, 2700.0 / need, 2700.0 / need + 3.0], folds=3, max_epochs=None, min_epochs=3)
    assert slow.index == 0 and slow.fits == [True, False, False]
    # untimed rungs (None) are not chosen; the climb ends at the first that does not fit
    assert b.pick_rung([1.0, 2.0, None], folds=3, max_epochs=None, min_epochs=3).fits == [True, True, None]
    assert b.pick_rung([1.0, 100.0, 2.0], folds=3, max_epochs=None, min_epochs=3).index == 0
    # nothing fits: the first rung, marked as not fitting
    worst = b.pick_rung([100.0, 200.0], folds=3, max_epochs=None, min_epochs=3)
    assert worst.index == 0 and worst.fits == [False, False]


def test_pick_rung_counts_epochs_min_epochs_and_the_other_needs():
    b = Budget(total_s=100.0, clock=FakeClock(0.0))
    # EPOCHS=2 set: each rung needs folds x 2 epochs; 2 folds x 2 x 25 s = 100 s fits
    assert b.pick_rung([10.0, 25.0], folds=2, max_epochs=2, min_epochs=3).index == 1
    # MIN_EPOCHS above RUNG_EPOCHS raises what a rung must fit
    big = b.pick_rung([1.0], folds=2, max_epochs=None, min_epochs=budget.RUNG_EPOCHS + 5)
    assert big.epochs == budget.RUNG_EPOCHS + 5
    # a rung's prediction time counts against it
    assert b.pick_rung([10.0, 25.0], folds=2, max_epochs=2, min_epochs=3, other_s=[0.0, 1.0]).index == 0
    assert Budget(total_s=math.inf).pick_rung([1.0, 1e9], folds=5, max_epochs=None, min_epochs=3).index == 1
    with pytest.raises(ValueError, match=r"folds=0 must be at least 1"):
        b.pick_rung([1.0], folds=0, max_epochs=None, min_epochs=3)


# --------------------------------------------------------------------------- split_budget (batches of runs)


def test_split_budget_gives_each_run_its_share_of_what_is_left():
    assert budget.split_budget(300.0, 3) == 100.0
    assert budget.split_budget(300.0, 3, parallel=2) == 150.0   # two waves: 2 runs, then 1
    assert budget.split_budget(300.0, 4, parallel=4) == 300.0
    # a run that ended early leaves its time to the next: 250 s left after a 50 s run, 2 runs to go
    assert budget.split_budget(250.0, 2) == 125.0
    assert budget.split_budget(-3.0, 2) == 0.0
    with pytest.raises(ValueError, match="runs_left=0"):
        budget.split_budget(10.0, 0)


def test_forwarding_signals_hands_them_to_the_launcher_and_restores_the_previous_handlers():
    from kagglekit_nb.budget import forwarding_signals

    got: list[int] = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with forwarding_signals(lambda signum, frame: got.append(signum)):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        end = time.monotonic() + 2.0
        while len(got) < 2 and time.monotonic() < end:
            time.sleep(0.001)
    assert got == [signal.SIGTERM, signal.SIGINT]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
