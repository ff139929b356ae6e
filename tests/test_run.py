"""Tests for kagglekit_nb.run: opening a run, its record, continuing a run across sessions."""
from __future__ import annotations

import json

import pytest

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
