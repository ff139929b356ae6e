"""The one home of every time decision: the session's deadline, the named reserves kept for what
follows training (predict, write, verify, package, ...), the measured pace of each kind of work with
one safety factor, the epochs x folds plan, and the `stop_reason` that every loop asks.

No other module holds a margin, a reserve or a deadline: tasks declare what they need
(`reserve`, `reserve_submission`, `allot`) and loops ask (`stop_reason`, `need`, `plan_fold`).

Everything takes a `clock=` (default `time.monotonic`) so tests drive a fake clock instead of
sleeping. CLOCK_MONOTONIC is shared by all processes on Linux, so a start time measured in the
`kagglekit run` process (passed as KAGGLEKIT_START) is valid inside the notebook's kernel.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["parse_duration", "Budget", "predict_rows", "platform_limit_s", "process_age_s", "plan_epochs", "epoch_limit",
           "split_budget", "RungPick", "SAFETY", "MAX_EPOCHS", "RUNG_EPOCHS", "StopSignal",
           "install_sigterm_handler", "forwarding_signals", "CheckpointTimer"]

Clock = Callable[[], float]

# Session limits of the platforms (CPU/GPU sessions): Kaggle 12 h, Colab 12 h at most.
PLATFORM_LIMIT_S = {"kaggle": 12 * 3600.0, "colab": 12 * 3600.0}

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(sec|min|hr|s|m|h|d)?", re.IGNORECASE)


def parse_duration(value: Any, *, name: str = "BUDGET") -> float:
    """Seconds from 90, "90s", "45m", "2h", "1h30m" or "1.5h" (a bare number means seconds).

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a duration: use e.g. 90, '90s', '45m' or '2h'.")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        while pos < len(text):
            m = _PART.match(text, pos)
            if not m or m.end() == pos:
                break
            seconds += float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(
                f"{name}={value!r} is not a duration: use e.g. 90, '90s', '45m', '2h' or '1h30m'."
            )
    else:
        raise ValueError(f"{name}={value!r} is not a duration: use e.g. 90, '90s', '45m' or '2h'.")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name}={value!r} must be a positive duration, e.g. '45m'.")
    return seconds


def process_age_s(pid: int | str = "self") -> float | None:
    """Seconds since this process (the notebook kernel) started, read from /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22 is starttime in clock ticks since boot; the name (field 2) may contain spaces.
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = float(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def platform_limit_s(platform: str) -> float | None:
    """The session limit of a platform in seconds, None where there is none (local)."""
    return PLATFORM_LIMIT_S.get(platform)


def split_budget(total_left_s: float, runs_left: int, parallel: int = 1) -> float:
    """The share of a batch's budget the next run gets: what is left, over the waves of runs that
    remain (`parallel` at a time), so a run that ends early leaves its time to those after it.

    >>> split_budget(300.0, 3), split_budget(300.0, 3, parallel=2), split_budget(-5.0, 2)
    (100.0, 150.0, 0.0)
    """
    if runs_left < 1 or parallel < 1:
        raise ValueError(f"split_budget: runs_left={runs_left!r} and parallel={parallel!r} must be at least 1.")
    waves = -(-runs_left // parallel)
    return max(0.0, float(total_left_s)) / waves


def predict_rows(visible: int, expected: int | None) -> int:
    """The test rows prediction is sized for: TEST_ROWS (`expected`), the hidden test set a code
    competition's rerun scores within the same time limit, when it is larger than the `visible` rows
    (the sample's), else those.

    >>> predict_rows(3, 500_000), predict_rows(40, None), predict_rows(40, 10)
    (500000, 40, 40)
    """
    return max(int(visible), int(expected or 0))


# The one safety factor: every measured duration (a training step, an evaluation, a prediction
# item, a LightGBM fit, an embedding batch) is multiplied by it before asking "does it still fit?".
SAFETY = 1.5
# A smoke step times forward + backward alone; the optimizer step and data loading add about this
# much on small models, so an epoch is estimated as smoke step x OVERHEAD x steps + evaluation.
SMOKE_OVERHEAD = 1.15
# Fixed parts of the named reserves (seconds): writing the submission file and verifying it.
WRITE_S = 5.0
VERIFY_S = 5.0
MODEL_LOAD_S = 0.5   # loading one saved model for prediction (per model)
PACKAGE_S = 20.0     # checking a code package: a fresh process importing torch, then its outputs
FEATURE_ROW_S = 1e-4 # building the tabular features of one test row (ISIC)
# EPOCHS = None means "as many epochs as the budget allows": at most this many per fold (also the
# plan without a time limit), so an unlimited session still ends.
MAX_EPOCHS = 100
# MODEL = "auto" moves up the ladder to a larger model only while every fold can still train it for
# this many epochs (or MIN_EPOCHS, if more; or EPOCHS when it is set): a few epochs of a large model
# lose to many epochs of a smaller one, and a model that barely fits leaves no room for a slow epoch.
RUNG_EPOCHS = 10


def epoch_limit(max_epochs: int | None) -> int:
    """The most epochs a fold may be planned: `max_epochs` (EPOCHS), or MAX_EPOCHS for None ("what fits")."""
    return MAX_EPOCHS if max_epochs is None else int(max_epochs)


@dataclass(frozen=True)
class RungPick:
    """What `Budget.pick_rung` chose: the rung's index, whether each timed rung fits (None: not
    timed), the epochs per fold each rung had to fit, and the seconds each would need."""

    index: int
    fits: list[bool | None]
    epochs: int
    need_s: list[float | None]


@dataclass
class Budget:
    """A deadline on a monotonic clock, named reserves kept back for what follows training, the
    measured pace of each kind of work, and the one `stop_reason` every loop asks.

    `total_s=math.inf` means no limit. `start` is a reading of `clock` (default: now).

    >>> b = Budget(total_s=100.0, clock=lambda: 0.0)
    >>> b.reserve("write", 5.0); b.reserve("verify", 5.0); b.reserve_s
    10.0
    >>> b.stop_reason(95.0)
    'budget: stopped to keep time for write + verify (10s)'
    """

    total_s: float
    start: float | None = None
    reserves: dict[str, float] = field(default_factory=dict)
    clock: Clock = time.monotonic
    source: str = "parameter"
    phases: dict[str, float] = field(default_factory=dict)
    pace: dict[str, float] = field(default_factory=dict)       # seconds per unit, the latest measured
    planned: dict[str, float] = field(default_factory=dict)    # seconds per unit, estimated before
    deadlines: dict[str, float] = field(default_factory=dict)  # share name -> clock reading

    def __post_init__(self) -> None:
        if not (self.total_s > 0):
            raise ValueError(f"Budget total_s={self.total_s!r} must be positive (math.inf for no limit).")
        if self.start is None:
            self.start = self.clock()
        for name, seconds in dict(self.reserves).items():
            self.reserve(name, seconds)

    @classmethod
    def resolve(
        cls,
        value: Any = None,
        *,
        platform: str = "local",
        environ: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
        process_age: float | None = None,
    ) -> "Budget":
        """The budget for this run: the parameter, else KAGGLEKIT_BUDGET, else the platform limit.

        The clock starts at KAGGLEKIT_START (a monotonic reading passed by `kagglekit run`), else at
        the kernel process's start, so time spent before setup counts against the budget.
        """
        environ = os.environ if environ is None else environ
        now = clock()
        if value is not None:
            total, source = parse_duration(value), "parameter"
        elif environ.get("KAGGLEKIT_BUDGET"):
            total, source = parse_duration(environ["KAGGLEKIT_BUDGET"], name="KAGGLEKIT_BUDGET"), "env"
        elif platform_limit_s(platform):
            total, source = platform_limit_s(platform), f"{platform} session limit"
        else:
            total, source = math.inf, "unlimited"
        if environ.get("KAGGLEKIT_START"):
            start = float(environ["KAGGLEKIT_START"])
        else:
            age = process_age_s() if process_age is None else process_age
            start = now - (age or 0.0)
        return cls(total_s=total, start=min(start, now), clock=clock, source=source)

    # -- the clock ---------------------------------------------------------------------------

    @property
    def limited(self) -> bool:
        return math.isfinite(self.total_s)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds until the deadline (inf without a limit; negative once past it)."""
        return self.total_s - self.elapsed()

    # -- named reserves ------------------------------------------------------------------------

    @property
    def reserve_s(self) -> float:
        """Seconds kept back for what follows training: the sum of the named reserves."""
        return float(sum(self.reserves.values()))

    def reserve(self, name: str, seconds: float) -> None:
        """Keep `seconds` back for the step `name` (predict, write, verify, package, ...), replacing
        an earlier reserve of that name. Each step declares what it needs; the reserves add up."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"reserve name={name!r} must be a non-empty string, e.g. 'predict'.")
        if not (seconds >= 0) or math.isnan(seconds):
            raise ValueError(f"reserve {name!r}: seconds={seconds!r} must be >= 0.")
        self.reserves[name] = float(seconds)

    def release(self, name: str) -> float:
        """Drop the reserve `name` (its step has run, or no longer needs it); returns its seconds."""
        return self.reserves.pop(name, 0.0)

    def describe_reserves(self) -> str:
        """The reserves as a plan prints them: "20s (write 5s, verify 5s, predict 10s)"."""
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.reserves.items())
        return f"{self.reserve_s:.0f}s ({parts})" if parts else "0s"

    def reserve_share(self, name: str, fraction: float) -> float:
        """Reserve `fraction` of the time left after the other reserves for the step `name` (e.g.
        LightGBM after image fine-tuning); nothing without a limit. Returns the seconds reserved."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"reserve_share {name!r}: fraction={fraction!r} must be in [0, 1].")
        self.release(name)
        left = self.training_left()
        seconds = fraction * max(0.0, left) if math.isfinite(left) else 0.0
        self.reserve(name, seconds)
        return seconds

    def reserve_submission(self) -> None:
        """Declare the reserves every run that ends in a submission needs: writing and verifying it."""
        self.reserve("write", WRITE_S)
        self.reserve("verify", VERIFY_S)

    def reserve_predict(self, *, items: int, item_s: float, models: int = 0) -> float:
        """Declare the prediction reserve: `items` (test rows x models x TTA views) at `item_s`
        measured seconds each, times SAFETY, plus loading `models` saved models. Returns it."""
        seconds = self.predict_need(items=items, item_s=item_s, models=models)
        self.reserve("predict", seconds)
        return seconds

    @staticmethod
    def predict_need(*, items: int, item_s: float, models: int = 0) -> float:
        """Seconds the prediction reserve keeps for `items` at `item_s` each and `models` to load."""
        return SAFETY * item_s * items + MODEL_LOAD_S * models

    def training_left(self) -> float:
        """Seconds that training may still use: what is left minus the reserves."""
        return self.remaining() - self.reserve_s

    def fits(self, seconds: float) -> bool:
        """Whether work taking `seconds` can run now without eating into the reserves."""
        return seconds <= self.training_left()

    # -- measured pace ----------------------------------------------------------------------------

    def plan_pace(self, kind: str, seconds: float) -> None:
        """The estimate of one unit of `kind` (e.g. "step", "eval") before it is measured; it also
        forgets earlier measurements of that kind (a new model, a new fold)."""
        self.planned[kind] = float(seconds)
        self.pace.pop(kind, None)

    def observe(self, kind: str, seconds: float) -> None:
        """A measured duration of one unit of `kind`."""
        self.pace[kind] = float(seconds)

    def need(self, kind: str, count: float = 1.0) -> float:
        """Seconds to set aside for `count` units of `kind`: SAFETY x the slower of the estimate and
        the latest measurement (0 while neither is known)."""
        per_unit = max(self.planned.get(kind, 0.0), self.pace.get(kind, 0.0))
        return SAFETY * per_unit * count

    def how_many_fit(self, kind: str, units: Sequence[float], *, share: str | None = None) -> int:
        """How many items of a queue of work (item i: `units[i]` units of `kind`, in order) will start, as
        `stop_reason` decides before each: an item starts while `need` (SAFETY x the pace) of its units
        fits the time left (inside the stage `share` when given, before the reserves), and then takes
        its units at the pace. All of them without a limit or before the pace is known.

        >>> b = Budget(total_s=100.0, clock=lambda: 0.0); b.reserve("write", 10.0); b.observe("batch", 2.0)
        >>> b.how_many_fit("batch", [10] * 5)   # 90 s: 30 s of need start each, 20 s each is spent
        4
        """
        per_unit = max(self.planned.get(kind, 0.0), self.pace.get(kind, 0.0))
        left = self.training_left()
        if share is not None:
            left = min(left, self.deadlines.get(share, math.inf) - self.clock())
        if per_unit <= 0 or not math.isfinite(left):
            return len(units)
        for i, n in enumerate(units):
            if self.need(kind, n) > left:
                return i
            left -= per_unit * n
        return len(units)

    @staticmethod
    def epoch_estimate(*, step_s: float, steps: int, eval_item_s: float, val_items: int) -> float:
        """Seconds of one epoch from a smoke step: training steps plus the validation pass."""
        return step_s * SMOKE_OVERHEAD * steps + eval_item_s * val_items

    # -- shares: a part of the time for one stage ----------------------------------------------------

    def allot(self, name: str, fraction: float) -> float:
        """Give the stage `name` at most `fraction` of the training time left now; returns the
        clock reading it must end by (inf without a limit). `stop_reason(..., share=name)` checks it."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"allot {name!r}: fraction={fraction!r} must be in (0, 1], e.g. 0.5 for half.")
        left = self.training_left()
        self.deadlines[name] = self.clock() + fraction * left if math.isfinite(left) else math.inf
        return self.deadlines[name]

    # -- the one stop decision ----------------------------------------------------------------------

    def stop_reason(self, need_s: float = 0.0, *, share: str | None = None) -> str | None:
        """None when work taking `need_s` seconds may start now; else why not, as a line starting
        with "budget:". Every loop asks this before its next unit of work (a training step, an
        evaluation, an embedding chunk, a LightGBM fit or round)."""
        if share is not None and self.clock() + need_s > self.deadlines.get(share, math.inf):
            return f"budget: the share of the time given to {share} is used"
        if not self.fits(need_s):
            kept = " + ".join(k for k, v in self.reserves.items() if v > 0)
            return (f"budget: stopped to keep time for {kept} ({self.reserve_s:.0f}s)" if kept
                    else "budget: stopped at the end of the time")
        return None

    def pick_rung(self, epoch_s: Sequence[float | None], *, folds: int, max_epochs: int | None,
                  min_epochs: int, other_s: Sequence[float] | None = None) -> RungPick:
        """The strongest rung of a model ladder (ordered from small and fast to large) whose `folds`
        x epochs fit the training time left: `epoch_s[i]` is rung i's estimated epoch (None: not
        timed), `other_s[i]` what else it needs (its prediction reserve). Each rung must fit
        `max_epochs` epochs per fold when set, else max(min_epochs, RUNG_EPOCHS). The rungs are
        climbed in order and the climb ends at the first one that does not fit; rung 0 is the
        fallback when none fits (the fold plan then trains fewer epochs or folds).

        >>> Budget(total_s=100.0, clock=lambda: 0.0).pick_rung([1.0, 5.0, 20.0], folds=2, max_epochs=None,
        ...                                                    min_epochs=3).index   # needs 20, 100, 400 s
        1
        """
        if folds < 1:
            raise ValueError(f"pick_rung: folds={folds!r} must be at least 1.")
        epochs = epoch_limit(max_epochs) if max_epochs is not None else max(min_epochs, RUNG_EPOCHS)
        left = self.training_left()
        fits: list[bool | None] = []
        need: list[float | None] = []
        index, climbing = 0, True
        for i, cost in enumerate(epoch_s):
            if cost is None:
                fits.append(None)
                need.append(None)
                continue
            seconds = cost * folds * epochs + (other_s[i] if other_s is not None else 0.0)
            ok = seconds <= left
            fits.append(ok)
            need.append(seconds)
            if climbing and ok:
                index = i
            climbing = climbing and ok
        return RungPick(index=index, fits=fits, epochs=epochs, need_s=need)

    def plan_fold(self, *, epoch_s: float, folds_left: int, max_epochs: int | None, min_epochs: int,
                  folds_trained: int = 0) -> dict[str, Any]:
        """The plan of the next fold: epochs that fit with `folds_left` folds still to train, at most
        `max_epochs` (None: as many as fit, at most MAX_EPOCHS).

        A fold is planned below `min_epochs` only when it is the only one that can run: next to
        `folds_trained` finished folds, a short fold would only dilute the ensemble, so it gets 0.
        """
        max_epochs = epoch_limit(max_epochs)
        floor = min(min_epochs, max_epochs)
        epochs, fits = plan_epochs(available_s=self.training_left(), epoch_s=epoch_s, folds_left=folds_left,
                                   max_epochs=max_epochs, min_epochs=floor)
        note = None
        if 0 < epochs < floor and folds_trained > 0:
            note = f"only {epochs} of MIN_EPOCHS={floor} epochs would fit next to {folds_trained} trained fold(s)"
            epochs, fits = 0, 0
        return {"epochs": epochs, "epoch_s": round(epoch_s, 2), "folds_that_fit": fits, **({"note": note} if note else {})}

    # -- another process continues it ----------------------------------------------------------------

    def handover(self) -> dict[str, Any]:
        """What another process (a training worker) needs to spend this same budget: the limit, the time
        used, the reserves and phases, and the wall-clock moment of the handover, so that a process with
        another monotonic clock (another machine) counts to the same deadline (`Budget.taken_over`)."""
        return {"total_s": self.total_s if self.limited else None, "elapsed_s": self.elapsed(),
                "wall": time.time(), "source": self.source, "reserves": dict(self.reserves),
                "phases": dict(self.phases)}

    @classmethod
    def taken_over(cls, state: Mapping[str, Any], *, clock: Clock = time.monotonic,
                   wall: Clock = time.time) -> "Budget":
        """The budget `handover` described, on this process's `clock`: the same deadline, reserves and phases."""
        since = 0.0 if state.get("wall") is None else max(0.0, wall() - float(state["wall"]))
        total = math.inf if state.get("total_s") is None else float(state["total_s"])
        return cls(total_s=total, start=clock() - float(state["elapsed_s"]) - since, clock=clock,
                   reserves=dict(state.get("reserves") or {}), source=str(state.get("source", "parameter")),
                   phases=dict(state.get("phases") or {}))

    # -- the record ---------------------------------------------------------------------------------

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def close_setup(self) -> None:
        """Book the time before the first timed step (kernel start, imports, loading) as "setup"."""
        if "setup" not in self.phases:
            self.add_phase("setup", self.elapsed() - sum(self.phases.values()))

    def timed(self, name: str) -> "_Phase":
        """Context manager adding the time spent inside it to phase `name`."""
        return _Phase(self, name)

    def summary(self) -> dict[str, Any]:
        return {
            "budget_s": self.total_s if self.limited else None,
            "budget_source": self.source,
            "elapsed_s": round(self.elapsed(), 2),
            "reserve_s": round(self.reserve_s, 2),
            "reserves": {k: round(v, 2) for k, v in self.reserves.items()},
            "phases": {k: round(v, 2) for k, v in self.phases.items()},
        }


class _Phase:
    def __init__(self, budget: Budget, name: str):
        self.budget, self.name = budget, name

    def __enter__(self) -> "_Phase":
        self.t0 = self.budget.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.budget.add_phase(self.name, self.budget.clock() - self.t0)


def plan_epochs(
    *, available_s: float, epoch_s: float, folds_left: int, max_epochs: int, min_epochs: int = 1
) -> tuple[int, int]:
    """(epochs per fold, folds) that fit `available_s`: keep every fold with fewer epochs down to
    `min_epochs`, then drop folds. (0, 0) when not even one epoch of one fold fits.

    >>> plan_epochs(available_s=100, epoch_s=10, folds_left=5, max_epochs=20)
    (2, 5)
    """
    if folds_left <= 0 or max_epochs <= 0:
        return 0, 0
    if not math.isfinite(available_s):
        return max_epochs, folds_left
    if epoch_s <= 0:
        raise ValueError(f"epoch_s={epoch_s!r} must be positive")
    epochs = min(max_epochs, int(available_s // (epoch_s * folds_left)))
    floor = min(min_epochs, max_epochs)
    if epochs >= floor:
        return epochs, folds_left
    folds = int(available_s // (epoch_s * floor))
    if folds <= 0:
        whole = int(available_s // epoch_s)
        return (whole, 1) if whole >= 1 else (0, 0)
    return floor, min(folds, folds_left)


# --- Stop signals and the checkpoint cadence ---


# After SIGTERM/SIGINT reaches `kagglekit run`, how long the kernel gets to checkpoint and let the
# notebook's remaining cells write the submission before it is killed (a platform's own grace after
# its SIGTERM is often 30 s to a few minutes; a second signal ends the wait at once).
STOP_GRACE_S = 120.0
# Of that grace, what the training workers of a multi-process run get to reach their next step and
# checkpoint before torchrun kills them (`torchrun --shutdown-timeout`): the notebook keeps the rest
# to predict and write the submission.
WORKER_GRACE_S = STOP_GRACE_S / 2


class CheckpointTimer:
    """Says when a time-cadence save is due: `every` seconds (or "5m") on a monotonic clock.

    >>> timer = CheckpointTimer("5m")
    >>> if timer.due(): save(...); timer.reset()
    """

    def __init__(self, every: float | str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = parse_duration(every, name="CHECKPOINT_EVERY")
        self._clock = clock
        self._last = clock()

    def due(self) -> bool:
        """True once `every_s` has passed since the start or the last `reset`."""
        return self._clock() - self._last >= self.every_s

    def reset(self) -> None:
        """Start the next interval now (call after each save, whatever triggered it)."""
        self._last = self._clock()

    def remaining(self) -> float:
        """Seconds until the next save is due (0 when due)."""
        return max(0.0, self.every_s - (self._clock() - self._last))


@dataclass
class StopSignal:
    """Which stop signal arrived (None until one does); truthy once one has."""

    received: str | None = None

    def __bool__(self) -> bool:
        return self.received is not None


@contextlib.contextmanager
def install_sigterm_handler(
    callback: Callable[[str], None] | None = None,
    *,
    signals: Sequence[int] = (signal.SIGTERM,),
) -> Iterator[StopSignal]:
    """Within the block, SIGTERM (and any other `signals`, e.g. SIGINT) only sets a `StopSignal`.

    The loop checks it at step boundaries, saves there and stops. Nothing is saved inside the
    handler: it may have interrupted a save. `callback(name)` runs in the handler, so keep it to
    logging. The same signal a second time goes to the previous handler (a stuck run can still be
    killed or interrupted). The previous handlers are restored on exit.
    """
    flag = StopSignal()
    previous: dict[int, Any] = {}
    seen: set[int] = set()

    def handler(signum: int, frame: Any) -> None:
        if signum in seen:
            _pass_on(signum, frame, previous.get(signum))
            return
        seen.add(signum)
        name = signal.Signals(signum).name
        if flag.received is None:
            flag.received = name
        if callback is not None:
            callback(name)

    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    except ValueError as e:
        _restore_handlers(previous)
        raise ValueError(f"install_sigterm_handler must run in the main thread (notebook cells do): {e}") from None
    try:
        yield flag
    finally:
        _restore_handlers(previous)


def _pass_on(signum: int, frame: Any, prev: Any) -> None:
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def forwarding_signals(handler: Callable[[int, Any], None],
                       signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block `handler(signum, frame)` receives `signals` (a launcher passing them on to the
    processes it started); the previous handlers come back on exit. Off the main thread, where
    Python cannot install handlers, nothing is installed and the signals keep their handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        _restore_handlers(previous)


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
