"""Tests for kagglekit_nb.run: opening a run, its record, continuing a run across sessions."""
from __future__ import annotations

import json

import pytest
from _fakes import FakeApi

from kagglekit_nb.env import find_previous_run
from kagglekit_nb.run import RUN_FILE, start_run


def _start(out, **kw):
    lines: list[str] = []
    run = start_run({"EPOCHS": 3}, run_name="digits", output_dir=out, budget="10m", seed=1, environ={},
                    echo=lines.append, **kw)
    return run, lines


def test_start_run_writes_the_record_and_counts_sessions(tmp_path):
    run, lines = _start(tmp_path / "out")
    record = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    assert record["sessions"] == 1 and record["budget_s"] == 600 and record["config"] == {"EPOCHS": 3}
    assert record["environment"]["platform"] == "local"
    assert any("budget 600s" in line for line in lines)
    again, _ = _start(tmp_path / "out")
    assert again.previous["sessions"] == 1 and again.record["sessions"] == 2


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        _start(tmp_path / "f")


def _earlier_output(root):
    """An earlier version's output attached as an input: <input>/<kernel>/<RUN_NAME>/..."""
    prev = root / "my-kernel-v3" / "digits"
    (prev / "checkpoints" / "fold0").mkdir(parents=True)
    (prev / "checkpoints" / "fold0" / "step-000000010.ckpt").write_bytes(b"state")
    (prev / RUN_FILE).write_text(json.dumps({"sessions": 2}))
    return prev


def test_a_new_session_continues_the_run_attached_as_input(tmp_path):
    prev = _earlier_output(tmp_path / "input")
    assert find_previous_run("digits", input_root=tmp_path / "input") == prev
    assert find_previous_run("other", input_root=tmp_path / "input") is None
    run, lines = _start(tmp_path / "working" / "digits", input_root=tmp_path / "input")
    copied = run.dir / "checkpoints" / "fold0" / "step-000000010.ckpt"
    assert copied.read_bytes() == b"state"
    assert run.record["sessions"] == 3 and run.record["continued_from_input"] == str(prev)
    assert any("continuing the run found in" in line for line in lines)
    assert (prev / "checkpoints" / "fold0" / "step-000000010.ckpt").exists()  # the input is left as it was


def test_an_existing_output_is_not_overwritten_by_the_input(tmp_path):
    _earlier_output(tmp_path / "input")
    out = tmp_path / "working" / "digits"
    _start(out)  # this output already has its own run.json
    run, _ = _start(out, input_root=tmp_path / "input")
    assert "continued_from_input" not in run.record
    assert not (out / "checkpoints" / "fold0").exists()


# --------------------------------------------------------------------------- RESUME_FROM: the API restores the run

KERNEL = "alice/digits-resnet"


def _kaggle_output(sessions=2):
    """What the API serves as that notebook's last output: /kaggle/working/<RUN_NAME>/... of its session."""
    return FakeApi(outputs={KERNEL: {"digits/run.json": json.dumps({"run_name": "digits", "sessions": sessions}),
                                     "digits/checkpoints/fold0/step-000000010.ckpt": b"state"}})


def test_resume_from_restores_the_saved_run_and_the_run_continues_it(tmp_path):
    api = _kaggle_output(sessions=2)
    out = tmp_path / "working" / "digits"
    run, lines = _start(out, resume_from=KERNEL, kaggle_api_factory=lambda: api)
    assert (out / "checkpoints" / "fold0" / "step-000000010.ckpt").read_bytes() == b"state"
    assert run.previous["sessions"] == 2 and run.record["sessions"] == 3
    assert run.record["restored_from"] == KERNEL
    assert json.loads((out / RUN_FILE).read_text())["sessions"] == 3
    assert any(f"restored the run saved by {KERNEL}" in line for line in lines)
    assert any("continuing a previous run" in line for line in lines)
    # the next session in this folder continues it as it is: no second download
    again, lines = _start(out, resume_from=KERNEL, kaggle_api_factory=lambda: api)
    assert again.record["sessions"] == 4 and "restored_from" not in again.record
    assert len(api.calls) == 1
    assert any(f"RESUME_FROM='{KERNEL}' not used: {out} already holds a run" in line for line in lines)


def test_resume_from_never_overwrites_a_run_in_the_output_folder(tmp_path):
    out = tmp_path / "digits"
    _start(out)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "mine.ckpt").write_bytes(b"mine")
    api = _kaggle_output(sessions=7)
    run, lines = _start(out, resume_from=KERNEL, kaggle_api_factory=lambda: api)
    assert api.calls == [] and run.record["sessions"] == 2
    assert (out / "checkpoints" / "mine.ckpt").read_bytes() == b"mine"
    assert not (out / "checkpoints" / "fold0").exists()


def test_resume_from_is_a_parameter_of_every_notebook_checked_where_it_enters(tmp_path):
    from dataclasses import dataclass

    from kagglekit_nb.tasks._config import RunConfig, start

    @dataclass
    class Config(RunConfig):
        RUN_NAME: str = "digits"
        DEVICE: str | None = None

    with pytest.raises(ValueError, match=r"RESUME_FROM='digits-resnet' must be OWNER/NAME or OWNER/NAME/VERSION"):
        Config(RESUME_FROM="digits-resnet")
    cfg = Config(OUTPUT_DIR=str(tmp_path / "digits"), BUDGET="10m", RESUME_FROM=f" {KERNEL} ")
    assert cfg.RESUME_FROM == KERNEL
    api = _kaggle_output(sessions=1)
    run = start(cfg, environ={}, echo=lambda m: None, kaggle_api_factory=lambda: api)
    assert run.record["sessions"] == 2 and run.config["RESUME_FROM"] == KERNEL


# --------------------------------------------------------------------------- one writer per run folder

_HOLD = """
import sys, time
from kagglekit_nb.run import start_run
start_run({}, run_name="digits", output_dir=sys.argv[1], environ={}, echo=lambda m: None)
print("holding", flush=True)
sys.stdin.readline()
"""


def test_a_second_process_on_a_locked_folder_is_refused_with_the_holder_named(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from kagglekit_nb.lock import LOCK_FILE, RunLocked

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as info:
            _start(out)
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "another OUTPUT_DIR (or RUN_NAME)" in message and "Wait for that run to finish" in message
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not (out / LOCK_FILE).exists()  # released at exit
    run, _ = _start(out)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    again, _ = _start(out)  # the same process may open its run again (re-running the first cell)
    assert again.lock is run.lock


def _foreign_lock(out, *, host, pid, beat_age_s):
    import time

    from kagglekit_nb.lock import LOCK_FILE

    out.mkdir(parents=True)
    now = time.time()
    (out / LOCK_FILE).write_text(json.dumps({"host": host, "pid": pid, "started_unix": now - 7200,
                                             "heartbeat_unix": now - beat_age_s, "token": "x"}))


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path):
    import os
    import socket

    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    _foreign_lock(tmp_path / "out", host=socket.gethostname(), pid=dead, beat_age_s=5)
    run, lines = _start(tmp_path / "out")
    assert run.lock.record["pid"] == os.getpid()
    assert any(f"taking over the lock of {run.dir} from pid {dead}" in line and "its process is gone" in line
               for line in lines), lines


def test_a_lock_of_another_host_counts_while_its_heartbeat_is_fresh(tmp_path):
    """A Drive folder: another runtime's flock is invisible here; its heartbeat decides."""
    from kagglekit_nb.lock import STALE_S, RunLocked

    _foreign_lock(tmp_path / "alive", host="colab-other-runtime", pid=1234, beat_age_s=60)
    with pytest.raises(RunLocked, match="pid 1234 on host colab-other-runtime, started .* heartbeat 1.0 min ago"):
        _start(tmp_path / "alive")
    _foreign_lock(tmp_path / "gone", host="colab-other-runtime", pid=1234, beat_age_s=STALE_S + 60)
    run, lines = _start(tmp_path / "gone")
    assert run.lock is not None
    assert any("colab-other-runtime" in line and "no heartbeat for over 15 min" in line for line in lines), lines
