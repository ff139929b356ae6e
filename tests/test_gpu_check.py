"""benchmarks/gpu_check.py on a machine without CUDA: every item is a SKIP, the run exits 0 at once."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_every_item_is_skipped_and_the_run_passes():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    items = list(_module().ITEMS)
    assert len(items) == 13
    assert lines[:-1] == [f"SKIP {name}: no CUDA (torch.cuda.is_available() is False)" for name in items]
    assert lines[-1].startswith(f"summary: 0 PASS, 0 FAIL, {len(items)} SKIP in ")


def test_an_unknown_item_is_refused_naming_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        _module().main(["--only", "oom", "bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--only bogus: unknown item(s)" in err and "bf16, fp16, channels_last" in err
