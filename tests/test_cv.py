"""Tests for kagglekit_nb.cv: the budget plan, stops at step granularity, exact resume across sessions,
signals, bad input and kept folds.

Time is a fake clock: loading a sample advances it, so the budget sees a steady pace without anyone
sleeping. The smoke step (timed on the real clock inside train_folds) is replaced by a report with
chosen timings, so the plan is a known function of the budget.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _fakes import FakeClock
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kagglekit_nb.budget import SMOKE_OVERHEAD
from kagglekit_nb import checkpoint as ckpt
from kagglekit_nb import cv
from kagglekit_nb.cv import (
    FoldSetup,
    fold_dir,
    fold_models,
    load_fold_model,
    oof_score,
    train_folds,
)
from kagglekit_nb.folds import FoldRegistry
from kagglekit_nb.loaders import make_loader
from kagglekit_nb.metrics import Metric, get_metric
from kagglekit_nb.preflight import SmokeReport
from kagglekit_nb.run import start_run

N_POINTS = 240          # split into N_FOLDS folds by index: 160 train / 80 validation points per fold
N_FOLDS = 3
BATCH, VAL_BATCH = 16, 64
STEPS = (N_POINTS - N_POINTS // N_FOLDS) // BATCH          # 10 optimizer steps per epoch
N_VAL = N_POINTS // N_FOLDS
# Powers of two, so that the fake clock adds them up without rounding.
TRAIN_ITEM_S = 2**-7    # fake seconds to load and train on one training sample
VAL_ITEM_S = 2**-8      # fake seconds to evaluate one validation sample
EPOCH_S = STEPS * BATCH * TRAIN_ITEM_S + N_VAL * VAL_ITEM_S   # 1.5625 s of fake time per epoch
PREFLIGHT_S = VAL_BATCH * VAL_ITEM_S    # fit reads one validation batch after its first step
ACCURACY = get_metric("accuracy")

# A smoke step that times the model exactly as the fake clock charges it: the plan's epoch is EPOCH_S.
TRUE_SMOKE = SmokeReport(step_s=BATCH * TRAIN_ITEM_S / SMOKE_OVERHEAD, eval_s_per_sample=VAL_ITEM_S, loss=0.7)
# One that sees a quarter of the cost: it times the model alone, and loading the data is the rest.
BLIND_SMOKE = SmokeReport(step_s=BATCH * TRAIN_ITEM_S / 4 / SMOKE_OVERHEAD, eval_s_per_sample=VAL_ITEM_S / 4, loss=0.7)


class Points(Dataset):
    """(x, y) pairs whose loading costs `item_s` seconds of the fake clock; `on_item(count)` after each."""

    def __init__(self, x, y, clock: FakeClock, item_s: float, on_item=None):
        self.x, self.y, self.clock, self.item_s, self.on_item = x, y, clock, item_s, on_item
        self.count = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        self.clock.now += self.item_s
        self.count += 1
        if self.on_item is not None:
            self.on_item(self.count)
        return self.x[i], self.y[i]


class StepLoss:
    """Cross-entropy that calls `at(n)` during the n-th training step (evaluation is not counted)."""

    def __init__(self, at):
        self.at, self.steps = at, 0

    def __call__(self, logits, y):
        if torch.is_grad_enabled():
            self.steps += 1
            self.at(self.steps)
        return F.cross_entropy(logits, y)


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on either side of a plane in 4-D, pushed apart by a margin."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N_POINTS, 4, generator=g)
    w = torch.tensor([1.0, 1.0, -1.0, 0.0]) / 3**0.5
    y = (x @ w > 0).long()
    return x + 0.7 * (2 * y - 1).float()[:, None] * w, y


def make_setup(clock: FakeClock, *, model_name: str = "mlp", plain_loader: bool = False, on_train_item=None,
               on_val_item=None, loss_fn=F.cross_entropy):
    """setup(fold) building everything from the fold number alone (train_folds seeds torch before it)."""
    x, y = _points()
    calls: list[int] = []

    def setup(k: int) -> FoldSetup:
        calls.append(k)
        val = torch.arange(N_POINTS) % N_FOLDS == k
        train_ds = Points(x[~val], y[~val], clock, TRAIN_ITEM_S, on_train_item)
        val_ds = Points(x[val], y[val], clock, VAL_ITEM_S, on_val_item)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        if plain_loader:
            train = DataLoader(train_ds, BATCH, shuffle=True)
        else:
            train = make_loader(train_ds, BATCH, train=True, seed=100 + k, num_workers=0)
        return FoldSetup(
            model=model, optimizer=optimizer, train_loader=train,
            val_loader=make_loader(val_ds, VAL_BATCH, train=False, num_workers=0),
            loss_fn=loss_fn, val_ids=[f"p{i}" for i in val.nonzero().flatten().tolist()],
            val_targets=y[val].numpy(),
            make_scheduler=lambda opt, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
            meta={"model": model_name, "fold": k})

    setup.calls = calls
    return setup


def open_run(out: Path, clock: FakeClock, budget=None, lines: list[str] | None = None):
    """A run whose budget starts now on the fake clock (KAGGLEKIT_START: no process age counted)."""
    echo = (lines if lines is not None else []).append
    return start_run({}, run_name="t", output_dir=out, budget=budget, seed=0,
                     environ={"KAGGLEKIT_START": repr(clock())}, clock=clock, echo=echo)


@pytest.fixture
def smoke(monkeypatch):
    """Replace the real-clock smoke step by a report; returns the list of calls."""
    calls: list[SmokeReport] = []

    def use(report: SmokeReport) -> list[SmokeReport]:
        def fake(*args, **kwargs):
            calls.append(report)
            return report
        monkeypatch.setattr(cv, "smoke_step", fake)
        return calls

    return use


def train(run, setup, **kwargs):
    kwargs.setdefault("n_folds", N_FOLDS)
    kwargs.setdefault("max_epochs", 3)
    return train_folds(run, setup=setup, metric=ACCURACY, **kwargs)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_fold_model(path)[0]


def newest_step(run, k: int) -> Path:
    return ckpt.list_checkpoints(fold_dir(run, k))[-1][1]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --------------------------------------------------------------------------- an uninterrupted reference


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One train_folds call without a budget: N_FOLDS folds x 3 epochs, never stopped."""
    out = tmp_path_factory.mktemp("reference") / "out"
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cv, "smoke_step", lambda *a, **k: TRUE_SMOKE)
        run = open_run(out, clock)
        result = train(run, make_setup(clock))
    best = {k: weights(p) for k, p, _ in fold_models(run, N_FOLDS)}
    last = {k: weights(newest_step(run, k)) for k in range(N_FOLDS)}
    return {"out": out, "result": result, "best": best, "last": last}


def test_reference_run_trains_every_fold_to_the_end(reference):
    result = reference["result"]
    assert result.stop_reason == "completed"
    assert sorted(result.folds) == [0, 1, 2]
    for k, info in result.folds.items():
        assert info["status"] == "done" and info["epochs_done"] == 3 and info["steps"] == 3 * STEPS, k
        assert result.plan[f"fold{k}"]["epochs"] == 3
    assert result.cv_score is not None and result.cv_score > 0.9  # separable data: the models learned
    history = pd.read_csv(reference["out"] / cv.HISTORY_FILE)
    assert list(history.columns) == list(cv.HISTORY_COLUMNS)
    assert history[["fold", "epoch"]].values.tolist() == [[k, e] for k in range(3) for e in (1, 2, 3)]
    for k, info in result.folds.items():
        best = history[(history["fold"] == k) & (history["epoch"] == info["best_epoch"])]
        assert best["score"].item() == info["score"]


# --------------------------------------------------------------------------- the plan


def test_budget_for_fewer_epochs_trains_every_fold_with_the_planned_epochs(tmp_path, smoke):
    sized = smoke(TRUE_SMOKE)
    clock = FakeClock()
    # 11 s at ~1.6 s per epoch for 3 folds: 2 epochs each fit, not the 5 asked for.
    run = open_run(tmp_path / "out", clock, budget=11)
    result = train(run, make_setup(clock), max_epochs=5, min_epochs=1)
    assert result.stop_reason == "completed"
    assert result.plan["fold0"]["epochs"] == int(11 // (EPOCH_S * 3)) == 2
    assert result.plan["fold0"]["folds_that_fit"] == 3
    assert len(sized) == 1                # sized once; later folds are planned from measured epochs
    for k in range(N_FOLDS):
        info = result.folds[k]
        assert result.plan[f"fold{k}"]["epochs"] == 2, (k, result.plan)
        assert info["status"] == "done" and info["epochs_done"] == 2 and info["steps"] == 2 * STEPS, (k, info)
    assert [(k, kind) for k, _, kind in fold_models(run, N_FOLDS)] == [(0, "best"), (1, "best"), (2, "best")]
    assert run.budget.remaining() >= 0
    # the fake clock saw exactly the work of 3 folds x 2 epochs (plus one pre-flight batch per fold)
    assert run.budget.elapsed() == pytest.approx(3 * (2 * EPOCH_S + PREFLIGHT_S))


def test_no_max_epochs_trains_what_fits_with_the_schedule_built_for_it(tmp_path, smoke, monkeypatch):
    smoke(TRUE_SMOKE)
    clock = FakeClock()
    setup = make_setup(clock)
    totals: list[int] = []

    def recording(k):  # the scheduler's total steps, as train_folds asks for it
        fs = setup(k)
        make = fs.make_scheduler
        fs.make_scheduler = lambda opt, total: (totals.append(total), make(opt, total))[1]
        return fs

    # 20 s at ~1.6 s per epoch (+0.25 s of pre-flight per fold) for 3 folds: 4 epochs each fit
    run = open_run(tmp_path / "out", clock, budget=20)
    result = train(run, recording, max_epochs=None, min_epochs=1)
    assert result.stop_reason == "completed"
    assert [result.plan[f"fold{k}"]["epochs"] for k in range(N_FOLDS)] == [4, 4, 4]
    assert [result.folds[k]["epochs_done"] for k in range(N_FOLDS)] == [4, 4, 4]
    assert totals == [4 * STEPS] * 3          # OneCycle/cosine over the planned total, not a fixed EPOCHS
    assert run.budget.remaining() >= 0
    # with more time than MAX_EPOCHS needs, the plan stops at MAX_EPOCHS
    monkeypatch.setattr("kagglekit_nb.budget.MAX_EPOCHS", 2)
    capped = train(open_run(tmp_path / "capped", clock, budget=100), make_setup(clock), max_epochs=None)
    assert [capped.plan[f"fold{k}"]["epochs"] for k in range(N_FOLDS)] == [2, 2, 2]


def test_budget_for_fewer_folds_than_asked_drops_folds(tmp_path, smoke):
    smoke(TRUE_SMOKE)
    clock = FakeClock()
    lines: list[str] = []
    # 8 s: min_epochs=2 for 3 folds would need ~9.4 s; 2 folds x 2 epochs fit.
    run = open_run(tmp_path / "out", clock, budget=8, lines=lines)
    result = train(run, make_setup(clock), max_epochs=5, min_epochs=2)
    assert result.plan["fold0"]["epochs"] == 2
    assert result.plan["fold0"]["folds_that_fit"] == 2
    assert sorted(result.folds) == [0, 1]
    assert all(result.folds[k]["status"] == "done" and result.folds[k]["epochs_done"] == 2 for k in (0, 1))
    assert result.plan["fold2"]["epochs"] == 0
    assert result.stop_reason == "budget: no time left for one more epoch"
    assert [k for k, _, _ in fold_models(run, N_FOLDS)] == [0, 1]
    assert not fold_dir(run, 2).exists()
    assert any("fold 2: not started" in line for line in lines)
    assert result.cv_score == pytest.approx(oof_score(run, ACCURACY, [0, 1]))
    saved = json.loads((run.dir / "run.json").read_text())
    assert saved["stop_reason"] == result.stop_reason and saved["folds_done"] == [0, 1]


def test_no_time_for_one_epoch_trains_nothing(tmp_path, smoke):
    smoke(TRUE_SMOKE)
    clock = FakeClock()
    lines: list[str] = []
    run = open_run(tmp_path / "out", clock, budget=EPOCH_S * 0.75, lines=lines)
    result = train(run, make_setup(clock))
    assert result.stop_reason == "budget: no time left for one more epoch"
    assert result.folds == {} and result.cv_score is None
    assert result.plan["fold0"]["epochs"] == 0
    assert fold_models(run, N_FOLDS) == []
    assert "train" not in run.budget.phases
    assert any("fold 0: not started" in line for line in lines)


# --------------------------------------------------------------------------- stopping at a step


def partial_session(out: Path, budget: float, smoke, *, reserve_s: float = 3.0):
    """A session whose steps take four times what its smoke step measured, so the plan promises more
    than fits and the budget runs out inside fold 0; the task declared a `reserve_s` verify reserve
    and `train_folds` sizes the prediction reserve from the smoke step's time per item."""
    smoke(BLIND_SMOKE)
    clock = FakeClock()
    run = open_run(out, clock, budget=budget)
    run.budget.reserve("verify", reserve_s - PREDICT_ITEMS * 1.5 * BLIND_SMOKE.eval_s_per_sample)
    result = train(run, make_setup(clock), predict_items=PREDICT_ITEMS)
    # sized from the smoke step's time per item, with the budget's one safety factor
    assert run.budget.reserves["predict"] == 1.5 * BLIND_SMOKE.eval_s_per_sample * PREDICT_ITEMS
    return run, result


PREDICT_ITEMS = 64


# A 3 s reserve and 3.375 s for two epochs: the budget runs out at different steps of the second
# and third epochs.
@pytest.mark.parametrize("budget", [6.6, 6.7, 7.0, 7.5])
def test_budget_stop_at_a_step_keeps_the_reserve(tmp_path, smoke, budget):
    run, result = partial_session(tmp_path / "out", budget, smoke, reserve_s=3.0)
    assert run.budget.reserve_s == 3.0
    assert run.budget.remaining() >= run.budget.reserve_s   # predict + verify still have their time
    assert result.stop_reason == "budget: stopped to keep time for verify + predict (3s)"
    assert result.plan["fold0"]["epochs"] == 3    # the smoke step promised 3 epochs of fold 0
    assert sorted(result.folds) == [0]
    info = FoldRegistry(run.dir).get(0)
    assert info["status"] == "partial" and info["stop_reason"] == result.stop_reason
    epochs, steps = divmod(info["steps"], STEPS)
    assert epochs >= 1 and steps > 0      # inside an epoch after the first, not at an epoch end
    assert info["epochs_done"] == epochs
    # the stop saved the exact position: the newest step file holds it
    state = ckpt.load_checkpoint(newest_step(run, 0))
    assert state["global_step"] == info["steps"]
    assert (state["sampler"]["epoch"], state["sampler"]["position"]) == (epochs, steps * BATCH)
    assert [(k, kind) for k, _, kind in fold_models(run, N_FOLDS)] == [(0, "best")]
    saved = json.loads((run.dir / "run.json").read_text())
    assert saved["budget_s"] == budget and saved["reserve_s"] == 3.0
    assert saved["elapsed_s"] == pytest.approx(run.budget.elapsed(), abs=0.01)
    assert saved["phases"]["train"] == pytest.approx(run.budget.elapsed(), abs=0.01)
    assert saved["plan"]["fold0"]["epochs"] == 3
    assert saved["folds"]["0"]["status"] == "partial"
    assert saved["stop_reason"] == result.stop_reason and saved["folds_done"] == []


# --------------------------------------------------------------------------- resume across sessions


def test_budget_stop_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, reference, smoke):
    out = tmp_path / "out"
    run1, first = partial_session(out, 7.0, smoke)
    stopped_at = first.folds[0]["steps"]
    # the next session: a fresh run (new clock, no budget) over the same folder
    clock = FakeClock(5000.0)
    lines: list[str] = []
    run2 = open_run(out, clock, lines=lines)
    smoke(TRUE_SMOKE)
    second = train(run2, make_setup(clock))
    assert second.stop_reason == "completed"
    assert [r["fold"] for r in second.resumed] == [0]
    resumed = second.resumed[0]
    assert (resumed["epoch"], resumed["step"]) == (2, stopped_at)
    assert resumed["position"] == (stopped_at - 2 * STEPS) * BATCH
    assert Path(resumed["file"]) == fold_dir(run2, 0) / ckpt.STEP_FILE.format(step=stopped_at)
    saved = json.loads((run2.dir / "run.json").read_text())
    assert saved["resumed_from"] == second.resumed and saved["sessions"] == 2
    assert any(f"fold 0: resumed from step-{stopped_at:09d}.ckpt" in line for line in lines)
    # exact: same weights (best and last), scores and out-of-fold score as one uninterrupted call
    for k in range(N_FOLDS):
        assert second.folds[k]["steps"] == 3 * STEPS
        assert_same_weights(weights(fold_dir(run2, k) / ckpt.BEST_FILE), reference["best"][k])
        assert_same_weights(weights(newest_step(run2, k)), reference["last"][k])
        assert second.folds[k]["score"] == reference["result"].folds[k]["score"]
        assert second.folds[k]["best_epoch"] == reference["result"].folds[k]["best_epoch"]
    assert second.cv_score == reference["result"].cv_score
    # one row per epoch in history.csv, whichever session trained it
    resumed_history = pd.read_csv(out / cv.HISTORY_FILE)
    straight_history = pd.read_csv(reference["out"] / cv.HISTORY_FILE)
    assert resumed_history[["fold", "epoch", "score"]].equals(straight_history[["fold", "epoch", "score"]])


def test_a_stall_before_an_evaluation_stops_there_and_resumes_from_the_epoch_before(tmp_path, reference, smoke):
    smoke(TRUE_SMOKE)
    out = tmp_path / "out"
    clock = FakeClock()

    def stall(step: int) -> None:  # the last step of epoch 2 hangs for 11 s: its evaluation no longer fits
        if step == 2 * STEPS:
            clock.now += 11.0

    run1 = open_run(out, clock, budget=14.1)   # 3 folds x 3 epochs planned (~14.06 s)
    first = train(run1, make_setup(clock, loss_fn=StepLoss(stall)))
    assert first.plan["fold0"]["epochs"] == 3 and list(first.plan) == ["fold0"]
    assert first.stop_reason == "budget: stopped at the end of the time"   # no reserve was declared
    assert (first.folds[0]["steps"], first.folds[0]["epochs_done"]) == (2 * STEPS, 1)
    assert run1.budget.remaining() >= 0
    # no checkpoint of a trained but unevaluated epoch: the newest is the end of epoch 1
    assert [s for s, _ in ckpt.list_checkpoints(fold_dir(run1, 0))] == [STEPS]
    clock2 = FakeClock()
    run2 = open_run(out, clock2)
    second = train(run2, make_setup(clock2))
    resumed = second.resumed[0]
    assert (resumed["epoch"], resumed["step"], resumed["position"]) == (1, STEPS, 0)
    assert second.stop_reason == "completed"
    for k in range(N_FOLDS):
        assert_same_weights(weights(fold_dir(run2, k) / ckpt.BEST_FILE), reference["best"][k])
        assert_same_weights(weights(newest_step(run2, k)), reference["last"][k])


# --------------------------------------------------------------------------- signals


def test_sigterm_stops_at_the_next_step_with_a_checkpoint_and_restores_the_handler(tmp_path, smoke):
    smoke(TRUE_SMOKE)
    clock = FakeClock()
    received: list[int] = []

    def before(signum, frame):  # the handler in place before the call: must not see the signal
        received.append(signum)

    def kill_at(count: int) -> None:
        if count == 40:  # the 40th training sample: inside the third batch
            os.kill(os.getpid(), signal.SIGTERM)

    lines: list[str] = []
    sigint = signal.getsignal(signal.SIGINT)
    old = signal.signal(signal.SIGTERM, before)
    try:
        run = open_run(tmp_path / "out", clock, lines=lines)
        result = train(run, make_setup(clock, on_train_item=kill_at))
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, old)
    assert received == []
    assert result.stop_reason.startswith("signal: SIGTERM")
    assert sorted(result.folds) == [0] and result.folds[0]["status"] == "partial"
    # the third batch was loaded when the signal came; the stop came before training on it
    assert result.folds[0]["steps"] == 2
    [(k, path, kind)] = fold_models(run, N_FOLDS)
    assert (k, path.name, kind) == (0, ckpt.STEP_FILE.format(step=2), "last")
    state = ckpt.load_checkpoint(path)
    assert state["global_step"] == 2 and state["sampler"]["position"] == 2 * BATCH
    assert any("SIGTERM received" in line for line in lines)


def test_sigterm_during_the_last_evaluation_keeps_the_fold_and_starts_no_other(tmp_path, smoke):
    smoke(TRUE_SMOKE)
    clock = FakeClock()

    def kill_at(count: int) -> None:  # the last validation sample of fold 0 (pre-flight batch + 3 epochs)
        if count == PREFLIGHT_S / VAL_ITEM_S + 3 * N_VAL:
            os.kill(os.getpid(), signal.SIGTERM)

    killing, plain = make_setup(clock, on_val_item=kill_at), make_setup(clock)
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        run = open_run(tmp_path / "out", clock)
        result = train(run, lambda k: killing(k) if k == 0 else plain(k))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert result.stop_reason == "signal: SIGTERM"
    assert result.folds[0]["status"] == "done" and result.folds[0]["epochs_done"] == 3
    assert sorted(result.folds) == [0] and plain.calls == []   # no later fold was even set up
    assert FoldRegistry(run.dir).done() == [0]


def test_sigterm_during_the_last_step_of_an_epoch_resumes_exactly(tmp_path, reference, smoke):
    smoke(TRUE_SMOKE)
    out = tmp_path / "out"
    clock = FakeClock()

    def kill_at(step: int) -> None:  # inside the last step of epoch 1: the stop comes before its evaluation
        if step == STEPS:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        run1 = open_run(out, clock)
        first = train(run1, make_setup(clock, loss_fn=StepLoss(kill_at)))
    finally:
        signal.signal(signal.SIGTERM, old)
    # the epoch was evaluated and saved, and the stop came at the first step of the next one
    assert first.stop_reason.startswith("signal: SIGTERM")
    assert first.folds[0]["steps"] == STEPS and first.folds[0]["epochs_done"] == 1
    clock2 = FakeClock()
    run2 = open_run(out, clock2)
    second = train(run2, make_setup(clock2))
    assert second.stop_reason == "completed"
    resumed = second.resumed[0]
    assert (resumed["epoch"], resumed["step"], resumed["position"]) == (1, STEPS, 0)
    for k in range(N_FOLDS):
        assert_same_weights(weights(fold_dir(run2, k) / ckpt.BEST_FILE), reference["best"][k])
        assert_same_weights(weights(newest_step(run2, k)), reference["last"][k])
    assert second.cv_score == reference["result"].cv_score


# --------------------------------------------------------------------------- bad input


def test_checkpoints_of_another_setup_are_refused(tmp_path, smoke):
    out = tmp_path / "out"
    run1, _ = partial_session(out, 7.0, smoke)
    before = sorted(p.name for p in fold_dir(run1, 0).iterdir())
    clock = FakeClock()
    run = open_run(out, clock)
    with pytest.raises(ValueError, match=r"model: the checkpoint has 'mlp', this run has 'wider'") as err:
        train(run, make_setup(clock, model_name="wider"))
    assert "OUTPUT_DIR" in str(err.value) and str(fold_dir(run, 0)) in str(err.value)
    assert sorted(p.name for p in fold_dir(run, 0).iterdir()) == before   # nothing overwritten


def test_a_torn_newest_step_file_falls_back_to_the_previous_checkpoint(tmp_path, reference, smoke):
    out = tmp_path / "out"
    run1, first = partial_session(out, 7.0, smoke)
    steps = [s for s, _ in ckpt.list_checkpoints(fold_dir(run1, 0))]
    assert steps == [2 * STEPS, first.folds[0]["steps"]]   # the epoch-2 end and the stop
    torn = newest_step(run1, 0)
    with open(torn, "r+b") as f:
        f.truncate(torn.stat().st_size // 2)
    clock = FakeClock()
    lines: list[str] = []
    run2 = open_run(out, clock, lines=lines)
    smoke(TRUE_SMOKE)
    second = train(run2, make_setup(clock))
    assert any(f"skipping {torn.name}: truncated or torn" in line and "trying the previous checkpoint" in line
               for line in lines)
    assert any(f"resuming from step-{2 * STEPS:09d}.ckpt" in line for line in lines)
    resumed = second.resumed[0]
    assert (resumed["epoch"], resumed["step"], resumed["position"]) == (2, 2 * STEPS, 0)
    assert second.stop_reason == "completed"
    for k in range(N_FOLDS):  # from the epoch end the rest is replayed exactly
        assert_same_weights(weights(newest_step(run2, k)), reference["last"][k])


def test_a_train_loader_without_a_resumable_sampler_is_refused(tmp_path, smoke):
    smoke(TRUE_SMOKE)
    clock = FakeClock()
    run = open_run(tmp_path / "out", clock)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="ResumableSampler"):
        train(run, make_setup(clock, plain_loader=True))
    assert signal.getsignal(signal.SIGTERM) is before
    assert fold_models(run, N_FOLDS) == []


# --------------------------------------------------------------------------- kept folds


def test_done_folds_are_kept_and_nothing_trains_again(tmp_path, reference, smoke):
    sized = smoke(TRUE_SMOKE)
    out = Path(shutil.copytree(reference["out"], tmp_path / "out"))
    files = {p: p.stat().st_mtime_ns for p in out.glob("checkpoints/fold*/*.ckpt")}
    clock = FakeClock()
    lines: list[str] = []
    run = open_run(out, clock, budget=100, lines=lines)
    setup = make_setup(clock)
    result = train(run, setup)
    assert setup.calls == [] and sized == []
    assert result.stop_reason == "completed"
    assert result.folds == reference["result"].folds
    assert result.cv_score == reference["result"].cv_score
    assert "train" not in run.budget.phases and run.budget.elapsed() == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("checkpoints/fold*/*.ckpt")} == files
    assert any("folds already done: [0, 1, 2] (kept); to train: []" in line for line in lines)


def test_segmentation_oof_is_kept_as_class_maps_and_scored_per_pixel(tmp_path):
    out = tmp_path / "out"
    run = open_run(out, FakeClock())
    targets = np.array([[[0, 1], [2, 1]], [[1, 1], [0, 0]]])
    probs = np.zeros((2, 3, 2, 2))
    np.put_along_axis(probs, targets[:, None], 1.0, axis=1)  # a perfect prediction ...
    probs[1, :, 0, 0] = [0.1, 0.2, 0.7]                     # ... but one pixel
    cv._write_oof(run, 0, ["a", "b"], targets, probs)
    saved = np.load(out / cv.OOF_MAPS_FILE.format(fold=0))
    assert saved["pred"].dtype == np.uint8 and saved["pred"].tolist() == [0, 1, 2, 1, 2, 1, 0, 0]
    assert saved["target"].tolist() == targets.ravel().tolist()
    seen = []
    metric = Metric("pixels", lambda t, p: seen.append((t, p)) or float((t == p).mean()), True)
    assert oof_score(run, metric, [0]) == 7 / 8
    assert seen[0][1].ndim == 1  # class maps, not probabilities


# --------------------------------------------------------------------------- folds left out of the prediction


def test_a_fold_the_budget_cut_short_is_left_out_next_to_a_full_one_and_rejoins_when_finished(tmp_path, smoke):
    smoke(TRUE_SMOKE)
    out = tmp_path / "out"
    clock = FakeClock()

    def stall(step: int) -> None:  # fold 1's second epoch hangs on its last step: it ends with one epoch
        if step == 3 * STEPS + 2 * STEPS:
            clock.now += 11.0

    run1 = open_run(out, clock, budget=14.1)
    first = train(run1, make_setup(clock, loss_fn=StepLoss(stall)), min_epochs=3)
    assert first.folds[0]["epochs_done"] == 3 and first.folds[1]["epochs_done"] == 1
    assert list(first.left_out) == [1] and "1 of MIN_EPOCHS=3" in first.left_out[1]
    assert [k for k, _, _ in fold_models(run1, N_FOLDS)] == [0]          # prediction uses fold 0 alone
    assert first.cv_score == oof_score(run1, ACCURACY, [0])
    saved = json.loads((out / "run.json").read_text())
    assert list(saved["folds_left_out"]) == ["1"]
    # the next session finishes fold 1 (and 2): nothing is left out any more
    clock2 = FakeClock()
    second = train(open_run(out, clock2), make_setup(clock2), min_epochs=3)
    assert second.left_out == {} and all(v.get("left_out") is None for v in second.folds.values())
    assert all(v.get("left_out") is None for v in FoldRegistry(out).folds.values())
    assert [k for k, _, _ in fold_models(open_run(out, FakeClock()), N_FOLDS)] == [0, 1, 2]


def test_left_out_rules():
    acc = ACCURACY
    full = {"status": "done", "epochs_done": 3, "score": 0.9, "prior_score": 0.5, "stop_reason": "completed"}
    short = {"status": "partial", "epochs_done": 1, "score": 0.8, "prior_score": 0.5, "stop_reason": "budget: x"}
    early = {"status": "done", "epochs_done": 2, "score": 0.85, "prior_score": 0.5,
             "stop_reason": "early stopping: no improvement for 2 epochs"}
    worse = {"status": "done", "epochs_done": 3, "score": 0.4, "prior_score": 0.5, "stop_reason": "completed"}
    assert set(cv._left_out({0: full, 1: short}, acc, 3)) == {1}
    assert cv._left_out({0: full, 1: early}, acc, 3) == {}           # early stopping is a finished fold
    assert "no better than the class prior" in cv._left_out({0: full, 1: worse}, acc, 3)[1]
    assert cv._left_out({0: short}, acc, 3) == {}                     # the only model is kept
    assert cv._left_out({0: worse, 1: {**worse}}, acc, 3) == {}       # never every fold


def test_prior_score_is_the_metric_of_the_class_frequencies():
    targets = np.array([0, 0, 0, 1])
    probs = np.zeros((4, 2))
    assert cv._prior_score(ACCURACY, targets, probs) == 0.75
    assert cv._prior_score(get_metric("log_loss"), targets, probs) == pytest.approx(
        -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert cv._prior_score(ACCURACY, targets, np.zeros((4, 2, 3, 3))) is None   # segmentation maps


# --------------------------------------------------------------------------- the best pointer of a finished fold


@pytest.mark.parametrize("keep", [10, 2])
def test_a_done_fold_predicts_with_the_epoch_its_record_names(tmp_path, smoke, keep):
    """best.ckpt replaced by another epoch's file (what a kill between the step file and the pointer
    left before): with the best epoch's step file still there it is repaired; without it the fold
    is no longer done, and prediction says so and uses the last checkpoint."""
    smoke(TRUE_SMOKE)
    clock = FakeClock()
    out = tmp_path / "out"
    run = open_run(out, clock)
    first = train(run, make_setup(clock), n_folds=1, folds=[0], keep=keep)
    record = first.folds[0]
    best_file = fold_dir(run, 0) / ckpt.BEST_FILE
    right = weights(best_file)
    wrong_step = next(s for s, _ in ckpt.list_checkpoints(fold_dir(run, 0)) if s != record["best_step"])
    best_file.unlink()  # best.ckpt is a hard link to the best step file: replace it, do not write into it
    shutil.copyfile(fold_dir(run, 0) / ckpt.STEP_FILE.format(step=wrong_step), best_file)
    lines: list[str] = []
    again = open_run(out, clock, lines=lines)
    [(k, path, kind)] = fold_models(again, 1)
    if keep == 10:
        assert kind == "best" and any("best.ckpt repaired from" in line for line in lines), lines
        assert_same_weights(weights(path), right)
        assert train(again, make_setup(clock), n_folds=1, folds=[0]).folds[0]["status"] == "done"
    else:
        assert record["best_step"] not in [s for s, _ in ckpt.list_checkpoints(fold_dir(run, 0))]
        assert kind == "last" and any("its last checkpoint is used instead" in line for line in lines), lines
        result = train(again, make_setup(clock), n_folds=1, folds=[0])
        assert result.folds[0]["status"] == "partial" and "best epoch's weights are not saved" in \
            result.folds[0]["stop_reason"]


# --------------------------------------------------------------------------- torch's CPU thread count


def test_a_cpu_run_times_thread_counts_keeps_the_fastest_and_its_later_sessions_reuse_it(tmp_path, monkeypatch):
    """On a shared CPU fewer threads can be much faster; the count changes float sums, so a run keeps the
    one it picked (run.json) and a later session sets it again instead of timing anew."""
    from kagglekit_nb import preflight

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    timed: list[int] = []

    def smoke(*args, **kwargs):  # one thread is the fast one here, as under a noisy neighbour
        timed.append(torch.get_num_threads())
        return SmokeReport(step_s=0.01 if torch.get_num_threads() == 1 else 0.05, eval_s_per_sample=1e-4, loss=0.7)

    monkeypatch.setattr(cv, "smoke_step", smoke)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        clock = FakeClock()
        lines: list[str] = []
        run = open_run(tmp_path / "out", clock, lines=lines)
        train(run, make_setup(clock), n_folds=2, folds=[0], max_epochs=1)
        assert sorted(timed) == preflight.thread_choices(2) == [1, 2]
        assert run.record[cv.THREADS] == 1 and torch.get_num_threads() == 1
        assert any("torch threads: 1 (the fastest smoke step of [1, 2])" in line for line in lines)
        run.save()

        torch.set_num_threads(2)  # a new session starts with torch's default
        timed.clear()
        again = open_run(tmp_path / "out", clock)
        train(again, make_setup(clock), n_folds=2, folds=[1], max_epochs=1)
        assert timed == [1]  # set from run.json before its one smoke step: no second search
        assert again.record[cv.THREADS] == 1 and torch.get_num_threads() == 1

        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own choice is never timed away
        torch.set_num_threads(2)
        timed.clear()
        fixed = open_run(tmp_path / "fixed", clock)
        train(fixed, make_setup(clock), n_folds=2, folds=[0], max_epochs=1)
        assert timed == [2] and cv.THREADS not in fixed.record and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
