"""Tests for kagglekit_nb.distributed: the DEVICES parameter, and classification runs in two CPU processes
(gloo, started by torchrun as on Kaggle's two GPUs) against one process: the score, a stop mid-epoch, and a
resume with another number of processes."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kagglekit_nb import distributed
from kagglekit_nb.cv import load_fold_model
from kagglekit_nb.demo import make_classification_demo
from kagglekit_nb.distributed import World, plan_world
from kagglekit_nb.tasks import classification as clf


@pytest.fixture(autouse=True)
def _hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # start_run seeds everything and writes it


# --------------------------------------------------------------------------- the DEVICES parameter


@pytest.mark.parametrize("devices, device, gpus, world", [
    (None, None, 0, World()),                          # no GPU: today's single process
    (None, None, 1, World()),                          # one GPU: the same
    (None, None, 2, World(2, "cuda", "nccl")),         # Kaggle's two T4s: both
    (None, "cpu", 2, World()),                         # DEVICE picked the device of one process
    (1, None, 2, World()),
    (2, None, 2, World(2, "cuda", "nccl")),
    ("2", "cuda", 4, World(2, "cuda", "nccl")),
    ("cpu:2", None, 0, World(2, "cpu", "gloo")),
    ("CPU:1", "cpu", 0, World()),
])
def test_devices_plan_the_processes(devices, device, gpus, world):
    assert plan_world(devices, device=device, gpus=gpus) == world


@pytest.mark.parametrize("devices, device, gpus, pattern", [
    ("two", None, 2, r"DEVICES='two' is not valid: use None \(every visible GPU"),
    (0, None, 2, r"DEVICES=0 is not valid"),
    ("cpu:0", None, 2, r"DEVICES='cpu:0' is not valid"),
    (True, None, 2, r"DEVICES=True is not valid"),
    (2, None, 1, r"DEVICES=2 asks for 2 GPUs but 1 is visible: use DEVICES=None"),
    (2, "cpu", 2, r"DEVICES=2 asks for 2 GPU processes but DEVICE='cpu': use DEVICES='cpu:2'"),
    (2, "cuda:1", 2, r"DEVICE='cuda:1' picks one GPU"),
    ("cpu:2", "cuda", 2, r"DEVICES='cpu:2' asks for CPU processes but DEVICE='cuda'"),
])
def test_bad_devices_are_refused_naming_the_value(devices, device, gpus, pattern):
    with pytest.raises(ValueError, match=pattern):
        plan_world(devices, device=device, gpus=gpus)


def test_config_checks_devices_and_the_shared_batch(tmp_path):
    with pytest.raises(ValueError, match="DEVICES='gpu' is not valid"):
        clf.Config(DEVICES="gpu")
    with pytest.raises(ValueError, match=r"BATCH_SIZE=33 is the batch of one optimizer step, shared by the 2 "
                                         r"training processes: make it a multiple of 2 \(e.g. 32\)"):
        clf.Config(DEVICES="cpu:2", BATCH_SIZE=33)
    assert clf.Config(DEVICES="cpu:2", BATCH_SIZE=32).DEVICES == "cpu:2"


def test_cpu_processes_asking_for_more_threads_than_cores_are_warned(monkeypatch):
    monkeypatch.setattr(distributed, "_cpus", lambda: 2)
    cpu2 = World(2, "cpu", "gloo")
    assert "OMP_NUM_THREADS=2 for each of the 2 CPU processes, on 2 cores" in distributed._crowded(cpu2, {"OMP_NUM_THREADS": "2"})
    assert distributed._crowded(cpu2, {"OMP_NUM_THREADS": "1"}) is None
    assert distributed._crowded(cpu2, {}) is None  # unset: each process gets cores / processes
    assert distributed._worker_environ(cpu2, {})["OMP_NUM_THREADS"] == "1"
    assert distributed._crowded(World(2, "cuda", "nccl"), {"OMP_NUM_THREADS": "8"}) is None


def test_visible_gpus_follow_cuda_visible_devices():
    assert distributed.visible_gpus({}, found=2) == 2
    assert distributed.visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, found=2) == 1
    assert distributed.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, found=2) == 0
    assert distributed.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, found=2) == 1  # CUDA stops at -1


_SUMMARY = """kagglekit_nb.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-01-01_10:00:00
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 102)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 102
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_10:00:00
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 101)
  error_file: /tmp/error.json
  traceback : Traceback (most recent call last):
    File "cv.py", line 1, in should_stop
  RuntimeError: Connection reset by peer
============================================================""".splitlines()


def test_a_failure_names_the_rank_that_died_not_the_one_it_left_waiting():
    assert distributed._root_cause(_SUMMARY) == "rank 1 was killed by SIGKILL (out of memory, or stopped from outside)"
    only_rank_0 = _SUMMARY[:3] + _SUMMARY[11:]
    assert distributed._root_cause(only_rank_0) == "rank 0 failed with RuntimeError: Connection reset by peer"
    assert distributed._root_cause(["nothing to see"]) is None


# --------------------------------------------------------------------------- two processes, end to end


def test_two_processes_fit_like_one_without_batchnorm(tmp_path):
    """The loop itself (tests/ddp_fit.py): the same steps over the same samples in one process and in two,
    so a model without BatchNorm ends with the same weights, up to the order of the gradient sums."""
    import subprocess
    import sys

    import ddp_fit

    ddp_fit.main(str(tmp_path / "one.pt"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(Path(ddp_fit.__file__)), str(tmp_path / "two.pt")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert two["steps"] == one["steps"] == ddp_fit.EPOCHS * (ddp_fit.N_TRAIN // ddp_fit.BATCH)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-5, atol=1e-6)
    for a, b in zip(one["history"], two["history"]):
        assert a["score"] == b["score"]  # the two shares of the validation set, gathered and scored once
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)  # summed over both processes
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_classification_demo(tmp_path_factory.mktemp("demo") / "digits", image_size=16)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread in this process and in each worker (OMP_NUM_THREADS, which the workers inherit:
    the test session sets it to torch's default, and two workers at two threads each on two cores run
    several times slower): a fair comparison."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    os.environ.pop("OMP_NUM_THREADS") if env is None else os.environ.update(OMP_NUM_THREADS=env)


def _cfg(data: Path, out: Path, **kwargs) -> clf.Config:
    settings = dict(DATA_DIR=str(data), OUTPUT_DIR=str(out), BUDGET="2h", SEED=0, IMG_SIZE=16, MODEL="resnet18",
                    WEIGHTS=None, EPOCHS=2, MIN_EPOCHS=1, FOLDS=2, TRAIN_FOLDS=1, BATCH_SIZE=32, NUM_WORKERS=0)
    return clf.Config(**{**settings, **kwargs})


def _train(cfg: clf.Config, echo=lambda line: None):
    run = clf.start(cfg, environ={}, echo=echo)
    comp = clf.load(cfg, run)
    return run, comp, clf.train(comp, clf.make_folds(comp, cfg, run), cfg, run)


def _submit(run, comp, result, cfg) -> None:
    path = clf.write_submission(comp, clf.predict(comp, result, cfg, run), cfg, run)
    assert clf.finish(comp, path, cfg, run).valid
    assert json.loads((run.dir / "verification.json").read_text())["valid"] is True


def _ranks(run) -> list[dict]:
    return json.loads((run.dir / distributed.WORKERS_DIR / distributed.RESULT_FILE).read_text())["ranks"]


@pytest.fixture(scope="module")
def two_processes(digits, tmp_path_factory, one_thread):
    """A two-process run of fold 0 for two epochs: (run, competition, result, config, streamed log)."""
    lines: list[str] = []
    cfg = _cfg(digits, tmp_path_factory.mktemp("two") / "run", DEVICES="cpu:2")
    run, comp, result = _train(cfg, echo=lines.append)
    return run, comp, result, cfg, lines


def test_two_processes_score_like_one_and_submit(digits, tmp_path, one_thread, two_processes):
    """BATCH_SIZE is the step's batch, split between the processes, so both runs take the same steps
    over the same samples; they differ only where two valid runs do: each process's BatchNorm sees 16
    images instead of 32, and gradients are summed in another order. Over two epochs that moves the
    score like another seed: single-process runs with seeds 0, 1, 2 score 0.87, 0.93, 0.90 here, so the
    two-process score must be within 0.08 of the one-process one (the seed spread, plus three binomial
    standard errors of an accuracy on the 719 out-of-fold images, 3 x 0.012)."""
    one_run, _, one = _train(_cfg(digits, tmp_path / "one", DEVICES=1))
    run, comp, two, cfg, lines = two_processes

    record = json.loads((run.dir / "run.json").read_text())
    assert (record["world_size"], record["backend"]) == (2, "gloo")
    assert json.loads((one_run.dir / "run.json").read_text())["world_size"] == 1
    steps = one.folds[0]["steps"]
    assert two.folds[0]["steps"] == steps and two.folds[0]["status"] == "done"
    assert [r["steps"] for r in _ranks(run)] == [{"0": steps}, {"0": steps}]  # every rank, every step
    assert any("fold 0 epoch 2/2: train_loss" in line for line in lines)  # rank 0's log, streamed
    oof = pd.read_csv(run.dir / "oof_fold0.csv", dtype={"id": str})
    val_ids = comp.train["id"][clf.make_folds(comp, cfg, run).to_numpy() == 0]
    assert sorted(oof["id"]) == sorted(val_ids)  # every validation image once: no padding duplicates
    assert abs(two.cv_score - one.cv_score) <= 0.08, (two.cv_score, one.cv_score)
    # each process scored its share of the validation set with rank 0's BatchNorm statistics: the
    # out-of-fold probabilities are those of the saved best model, predicted here in one process
    from kagglekit_nb.loop import predict

    fs = clf._setup_fold(comp, clf.make_folds(comp, cfg, run), dataclasses.replace(cfg, MODEL=run.record["model_choice"]
                         ["model"], IMG_SIZE=int(run.record["model_choice"]["img_size"]), WEIGHTS=None), run, 0)
    fs.model.load_state_dict(load_fold_model(run.dir / "checkpoints" / "fold0" / "best.ckpt")[0])
    again = predict(fs.model, fs.val_loader, device="cpu")
    assert list(oof["id"]) == list(fs.val_ids)
    np.testing.assert_allclose(oof[[f"p{c}" for c in range(again.shape[1])]].to_numpy(), again, rtol=1e-4, atol=1e-5)
    _submit(run, comp, two, cfg)


def _stop_at_second_step(lines: list[str]):
    """An echo that sends this process SIGTERM once rank 0 has taken its first step (the pre-flight line)."""
    def echo(line: str) -> None:
        lines.append(line)
        if "pre-flight ok" in line and not any("SIGTERM received" in seen for seen in lines):
            os.kill(os.getpid(), signal.SIGTERM)
    return echo


@pytest.fixture(scope="module")
def stopped(digits, tmp_path_factory, one_thread):
    """A two-process run stopped by SIGTERM in the middle of its only epoch: (run folder, log, steps)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    lines: list[str] = []
    run, _, result = _train(_cfg(digits, out, DEVICES="cpu:2", EPOCHS=1), echo=_stop_at_second_step(lines))
    return out, lines, result


def _copy(stopped, tmp_path) -> Path:
    return Path(shutil.copytree(stopped[0], tmp_path / "run"))


def test_a_stop_mid_epoch_stops_both_processes_at_one_step_with_one_checkpoint(stopped, digits, tmp_path):
    out, lines, result = stopped
    assert any("SIGTERM received: passed to the training workers" in line for line in lines)
    fold = result.folds[0]
    assert fold["status"] == "partial" and fold["stop_reason"].startswith("signal: SIGTERM")
    n = fold["steps"]
    plan = json.loads((out / "run.json").read_text())["plan"]["fold0"]
    assert 0 < n < plan["steps_per_epoch"]  # mid-epoch
    ranks = json.loads((out / "workers" / "result.json").read_text())["ranks"]
    assert [r["steps"] for r in ranks] == [{"0": n}, {"0": n}]  # both ranks stopped at the same step
    assert sorted(p.name for p in (out / "checkpoints" / "fold0").iterdir()) == [f"step-{n:09d}.ckpt"]

    cfg = _cfg(digits, _copy(stopped, tmp_path), DEVICES="cpu:2", EPOCHS=1)
    run = clf.start(cfg, environ={}, echo=lambda line: None)
    comp = clf.load(cfg, run)
    _submit(run, comp, result, cfg)  # what the notebook's next cells do: predict, write, verify


def test_two_processes_resume_in_one_and_say_the_numerics_changed(stopped, digits, tmp_path, one_thread):
    n = stopped[2].folds[0]["steps"]
    lines: list[str] = []
    cfg = _cfg(digits, _copy(stopped, tmp_path), DEVICES=1, EPOCHS=1)
    run, comp, result = _train(cfg, echo=lines.append)
    assert any("written by 2 processes and training goes on with 1 process" in line
               and "no longer bitwise-identical" in line for line in lines)
    record = json.loads((run.dir / "run.json").read_text())
    assert record["world_size"] == 1
    assert [(c["fold"], c["step"], c["saved"], c["now"]) for c in record["process_count_changes"]] == [(0, n, 2, 1)]
    resumed = record["resumed_from"][0]
    assert (resumed["step"], resumed["position"]) == (n, n * 32)  # the same place in the same data order
    assert result.folds[0]["status"] == "done"
    assert result.folds[0]["steps"] == record["plan"]["fold0"]["steps_per_epoch"]  # the epoch's steps, once each
    _submit(run, comp, result, cfg)


def _pid_of_rank(rank: int, spec: Path) -> int:
    """The process id of the worker of `rank` training from `spec` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kagglekit_nb.worker" in command and str(spec).encode() in command and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise LookupError(f"no worker of rank {rank} for {spec}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc")
def test_a_killed_rank_ends_the_run_with_its_name_and_the_rerun_ends_byte_identical(two_processes, digits,
                                                                                     tmp_path, one_thread):
    """SIGKILL to rank 1 after the first epoch: the cell fails naming it, the checkpoints stay, and the
    rerun resumes from the epoch's checkpoint and ends with the very predictions of an uninterrupted run."""
    cfg = _cfg(digits, tmp_path / "run", DEVICES="cpu:2")
    spec = tmp_path / "run" / distributed.WORKERS_DIR / distributed.SPEC_FILE
    killed: list[int] = []

    def echo(line: str) -> None:
        if "fold 0 epoch 1/2: train_loss" in line and not killed:
            killed.append(_pid_of_rank(1, spec))
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(distributed.WorkersFailed, match=r"rank 1 was killed by SIGKILL .* The checkpoints in "
                                                         r".* are kept: run this cell .* again"):
        _train(cfg, echo=echo)
    lines: list[str] = []
    run, comp, result = _train(cfg, echo=lines.append)
    assert any("fold 0: resumed from step-" in line for line in lines)
    assert result.folds[0]["status"] == "done"
    straight = two_processes[0].dir
    assert (run.dir / "oof_fold0.csv").read_bytes() == (straight / "oof_fold0.csv").read_bytes()
    mine, theirs = (load_fold_model(d / "checkpoints" / "fold0" / "best.ckpt")[0] for d in (run.dir, straight))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
