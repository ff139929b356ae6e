"""The session's time budget: deadline, what is left, the reserve kept for predict + verify.

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

__all__ = ["parse_duration", "Budget", "platform_limit_s", "process_age_s", "plan_epochs"]

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


@dataclass
class Budget:
    """A deadline on a monotonic clock, with a reserve kept back for predict + write + verify.

    `total_s=math.inf` means no limit. `start` is a reading of `clock` (default: now).
    """

    total_s: float
    start: float | None = None
    reserve_s: float = 0.0
    clock: Clock = time.monotonic
    source: str = "parameter"
    phases: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.total_s > 0):
            raise ValueError(f"Budget total_s={self.total_s!r} must be positive (math.inf for no limit).")
        if self.start is None:
            self.start = self.clock()

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

    @property
    def limited(self) -> bool:
        return math.isfinite(self.total_s)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds until the deadline (inf without a limit; negative once past it)."""
        return self.total_s - self.elapsed()

    def training_left(self) -> float:
        """Seconds that training may still use: what is left minus the reserve."""
        return self.remaining() - self.reserve_s

    def fits(self, seconds: float) -> bool:
        """Whether work taking `seconds` can run now without eating into the reserve."""
        return seconds <= self.training_left()

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def timed(self, name: str) -> "_Phase":
        """Context manager adding the time spent inside it to phase `name`."""
        return _Phase(self, name)

    def summary(self) -> dict[str, Any]:
        return {
            "budget_s": self.total_s if self.limited else None,
            "budget_source": self.source,
            "elapsed_s": round(self.elapsed(), 2),
            "reserve_s": round(self.reserve_s, 2),
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


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
