"""Exact resume end to end: a `kagglekit run` killed with SIGKILL at two moments, then run again with
the same command, ends with a submission byte-identical to an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kagglekit_nb.verification import verify

from conftest import ROOT

pytestmark = pytest.mark.notebook

PARAMS = ["-p", "MODEL", "resnet18", "-p", "IMG_SIZE", "16", "-p", "FOLDS", "3", "-p", "TRAIN_FOLDS", "2", "-p", "EPOCHS", "2",
          "-p", "MIN_EPOCHS", "1", "-p", "CHECKPOINT_EVERY", "1s", "-p", "RUN_NAME", "resume"]


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "kagglekit_nb", "run", "classification", "--data", str(data), "--out", str(out),
            *PARAMS]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KAGGLEKIT_BUDGET", None)  # no budget: the plan is EPOCHS in both runs
    return env


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command and every process it started (the notebook's kernel too)."""
    parent = psutil.Process(proc.pid)
    family = parent.children(recursive=True) + [parent]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(family, timeout=30)


def _step_files(out: Path) -> list[Path]:
    return sorted(out.glob("checkpoints/fold*/step-*.ckpt"))


def _kill_when(proc: subprocess.Popen, out: Path, ready, rng: random.Random, timeout: float = 300) -> None:
    """Wait until `ready(out)` holds, then a random extra moment, then SIGKILL everything."""
    deadline = time.monotonic() + timeout
    while not ready(out):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the planned kill")
        if time.monotonic() > deadline:
            _kill_tree(proc)
            pytest.fail("the run made no progress in time")
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    _kill_tree(proc)


@pytest.fixture(scope="module")
def unseen_competition(tmp_path_factory) -> Path:
    """Digits with integer ids and labels as RGB JPEGs: a layout the other tests do not use."""
    data = tmp_path_factory.mktemp("unseen") / "data"
    subprocess.run([sys.executable, "-m", "kagglekit_nb", "demo", "classification", "--out", str(data), "--seed", "3",
                    "--id-style", "int", "--label-style", "int", "--color", "rgb", "--image-size", "20"],
                   check=True, cwd=ROOT, capture_output=True)
    return data


def test_sigkill_twice_then_rerun_gives_a_byte_identical_submission(unseen_competition, tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run(_command(unseen_competition, straight), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    rng = random.Random(20261121)
    # 1st kill: mid-way through fold 0 (after its first time-cadence checkpoint)
    proc = subprocess.Popen(_command(unseen_competition, killed), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, killed, lambda out: any("fold0" in str(p) for p in _step_files(out)), rng)
    # 2nd kill: once fold 1 has started and saved
    proc = subprocess.Popen(_command(unseen_competition, killed), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, killed, lambda out: any("fold1" in str(p) for p in _step_files(out)), rng)
    # killed before the deep model predicted: a valid submission is already there (the emergency
    # baseline written when the sample was read, replaced by the classical stage's when it beat it)
    assert verify(killed / "submission.csv", unseen_competition / "sample_submission.csv").valid

    again = subprocess.run(_command(unseen_competition, killed), cwd=ROOT, env=_env(), capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step-" in again.stdout
    record = json.loads((killed / "run.json").read_text())
    assert record["resumed_from"], record
    assert record["resumed_from"][0]["fold"] == 1
    assert record["sessions"] == 3
    assert (killed / "submission.csv").read_bytes() == (straight / "submission.csv").read_bytes()
    assert record["cv_score"] == json.loads((straight / "run.json").read_text())["cv_score"]
