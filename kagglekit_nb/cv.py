"""Cross-validation training that survives kills and time limits: every unfinished fold, inside the
budget, with full-state checkpoints and exact mid-epoch resume.

    result = train_folds(run, n_folds=5, setup=setup_fold, metric=get_metric("accuracy"),
                         max_epochs=EPOCHS, predict_items=len(test) * 5)

`setup(fold)` builds the fold's model (on its device), optimizer, loaders and loss: a `FoldSetup`.
Its train loader must use a `ResumableSampler` (the order is then a function of the seed and the
epoch alone, and a resume skips straight to the saved position). Each fold keeps its checkpoints in
`<run>/checkpoints/fold<k>/`: a step file on a time cadence, at every epoch end and when stopping,
and `best.ckpt` (the state at the best epoch), which is what prediction uses.

Every time decision (the reserve, the plan, when to stop) is the budget's (`kagglekit_nb.budget`):
this module measures the pace and asks `run.budget.stop_reason`. After training, a fold that the
budget stopped before it was useful is left out of the prediction (`fold_models` skips it) and
`run.json` says why (`folds_left_out`).

In several processes (`kagglekit_nb.distributed`, started by torchrun) the same code trains one
DistributedDataParallel model: the train loader's sampler shards by rank, rank 0 takes every decision
that reads a clock or a file (which folds to train, the pace, the plan, the budget's stop, a due
checkpoint) and shares it, a stop signal on any rank stops all of them at the same step, and rank 0
writes every file (checkpoints after a barrier, out-of-fold predictions, history, folds.json); all
ranks load the checkpoint they resume from. A checkpoint records how many processes wrote it: one
resumed with another number continues the same data order, optimizer and schedule, and the log and
run.json (`process_count_changes`) say that the numerics are no longer bitwise-identical.

A task trains in workers the same way whatever it is (classification, glacier):

    spec = worker_spec("glacier_finetune", run, cfg.as_dict(), DATA_DIR=...)  # in the notebook process
    result = train_in_workers(spec, run, world)    # torchrun workers, each calling the task's train_worker
    ...
    return worker_result(train_folds(...))         # at the end of the task's train_worker, in every rank
"""
from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from ._atomic import write_atomic
from .budget import CheckpointTimer, StopSignal, epoch_limit, install_sigterm_handler
from .distributed import World, agree, barrier, broadcast_object, is_main, launch, main_first, rank, world_size, wrap
from .folds import FoldRegistry
from .loaders import steps_per_epoch
from .loop import FitResult, _unwrap, fit
from .metrics import Metric
from .options import LoopOptions, make_scaler, use_channels_last
from .preflight import fastest_threads, smoke_step, thread_choices, threads_fixed
from .run import Run
from .state import capture_state, restore_state

__all__ = ["CVResult", "FoldSetup", "THREADS", "fold_dir", "fold_models", "oof_score", "time_setup", "train_folds",
           "run_workers", "train_in_workers", "worker_result", "worker_spec"]

THREADS = "torch_threads"  # run.json: the CPU thread count the run picked (`time_setup`) and keeps

FOLD_DIR = "fold{fold}"
OOF_FILE = "oof_fold{fold}.csv"
OOF_MAPS_FILE = "oof_fold{fold}.npz"   # segmentation: flat targets and predicted classes per pixel
HISTORY_FILE = "history.csv"            # one row per finished epoch of every fold
_BOOKKEEPING = ("lineage",)              # fold record fields that differ between identical runs
HISTORY_COLUMNS = ("fold", "epoch", "train_loss", "val_loss", "score", "lr", "seconds")


@dataclass
class FoldSetup:
    """What a task provides for one fold (everything already on its device)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader                  # with a ResumableSampler
    val_loader: DataLoader                    # never shuffled
    loss_fn: Callable
    val_ids: Sequence[Any]                    # for the out-of-fold file, in val_loader order
    val_targets: np.ndarray
    make_scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None  # (optimizer, total steps)
    meta: dict[str, Any] = field(default_factory=dict)  # saved with every checkpoint; must match to resume
    sync_bn: bool = False                     # several GPU processes: BatchNorm statistics over all of them


@dataclass
class CVResult:
    """Per-fold outcome, the out-of-fold score, the plan followed and why training ended."""

    folds: dict[int, dict[str, Any]] = field(default_factory=dict)
    cv_score: float | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "completed"
    resumed: list[dict[str, Any]] = field(default_factory=list)
    left_out: dict[int, str] = field(default_factory=dict)   # fold -> why prediction does not use it
    process_count_changes: list[dict[str, Any]] = field(default_factory=list)  # resumed with another world size

    def table(self):
        """One row per fold, for people: the bookkeeping ids (a fold's lineage) stay in folds.json."""
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.folds, orient="index").rename_axis("fold")
        return frame.drop(columns=[c for c in _BOOKKEEPING if c in frame.columns])

    def summary(self) -> dict[str, Any]:
        return {"cv_score": self.cv_score, "folds_done": sorted(k for k, v in self.folds.items()
                                                               if v.get("status") == "done"),
                "folds": {str(k): v for k, v in self.folds.items()}, "plan": self.plan,
                "stop_reason": self.stop_reason, "resumed_from": self.resumed,
                "folds_left_out": {str(k): v for k, v in self.left_out.items()},
                "process_count_changes": self.process_count_changes}

    @classmethod
    def from_summary(cls, record: dict[str, Any]) -> "CVResult":
        """The result whose `summary` is in `record` (run.json, written by the training workers' rank 0)."""
        return cls(folds={int(k): v for k, v in (record.get("folds") or {}).items()},
                   cv_score=record.get("cv_score"), plan=dict(record.get("plan") or {}),
                   stop_reason=record.get("stop_reason", "completed"), resumed=list(record.get("resumed_from") or []),
                   left_out={int(k): v for k, v in (record.get("folds_left_out") or {}).items()},
                   process_count_changes=list(record.get("process_count_changes") or []))


def fold_dir(run: Run, fold: int) -> Path:
    """The checkpoint folder of one fold."""
    return run.checkpoints / FOLD_DIR.format(fold=fold)


def fold_models(run: Run, n_folds: int) -> list[tuple[int, Path, str]]:
    """(fold, file, 'best' | 'last') for every fold that has a model: best.ckpt when it holds the
    best epoch the fold's record (or newest checkpoint) names, else the newest valid step
    checkpoint; folds without any, and folds `train_folds` left out, are skipped."""
    out = []
    registry = FoldRegistry(run.dir)
    for k in range(n_folds):
        record = registry.get(k) or {}
        if record.get("left_out"):
            continue
        directory = fold_dir(run, k)
        best = directory / ckpt.BEST_FILE
        why = _best_problem(directory, record, run.log) if best.exists() else None
        if best.exists() and why is None:
            out.append((k, best, "best"))
            continue
        last = ckpt.find_latest(directory, log=run.log) if directory.exists() else None
        if why is not None:
            run.log(f"WARNING: fold {k}: {why}; "
                    + ("its last checkpoint is used instead" if last is not None else "the fold has no model"))
        if last is not None:
            out.append((k, last, "last"))
    return out


def _best_problem(directory: Path, record: dict[str, Any], log: Any) -> str | None:
    """Why best.ckpt in `directory` is not the best epoch `record` (from folds.json) names (None: it
    is); a pointer left behind by a kill is repaired first. Without a record with `best_step` (a
    fold still training, or one recorded by an older kagglekit_nb), the newest step file's header
    names the best."""
    if "best_step" in record:
        step, lineage, epoch = record["best_step"], record.get("lineage"), record.get("best_epoch")
        if step is None:
            return None if epoch is None else f"no checkpoint of its best epoch {epoch} was saved"
    else:
        newest = ckpt.find_latest(directory, log=None) if directory.exists() else None
        header = ckpt.read_header(newest) if newest is not None and newest.name != ckpt.BEST_FILE else {}
        step, lineage, epoch = header.get("best_step"), header.get("lineage"), None
        if step is None:
            return None  # nothing to compare with (a checkpoint from an older kagglekit_nb)
    return ckpt.repair_best(directory, step=step, lineage=lineage, log=log) or (
        None if epoch is None else ckpt.check_best(directory, epoch=epoch))


def _write_oof(run: Run, fold: int, ids: Sequence[Any], targets: np.ndarray, probs: np.ndarray) -> None:
    import pandas as pd

    probs, targets = np.asarray(probs), np.asarray(targets)
    if probs.ndim > 2:  # per-pixel class maps: keep the predicted class of every pixel, not the probabilities
        write_atomic(run.dir / OOF_MAPS_FILE.format(fold=fold), lambda fh: np.savez_compressed(
            fh, ids=np.asarray([str(i) for i in ids]), target=targets.reshape(-1),
            pred=probs.argmax(1).astype(np.uint8).reshape(-1)), binary=True)
        return
    frame = pd.DataFrame(probs, columns=[f"p{c}" for c in range(probs.shape[1])])
    frame.insert(0, "id", list(ids))
    if targets.ndim == 2:  # multi-label: one 0/1 target column per label, t0..tN
        for c in range(targets.shape[1]):
            frame.insert(1 + c, f"t{c}", targets[:, c])
    else:
        frame.insert(1, "target", targets)
    write_atomic(run.dir / OOF_FILE.format(fold=fold), lambda fh: frame.to_csv(fh, index=False), newline="")


def _write_history(run: Run, fold: int, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite `history.csv` with this fold's rows replaced (atomically)."""
    import pandas as pd

    path = run.dir / HISTORY_FILE
    rows = [{"fold": fold, **{c: h.get(c) for c in HISTORY_COLUMNS[1:]}} for h in history]
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(HISTORY_COLUMNS))
    frame = pd.concat([old[old["fold"] != fold], pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))])
    frame = frame.sort_values(["fold", "epoch"], kind="stable")
    write_atomic(path, lambda fh: frame.to_csv(fh, index=False), newline="")


def oof_score(run: Run, metric: Metric, folds: Sequence[int]) -> float | None:
    """The metric over the out-of-fold predictions (best epoch) of `folds`.

    Class-probability folds (`oof_fold{k}.csv`) are scored on their probabilities; segmentation folds
    (`oof_fold{k}.npz`) on the predicted class of every pixel: `metric(targets, classes)`.
    """
    import pandas as pd

    maps = [np.load(p) for k in folds if (p := run.dir / OOF_MAPS_FILE.format(fold=k)).exists()]
    if maps:
        return metric(np.concatenate([m["target"] for m in maps]), np.concatenate([m["pred"] for m in maps]))
    frames = [pd.read_csv(p) for k in folds if (p := run.dir / OOF_FILE.format(fold=k)).exists()]
    if not frames:
        return None
    oof = pd.concat(frames)
    return metric(oof_targets(oof), oof[[c for c in oof.columns if c.startswith("p")]].to_numpy())


def oof_targets(frame: Any) -> np.ndarray:
    """The targets of an out-of-fold frame: its `target` column, or (multi-label) its t0..tN columns."""
    if "target" in frame.columns:
        return frame["target"].to_numpy()
    cols = sorted((c for c in frame.columns if c.startswith("t") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    return frame[cols].to_numpy()


def time_setup(run: Run, fs: FoldSetup, *, options: LoopOptions | None = None) -> tuple[float, float]:
    """(seconds per epoch, seconds per validation item) of a fold's setup on this machine, estimated
    by the budget from one timed smoke step (`preflight.smoke_step`, which leaves no trace).

    On a CPU in one process, the run's first call also picks torch's thread count (unless the user set
    OMP_NUM_THREADS or MKL_NUM_THREADS): the fastest smoke step of `preflight.thread_choices`, recorded in run.json (THREADS) and set again by `train_folds`
    in every later session, since float sums depend on it (a resumed run stays bit-exact)."""
    accumulate = (options or LoopOptions()).accumulate

    def step():
        return smoke_step(_unwrap(fs.model), fs.train_loader, fs.val_loader, loss_fn=fs.loss_fn, device=run.device,
                          options=options)

    if run.device.type == "cpu" and world_size() == 1 and THREADS not in run.record and not threads_fixed():
        choices = thread_choices(torch.get_num_threads())
        run.record[THREADS], smoke = fastest_threads(step, choices)
        run.log(f"torch threads: {run.record[THREADS]} (the fastest smoke step of {choices}); kept for this run's "
                "later sessions")
    else:
        smoke = step()
    epoch_s = run.budget.epoch_estimate(step_s=smoke.step_s, steps=steps_per_epoch(fs.train_loader, accumulate),
                                        eval_item_s=smoke.eval_s_per_sample, val_items=len(fs.val_loader.dataset))
    return epoch_s, smoke.eval_s_per_sample


def _keep_threads(run: Run) -> None:
    """Set torch's CPU thread count this run picked in an earlier session (or earlier in this one)."""
    saved = run.record.get(THREADS, (run.previous or {}).get(THREADS))
    if run.device.type == "cpu" and world_size() == 1 and isinstance(saved, int) and saved >= 1:
        torch.set_num_threads(saved)
        run.record[THREADS] = saved


def _plan_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _prior_score(metric: Metric, targets: np.ndarray, probs: np.ndarray) -> float | None:
    """The metric of always predicting the validation fold's class frequencies (None for
    segmentation maps, or where the metric is undefined for a constant prediction)."""
    targets, probs = np.asarray(targets), np.asarray(probs)
    if probs.ndim == 2 and targets.shape == probs.shape:  # multi-label: each label's positive rate
        freq = targets.mean(0) if len(targets) else np.zeros(probs.shape[1])
    elif probs.ndim != 2 or targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        return None
    else:
        freq = np.bincount(targets, minlength=probs.shape[1])[: probs.shape[1]] / max(1, len(targets))
    try:
        return float(metric(targets, np.tile(freq, (len(targets), 1))))
    except (ValueError, ZeroDivisionError):
        return None


def _left_out(folds: dict[int, dict[str, Any]], metric: Metric, min_epochs: int) -> dict[int, str]:
    """Folds the budget stopped before they were useful: no better than the class prior, or fewer
    than `min_epochs` epochs while folds with at least that many exist. At least one fold stays."""
    out: dict[int, str] = {}
    full = [k for k, v in folds.items() if v.get("epochs_done", 0) >= min_epochs and v.get("score") is not None]
    for k, v in folds.items():
        score, prior = v.get("score"), v.get("prior_score")
        if full and k not in full and not str(v.get("stop_reason", "")).startswith("early stopping"):
            out[k] = (f"{v.get('epochs_done', 0)} of MIN_EPOCHS={min_epochs} epochs while fold(s) "
                      f"{full} trained fully")
        elif score is not None and prior is not None and not metric.better(score, prior):
            out[k] = f"{metric.name} {score:.4f} is no better than the class prior's {prior:.4f}"
    if len(out) == len(folds):
        out = {}  # a weak model beats no model: the submission step compares it with the baseline
    return out


class _Fold:
    """One fold's training: checkpoint state, hooks for `fit`, and the resume. It measures the pace
    (a step, an evaluation) for the budget and asks the budget whether the next unit still fits."""

    def __init__(self, run: Run, k: int, fs: FoldSetup, metric: Metric, stop: StopSignal,
                 timer: CheckpointTimer, keep: int, accumulate: int = 1):
        self.run, self.k, self.fs, self.metric, self.stop, self.timer, self.keep = run, k, fs, metric, stop, timer, keep
        self.accumulate = accumulate
        # Durations are read on the budget's clock, the one the budget is spent on.
        self.budget = run.budget
        self.clock = run.budget.clock
        self.prior_score: float | None = None
        self._step_mark: float | None = None   # after the previous step check of this epoch
        self._eval_mark: float | None = None   # when this epoch's evaluation began
        self._epoch_mark = self.clock()
        self.epoch_seconds: list[float] = []
        self.sampler = fs.train_loader.sampler
        self.dir = fold_dir(run, k)
        self.epoch, self.global_step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None        # the step file holding the best epoch's state
        self.lineage = ckpt.new_lineage()        # this fold's timeline; a resume continues the saved one
        self.plan: dict[str, Any] = {}
        self.objects: dict[str, Any] = {"model": _unwrap(fs.model), "optimizer": fs.optimizer,
                                        "sampler": self.sampler}

    def save(self, *, best: bool = False) -> None:
        barrier()  # every process has finished this step: rank 0 writes the state they all hold
        if is_main():
            self._write(best)
        self.timer.reset()

    def _write(self, best: bool) -> None:
        state = capture_state(
            self.objects, epoch=self.epoch, global_step=self.global_step, history=self.history,
            best_score=self.best_score, best_epoch=self.best_epoch, plan=self.plan, fold=self.k,
            config=self.run.config, world_size=world_size())
        best_step = self.global_step if best else self.best_step
        try:
            ckpt.save_checkpoint(state, self.dir, step=self.global_step, keep=self.keep, best=best,
                                 meta=self.fs.meta, mirror=self.run.mirror, log=self.run.log,
                                 lineage=self.lineage, best_step=best_step, epoch=self.epoch)
            self.best_step = best_step
        except ckpt.CheckpointError as e:  # the previous checkpoint is intact: keep training
            if e.saved is not None:  # the step file is saved and names itself the best: later saves finish it
                self.best_step = best_step
                self.run.log(f"WARNING: {e}")
            else:
                self.run.log(f"WARNING: checkpoint not saved ({e}); training goes on, the last good one is kept")

    def on_step(self, epoch: int, samples: int) -> None:  # fit has advanced the sampler already
        self.epoch, self.global_step = epoch, self.global_step + 1

    def should_stop(self, where: str) -> str | None:
        now = self.clock()
        if where == "step":
            if self._step_mark is not None:
                self.budget.observe("step", now - self._step_mark)
            # The epoch's last step must leave time for its evaluation: a checkpoint taken between
            # the two would hold a finished, unevaluated epoch, which fit cannot resume.
            last = len(self.fs.train_loader) <= self.accumulate
            need = self.budget.need("step") + (self.budget.need("eval") if last else 0.0)
        else:
            self._step_mark, self._eval_mark = None, now
            need = self.budget.need("eval")
        # One decision for every process: a signal on any rank, rank 0's budget and checkpoint timer.
        budget = self.budget.stop_reason(need) if is_main() else None
        signum, budget_stops, due = agree([_signum(self.stop) if where == "step" else 0, budget is not None,
                                           where == "step" and is_main() and self.timer.due()])
        reason = None
        if signum:
            reason = f"signal: {signal.Signals(signum).name} received; checkpoint saved"
        elif budget_stops:
            reason = budget or "budget: stopped by rank 0's budget"
        # At "eval" nothing is saved (see above): a signal lets the evaluation run and stops at the
        # next step, after the epoch-end checkpoint; the budget stops there and the previous
        # checkpoint is the one to resume from.
        if where == "step" and (reason or due):
            self.save()
        if where == "step":
            self._step_mark = self.clock()
        return reason

    def on_epoch_end(self, row: dict[str, Any], fr: FitResult) -> None:
        now = self.clock()
        if self._eval_mark is not None:
            self.budget.observe("eval", now - self._eval_mark)
        self.epoch_seconds.append(now - self._epoch_mark)
        self._epoch_mark = now
        self.history = [dict(h) for h in fr.history]
        self.best_score, self.best_epoch = fr.best_score, fr.best_epoch
        improved = fr.best_epoch == row["epoch"]
        if improved and is_main():  # rank 0 evaluated: the probabilities are its own
            _write_oof(self.run, self.k, self.fs.val_ids, self.fs.val_targets, fr.best_probs)
            if self.prior_score is None:
                self.prior_score = _prior_score(self.metric, self.fs.val_targets, fr.best_probs)
        self.epoch = row["epoch"]  # the next epoch starts at position 0
        self.save(best=improved)
        if is_main():
            _write_history(self.run, self.k, self.history)
        self.run.log(f"fold {self.k} epoch {row['epoch']}/{self.plan['epochs']}: train_loss "
                     f"{row['train_loss']:.4f} val_loss {row['val_loss']:.4f} {self.metric.name} "
                     f"{row['score']:.4f} ({row['seconds']:.1f}s){' *' if improved else ''}")

    def resume(self, found: ckpt.LoadedCheckpoint) -> tuple[FitResult, dict[str, Any]]:
        state = found.state
        restore_state(state, self.objects, log=self.run.log)
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        # Saved at an epoch end, the sampler still stands at the end of the epoch before (fit moves
        # it on, as here): report the position training continues from.
        self.sampler.set_epoch(self.epoch)
        self.history, self.plan = list(state["history"]), dict(state["plan"])
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.best_step, self.lineage = found.best_step, found.lineage or self.lineage
        if found.best_problem:
            self.run.log(f"WARNING: fold {self.k}: {found.best_problem}")
        age = time.time() - found.path.stat().st_mtime
        info = {"fold": self.k, "epoch": self.epoch, "step": self.global_step,
                "position": self.sampler.position, "file": str(found.path), "age_s": round(age, 1)}
        self.run.log(f"fold {self.k}: resumed from {found.path.name} (epoch {self.epoch + 1}, sample "
                     f"{self.sampler.position} of {self.sampler.num_samples}, step {self.global_step}; "
                     f"saved {age / 60:.1f} min ago)")
        saved, now = int(state.get("world_size", 1)), world_size()
        if saved != now:
            info["processes"] = {"saved": saved, "now": now}
            self.run.log(f"fold {self.k}: this checkpoint was written by {_processes(saved)} and training goes on "
                         f"with {_processes(now)}: the data order, the optimizer state and the schedule continue "
                         "where they were, but the numerics are no longer bitwise-identical to an uninterrupted "
                         "run (BatchNorm statistics are taken per process, gradients are summed in another order)")
        return FitResult(history=self.history, best_score=self.best_score, best_epoch=self.best_epoch,
                         steps=self.global_step), info


def train_folds(
    run: Run,
    *,
    n_folds: int,
    setup: Callable[[int], FoldSetup],
    metric: Metric,
    max_epochs: int | None,
    min_epochs: int = 1,
    folds: Sequence[int] | None = None,
    max_new_folds: int | None = None,
    options: LoopOptions | None = None,
    patience: int | None = None,
    checkpoint_every: float | str = "3m",
    keep: int = 2,
    predict_items: int = 0,
    predict_models: int = 0,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    expected_meta: Callable[[int], dict[str, Any]] | None = None,
    timed: tuple[float, float] | None = None,
) -> CVResult:
    """Train every unfinished fold within the budget and return what exists.

    A fold already done is kept; a fold with checkpoints resumes exactly where it stopped (and
    follows the plan it was started with); the rest are planned by the budget from a timed smoke
    step so that epochs x folds fit what is left after the reserves: the task's own (declared on
    `run.budget` before this call: write, verify, package, ...) and the prediction's, sized here
    from the measured time per validation item x `predict_items` (test rows x models x TTA views)
    and `predict_models`. `timed` = (seconds per epoch, per validation item) of this setup measured
    already (`time_setup`, e.g. while choosing the model) saves a second smoke step. `max_epochs=None`
    plans as many epochs as fit (at most `budget.MAX_EPOCHS`); the scheduler is built for the planned
    total.
    Training stops at step granularity when the budget or a signal (SIGTERM, SIGINT) says so,
    after saving a checkpoint.
    """
    registry = FoldRegistry(run.dir)
    result = CVResult()
    _keep_threads(run)
    wanted = list(range(n_folds)) if folds is None else list(folds)
    todo, error = [], None
    if is_main():  # looking may repair best.ckpt files: rank 0 looks and tells the others
        try:
            todo = _to_train(run, registry, result, wanted, expected_meta)
        except ValueError as e:
            error = str(e)
    todo, result.folds, error = broadcast_object((todo, result.folds, error))
    if error is not None:
        raise ValueError(error)
    if max_new_folds is not None:
        todo = todo[:max_new_folds]
    run.budget.close_setup()
    cap = epoch_limit(max_epochs)
    timer = CheckpointTimer(checkpoint_every)
    epoch_s, eval_item_s = timed if timed is not None else (None, None)
    sized = False
    with install_sigterm_handler(lambda name: run.log(f"{name} received: stopping at the next step"),
                                 signals=signals) as stop:
        for i, k in enumerate(todo):
            signum = agree([_signum(stop)])[0]  # a signal on any rank stops every rank here
            if signum:
                result.stop_reason = f"signal: {signal.Signals(signum).name}"
                break
            torch.manual_seed(run.seed + k)  # a fold's initial weights depend on the fold alone
            fs = setup(k)
            if not hasattr(fs.train_loader.sampler, "advance"):
                raise ValueError("FoldSetup.train_loader must use a ResumableSampler (kagglekit_nb.sampler): "
                                 "without it a resume cannot continue the same data order.")
            if world_size() > 1:
                fs.model = _wrapped(fs.model, run.device, options, sync_bn=fs.sync_bn)
            accumulate = (options or LoopOptions()).accumulate
            steps_full = steps_per_epoch(fs.train_loader, accumulate)
            n_val = len(fs.val_loader.dataset)
            with main_first():  # loading may complete best.ckpt: rank 0 first
                found = ckpt.load_latest(fold_dir(run, k), log=run.log) if fold_dir(run, k).exists() else None
            if found is not None:
                diffs = ckpt.check_compatible(found.meta, fs.meta, keys=tuple(fs.meta))
                if diffs:
                    raise ValueError(
                        f"the checkpoints in {fold_dir(run, k)} come from a different setup: " + "; ".join(diffs)
                        + f". Use a new OUTPUT_DIR (or RUN_NAME), or delete {fold_dir(run, k)} to start over.")
            if not sized:
                if epoch_s is None:  # rank 0's pace plans for every process
                    epoch_s, eval_item_s = broadcast_object(time_setup(run, fs, options=options) if is_main()
                                                            else None)
                sized = True
                run.budget.reserve_predict(items=predict_items, item_s=eval_item_s, models=predict_models)
                run.log(f"sizing: ~{epoch_s:.1f}s per epoch ({steps_full} steps + {n_val} validation items); "
                        f"reserved: {_reserves(run)}")
            run.budget.plan_pace("step", epoch_s / max(1, steps_full))
            run.budget.plan_pace("eval", eval_item_s * n_val)
            f = _Fold(run, k, fs, metric, stop, timer, keep, accumulate=accumulate)
            resume = None
            if found is not None:
                f.plan = dict(found.state["plan"])
            else:
                trained = sum(1 for v in result.folds.values() if v.get("epochs_done", 0) >= min(min_epochs, cap))
                f.plan = broadcast_object({
                    **run.budget.plan_fold(epoch_s=epoch_s, folds_left=len(todo) - i, max_epochs=max_epochs,
                                           min_epochs=min_epochs, folds_trained=trained),
                    "steps_per_epoch": steps_full} if is_main() else None)
            result.plan[f"fold{k}"] = f.plan
            if f.plan["epochs"] == 0:
                result.stop_reason = "budget: no time left for one more epoch"
                run.log(f"fold {k}: not started, the budget leaves no time for "
                        f"{f.plan.get('note') or f'one epoch (~{epoch_s:.0f}s)'}")
                break
            if found is None:
                left = run.budget.training_left()
                run.log(f"plan for fold {k}:\n" + _plan_table([
                    ("epochs", f"{f.plan['epochs']} of " + (f"{cap}" if max_epochs is not None else
                               f"as many as fit (at most {cap})") + f" (at least {min(min_epochs, cap)})"),
                    ("time per epoch", f"~{epoch_s:.1f}s"),
                    ("folds that fit", f"{f.plan['folds_that_fit']} of {len(todo) - i} left"),
                    ("training time left", "unlimited" if not math.isfinite(left) else f"{left:.0f}s"),
                    ("reserve", _reserves(run))]))
            scheduler = None
            if fs.make_scheduler is not None:
                scheduler = fs.make_scheduler(fs.optimizer, max(1, f.plan["epochs"] * f.plan["steps_per_epoch"]))
                f.objects["scheduler"] = scheduler
            scaler = make_scaler(options, run.device)  # fp16 AMP: its loss scale is part of the state
            if scaler is not None:
                f.objects["scaler"] = scaler
            if found is not None:
                resume, info = f.resume(found)
                result.resumed.append(info)
                if "processes" in info:
                    result.process_count_changes.append({"fold": k, "step": info["step"], **info["processes"],
                                                         "numerics": "no longer bitwise-identical"})
            t0 = run.budget.clock()
            with run.budget.timed("train"):
                fr = fit(fs.model, fs.train_loader, fs.val_loader, optimizer=fs.optimizer, loss_fn=fs.loss_fn,
                         epochs=f.plan["epochs"], device=run.device, metric=metric, scheduler=scheduler,
                         options=options if patience is None else replace(options or LoopOptions(), patience=patience),
                         should_stop=f.should_stop, on_step=f.on_step,
                         on_epoch_end=f.on_epoch_end, log=run.log, start_epoch=f.epoch, resume=resume,
                         scaler=scaler, progress_label=f"fold {k}", budget=run.budget)
            measured = f.epoch_seconds
            if measured:
                new = float(np.median(measured))
                if epoch_s > 0 and abs(new / epoch_s - 1) > 0.2:
                    run.log(f"re-planning: an epoch takes {new:.1f}s, not the {epoch_s:.1f}s planned")
                epoch_s = new
            stopped = fr.stop_reason.startswith(("budget", "signal"))
            prior = f.prior_score if f.prior_score is not None else (registry.get(k) or {}).get("prior_score")
            info = {"status": "partial" if stopped else "done", "score": fr.best_score,
                    "best_epoch": fr.best_epoch, "epochs_done": len(fr.history), "steps": f.global_step,
                    "seconds": round(run.budget.clock() - t0, 1), "stop_reason": fr.stop_reason,
                    "prior_score": prior, "best_step": f.best_step, "lineage": f.lineage}
            broken = _best_problem(f.dir, info, run.log) if is_main() else None
            if broken is not None:  # a fold is done only when best.ckpt holds the epoch its record names
                info.update(status="partial", stop_reason=(
                    f"{broken}: the best epoch's weights are not saved. Its last checkpoint is used; "
                    f"delete {f.dir} and run again to train this fold anew"))
                run.log(f"WARNING: fold {k}: {info['stop_reason']}")
            if is_main():
                registry.mark(k, **info)
            result.folds[k] = info
            best = "no epoch finished" if fr.best_score is None else \
                f"best {metric.name} {fr.best_score:.4f} at epoch {fr.best_epoch}"
            run.log(f"fold {k}: {best} ({fr.stop_reason})")
            if stopped:
                result.stop_reason = fr.stop_reason
                break
    if is_main():  # the out-of-fold files are rank 0's
        _score(run, registry, result, metric, min(min_epochs, cap))
    result.left_out, result.cv_score = broadcast_object((result.left_out, result.cv_score))
    if result.process_count_changes:
        run.log(f"numerics: {len(result.process_count_changes)} fold(s) resumed with another number of processes "
                "than they were trained with; this run is no longer bitwise-identical to an uninterrupted one "
                "(run.json: process_count_changes)")
    run.record.update(result.summary())
    run.save()
    return result


def _to_train(run: Run, registry: FoldRegistry, result: CVResult, wanted: Sequence[int],
              expected_meta: Callable[[int], dict[str, Any]] | None) -> list[int]:
    """The folds of `wanted` to train; those done already go into `result.folds` (a finished fold of
    another setup is a ValueError)."""
    todo = []
    for k in wanted:
        best = fold_dir(run, k) / ckpt.BEST_FILE
        why = _best_problem(fold_dir(run, k), registry.get(k), run.log) if registry.is_done(k) and best.exists() \
            else None
        if why is not None:
            run.log(f"fold {k} is marked done but {why}: training it again from its checkpoints")
            todo.append(k)
        elif registry.is_done(k) and best.exists():
            if expected_meta is not None:  # a finished fold of another setup must not join this ensemble
                diffs = ckpt.check_compatible(ckpt.read_meta(best), expected_meta(k), keys=tuple(expected_meta(k)))
                if diffs:
                    raise ValueError(f"fold {k} in {run.dir} was trained with another setup: " + "; ".join(diffs)
                                     + ". Use a new OUTPUT_DIR (or RUN_NAME) for the new settings.")
            result.folds[k] = registry.get(k)
        else:
            if registry.is_done(k) and why is None:
                run.log(f"fold {k} is marked done but its best.ckpt is missing: training it again")
            todo.append(k)
    if len(todo) < len(wanted):
        run.log(f"folds already done: {sorted(result.folds)} (kept); to train: {todo}")
    return todo


def _score(run: Run, registry: FoldRegistry, result: CVResult, metric: Metric, min_epochs: int) -> None:
    """The folds left out of the prediction (recorded in folds.json) and the out-of-fold CV score."""
    result.left_out = _left_out(result.folds, metric, min_epochs)
    for k, v in result.folds.items():
        if v.get("left_out") != result.left_out.get(k):
            v = {**v, "left_out": result.left_out.get(k)}
            result.folds[k] = v
            registry.mark(k, **v)
    for k, why in sorted(result.left_out.items()):
        run.log(f"fold {k} is left out of the prediction: {why}")
    scored = [k for k, v in result.folds.items() if v.get("score") is not None and k not in result.left_out]
    result.cv_score = oof_score(run, metric, sorted(scored))
    if result.cv_score is not None:
        run.log(f"CV {metric.name} (out-of-fold, folds {sorted(scored)}): {result.cv_score:.4f}")


def _signum(stop: StopSignal) -> int:
    """The number of the stop signal this process received (0: none)."""
    return int(signal.Signals[stop.received]) if stop else 0


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _wrapped(model: nn.Module, device: torch.device, options: LoopOptions | None, *, sync_bn: bool = False) -> nn.Module:
    """`model` in DistributedDataParallel, converted to channels_last first where the loop would use it
    (`fit` does not convert a wrapped model), its BatchNorm layers made SyncBatchNorm with `sync_bn` on
    GPUs (torch's SyncBatchNorm runs on GPUs only; its weights and checkpoint keys are those of the
    BatchNorm it replaces, so a single process loads them as they are)."""
    if use_channels_last((options or LoopOptions()).channels_last, torch.device(device).type):
        model = model.to(memory_format=torch.channels_last)
    if sync_bn and torch.device(device).type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return wrap(model, device)


def _reserves(run: Run) -> str:
    return run.budget.describe_reserves()


def load_fold_model(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights and meta of a fold checkpoint (best or last), loaded safely."""
    state = ckpt.load_checkpoint(path)
    return state["model"], ckpt.read_meta(path)


# --------------------------------------------------------------------------- training in workers


def worker_spec(task: str, run: Run, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the workers of `task` (a name in `kagglekit_nb.worker.TASKS`) re-create the run, its config
    and its data from: the setup phase ends here (the workers' time is training time)."""
    run.budget.close_setup()
    return {"task": task, "run": run.handover(), "config": config, **extra}


def run_workers(spec: dict[str, Any], run: Run, world: World) -> dict[str, Any]:
    """`world.processes` torchrun workers on `spec` (the task's `train_worker` in each), their output
    streamed into the cell (`distributed.launch`); then this process takes back the record rank 0 saved
    in run.json, and the time the workers took that rank 0 did not time itself (phase "workers").
    Returns what rank 0 wrote when they finished (result.json: each rank's `train_worker` result)."""
    run.save()
    t0 = run.budget.clock()
    try:
        return launch(spec, world, folder=run.dir, echo=run.echo)
    finally:
        before = sum(run.budget.phases.values())
        run.reload()  # what rank 0 recorded: folds, plan, CV score, the phases it timed, the reserves
        run.budget.add_phase("workers", max(0.0, run.budget.clock() - t0 - (sum(run.budget.phases.values()) - before)))
        run.save()


def train_in_workers(spec: dict[str, Any], run: Run, world: World) -> CVResult:
    """`train_folds` in `world.processes` torchrun workers (`run_workers`); the log says whether every
    process stopped at the same step of each fold."""
    result = run_workers(spec, run, world)
    steps = sorted({json.dumps(r.get("steps"), sort_keys=True) for r in result["ranks"]})
    run.log(f"the {world.processes} training processes finished, every one at the same step of each fold: "
            f"{steps[0]}" if len(steps) == 1 else f"WARNING: the training processes stopped at different steps: {steps}")
    return CVResult.from_summary(run.record)


def worker_result(cv: CVResult) -> dict[str, Any]:
    """What a worker returns from `train_worker`: where it stopped (fold -> optimizer steps), which rank 0
    writes to result.json and `train_in_workers` compares across ranks."""
    return {"rank": rank(), "steps": {str(k): v.get("steps") for k, v in sorted(cv.folds.items())},
            "stop_reason": cv.stop_reason}
