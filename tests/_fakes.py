"""Test doubles shared by several test files: `from _fakes import FakeClock` (the tests folder is on
sys.path, as for `conftest`), or the `fake_clock` fixture for a clock at the default start."""
from __future__ import annotations

import math


class FakeClock:
    """A monotonic clock that moves only when the test moves it, for code that takes `clock=`.

    `clock()` reads the time in seconds; `clock.advance(s)` moves it forward (never back, never by a
    non-finite amount). `now` is the reading, public so a dataset or hook can tick it.
    The default start, 1000.0, is far from zero so that code mixing up a reading and an elapsed time
    gives visibly wrong numbers; pass `FakeClock(0.0)` where a test reasons in elapsed seconds.
    """

    def __init__(self, now: float = 1000.0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; returns None (so it can be a forward hook, which must not return)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance({seconds!r}): a monotonic clock only moves forward by a finite amount.")
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"
