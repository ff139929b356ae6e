"""The run folder's lock (kagglekit_nb.lock) when its holder died but processes it forked live on:
DataLoader workers share the holder's flock until they notice their parent is gone."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from kagglekit_nb import lock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _orphan_holding(folder, seconds: float) -> subprocess.Popen:
    """A process holding the folder's flock for `seconds`, as a dead run's loader worker does, under a
    lock record naming a pid that is gone."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        f"time.sleep({seconds})\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    record = {"host": socket.gethostname(), "pid": _dead_pid(), "started_unix": time.time(),
              "heartbeat_unix": time.time(), "token": "dead"}
    (folder / lock.LOCK_FILE).write_text(json.dumps(record))
    return holder


def test_a_dead_runs_forked_workers_are_waited_for_then_the_lock_is_taken(tmp_path):
    holder = _orphan_holding(tmp_path, 1.5)
    said: list[str] = []
    t0 = time.monotonic()
    held = lock.acquire(tmp_path, log=said.append)
    try:
        assert time.monotonic() - t0 >= 0.5       # it waited for the worker to let go
        assert holder.wait(timeout=10) == 0
        assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["token"] == held.record["token"]
        assert any("its process is gone" in line for line in said)
    finally:
        held.release()


def test_workers_that_outlive_the_wait_are_named_in_the_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "ORPHAN_WAIT_S", 0.5)
    holder = _orphan_holding(tmp_path, 30)
    try:
        with pytest.raises(lock.RunLocked, match="still held by processes that the run pid .* started"):
            lock.acquire(tmp_path, log=None)
    finally:
        holder.kill()
        holder.wait()
