"""One writer per run folder: the lock `start_run` takes on its output folder.

Two runs on one OUTPUT_DIR (a double-clicked Run All, two papermill jobs) would delete each other's
checkpoints and mix their folds, so the second is refused at once, with a message naming the
holder. The lock is an `fcntl.flock` on the run folder itself (released by the kernel when the
process dies, however it dies) plus a record, `run.lock` (JSON, written atomically): the holder's
host, pid, start time and a heartbeat the holder rewrites every `HEARTBEAT_S`. The record is what
works where flock does not reach: on a Google Drive folder two Colab runtimes do not see each
other's flock, and a runtime that is gone leaves its record behind. A record is stale, and taken
over, when its process is known to be gone (this host, and the flock is free or the pid is dead)
or when its heartbeat is older than `STALE_S` (another host).

Within one process the lock is re-entrant: a second `start_run` on the same folder (re-running a
notebook's first cell, a test opening a run twice) keeps the lock it holds. Locks are released
when the process exits (`release_all` at exit, and the kernel drops the flock of a killed one).
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import write_json

__all__ = ["LOCK_FILE", "RunLocked", "RunLock", "acquire"]

LOCK_FILE = "run.lock"
HEARTBEAT_S = 60.0      # how often a holder rewrites its heartbeat
STALE_S = 15 * 60.0     # a heartbeat this old from another host means its runtime is gone (Drive)
# A killed holder's forked children (DataLoader workers) share its flock until they see their parent is
# gone (PyTorch's workers look every 5 s): a new run waits up to this long for them before refusing.
ORPHAN_WAIT_S = 20.0

_HELD: dict[Path, RunLock] = {}
_GUARD = threading.Lock()
_BEATING: list[threading.Thread] = []


class RunLocked(RuntimeError):
    """The run folder is held by another live run; the message names it and what to do."""


@dataclass
class RunLock:
    """This process's hold on a run folder (see the module docstring)."""

    directory: Path
    record: dict[str, Any]
    fd: int | None            # the flocked folder, or None where flock is unsupported

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def beat(self) -> None:
        """Rewrite the heartbeat (atomically); a failure is ignored, the next beat tries again."""
        self.record["heartbeat_unix"] = round(time.time(), 3)
        with contextlib.suppress(OSError):
            write_json(self.path, self.record)

    def release(self) -> None:
        """Remove the record (if it is still this process's) and drop the flock."""
        with _GUARD:
            _HELD.pop(self.directory, None)
        with contextlib.suppress(OSError, ValueError):
            if _read(self.path).get("token") == self.record["token"]:
                self.path.unlink()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _flock(directory: Path) -> tuple[int | None, bool]:
    """(fd, held by someone else) for an exclusive flock on `directory`; fd None: flock unsupported."""
    try:
        import fcntl
    except ImportError:  # Windows: the record alone decides
        return None, False
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, True
        return None, False  # ENOLCK, EOPNOTSUPP, ...: a file system without flock (some FUSE mounts)
    return fd, False


def _wait_for_flock(directory: Path, wait_s: float, poll_s: float = 0.25) -> tuple[int | None, bool]:
    """`_flock`, tried again until it is free or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        fd, busy = _flock(directory)
        if not busy or time.monotonic() >= deadline:
            return fd, busy
        time.sleep(poll_s)


def describe(record: dict[str, Any], now: float | None = None) -> str:
    """'pid 123 on host colab-1, started 2024-05-01 10:00:00, heartbeat 2.0 min ago'."""
    now = time.time() if now is None else now
    started = record.get("started_unix")
    beat = record.get("heartbeat_unix")
    parts = [f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"]
    if isinstance(started, (int, float)):
        parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)))
    if isinstance(beat, (int, float)):
        parts.append(f"heartbeat {max(0.0, now - beat) / 60:.1f} min ago")
    return ", ".join(parts)


def _stale(record: dict[str, Any], host: str, flock_free: bool, now: float, stale_s: float) -> str | None:
    """Why the holder in `record` is gone (None: it may be alive)."""
    if not record:
        return "the lock record is unreadable"
    if record.get("host") == host:
        if not _pid_alive(record.get("pid")):
            return "its process is gone"
        if flock_free:
            return "its process no longer holds the folder"
    beat = record.get("heartbeat_unix")
    if not isinstance(beat, (int, float)) or now - beat > stale_s:
        return f"no heartbeat for over {stale_s / 60:.0f} min"
    return None


def acquire(directory: str | os.PathLike, *, log: Callable[[str], None] | None = print,
            stale_s: float = STALE_S, clock: Callable[[], float] = time.time) -> RunLock:
    """Take the run folder `directory` for this process, or raise `RunLocked` naming its holder.

    Re-entrant within a process; a stale lock (see the module docstring) is taken over, and `log`
    says whose it was.
    """
    directory = Path(directory).resolve()
    with _GUARD:
        held = _HELD.get(directory)
        if held is not None:
            return held
    host, now = socket.gethostname(), clock()
    fd, busy = _flock(directory)
    path = directory / LOCK_FILE
    record = _read(path) if path.exists() else None
    foreign = record is not None and (record.get("pid"), record.get("host")) != (os.getpid(), host)
    orphaned = busy and bool(record) and record.get("host") == host and not _pid_alive(record.get("pid"))
    if orphaned:  # the holder is dead; what holds its flock are processes it forked
        fd, busy = _wait_for_flock(directory, ORPHAN_WAIT_S)
    if busy or foreign:
        why = None if busy else _stale(record or {}, host, fd is not None, now, stale_s)
        if why is None:
            if fd is not None:
                os.close(fd)
            holder = describe(record or {}, now) if record else "a process on this machine"
            if orphaned:
                raise RunLocked(
                    f"the run folder {directory} is still held by processes that the run {holder} started "
                    f"(its process is gone; its DataLoader workers, say, still ran {ORPHAN_WAIT_S:.0f} s later). "
                    "Wait until they exit, or end them (`pkill -f <notebook or script name>`), then start again.")
            raise RunLocked(
                f"the run folder {directory} is in use by another run ({holder}). Two runs writing one "
                "folder would delete each other's checkpoints. Wait for that run to finish (or stop it), "
                "or give this run another OUTPUT_DIR (or RUN_NAME). If that run is gone, delete "
                f"{path} and start again.")
        if log is not None and record:
            log(f"taking over the lock of {directory} from {describe(record, now)}: {why}")
    mine = {"host": host, "pid": os.getpid(), "started_unix": round(now, 3), "heartbeat_unix": round(now, 3),
            "token": os.urandom(8).hex()}
    lock = RunLock(directory, mine, fd)
    write_json(path, mine)
    with _GUARD:
        _HELD[directory] = lock
        if not _BEATING:
            thread = threading.Thread(target=_beat_forever, name="kagglekit-run-lock", daemon=True)
            thread.start()
            _BEATING.append(thread)
    return lock


def _beat_forever() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _GUARD:
            held = list(_HELD.values())
        for lock in held:
            lock.beat()


@atexit.register
def release_all() -> None:
    """Release every lock this process holds (at exit)."""
    with _GUARD:
        held = list(_HELD.values())
    for lock in held:
        lock.release()
