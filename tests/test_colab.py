"""Colab with Google Drive: the run folder lives on Drive, checkpoints are saved on the local disk and
copied atomically to Drive after each save, and a new runtime (empty local disk) resumes from Drive.

A fake `google.colab` module and a fake notebook kernel stand in for Colab; temp folders stand in for
/content (local disk) and /content/drive (the mount).
"""
from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from kagglekit_nb import checkpoint as ckpt
from kagglekit_nb.run import start_run

COLAB = {"COLAB_RELEASE_TAG": "release-colab_20240101-060000_RC00"}


@pytest.fixture(autouse=True)
def _no_mirror_left_behind():
    yield
    ckpt.clear_mirror()


@pytest.fixture
def colab(monkeypatch, tmp_path):
    """A Colab runtime: `google.colab.drive.mount` creates MyDrive under the mount point; a kernel front end."""
    mounts: list[str] = []

    def mount(path: str) -> None:
        mounts.append(path)
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    drive = types.ModuleType("google.colab.drive")
    drive.mount = mount
    colab_module = types.ModuleType("google.colab")
    colab_module.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab_module)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    return types.SimpleNamespace(mounts=mounts, drive=tmp_path / "drive", content=tmp_path / "content")


def _start(colab, content: Path | None = None, **kwargs):
    return start_run({"MODEL": "tiny"}, run_name="digits", output_dir=None, budget="10m", seed=0, environ=COLAB,
                     echo=lambda m: None, drive_root=colab.drive, local_disk=content or colab.content, **kwargs)


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64,), value)}, "epoch": int(value)}


def test_the_run_is_on_drive_and_its_checkpoints_on_the_local_disk(colab):
    run = _start(colab)
    assert colab.mounts == [str(colab.drive)]
    assert run.dir == (colab.drive / "MyDrive" / "kagglekit" / "digits").resolve()
    assert (run.dir / "run.json").is_file()
    assert run.checkpoints.is_relative_to(colab.content.resolve())
    assert run.checkpoint_mirror == run.dir / "checkpoints"
    assert run.record["checkpoint_mirror"]["drive"] == str(run.dir / "checkpoints")


def test_each_save_is_copied_to_drive_and_pruned_there_too(colab):
    run = _start(colab)
    local = run.checkpoints / "fold0"
    remote = run.dir / "checkpoints" / "fold0"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(_state(step), local, step=step, keep=2, best=step != 2, log=None)
    names = sorted(p.name for p in remote.iterdir())
    assert names == ["best.ckpt", "step-000000002.ckpt", "step-000000003.ckpt"]  # no temp files either
    for name in names:
        assert (remote / name).read_bytes() == (local / name).read_bytes()
    assert ckpt.load_latest(remote, log=None).state["epoch"] == 3
    assert ckpt.load_checkpoint(remote / ckpt.BEST_FILE)["epoch"] == 3  # best moved on: Drive's copy too


def test_the_drive_copy_is_written_under_a_temp_name_fsynced_then_renamed(colab, monkeypatch):
    run = _start(colab)
    local = run.checkpoints / "fold0"
    remote = run.dir / "checkpoints" / "fold0"
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    ckpt.save_checkpoint(_state(1), local, step=1, log=None)
    final = str(remote / "step-000000001.ckpt")
    (rename,) = [e for e in events if e[0] == "replace" and e[2] == final]
    temp = Path(rename[1])
    assert temp.parent == remote and temp.name.startswith(".step-000000001.ckpt.") and temp.name.endswith(".tmp")
    assert ("fsync", str(temp)) in events[:events.index(rename)]
    local_rename = [e for e in events if e[0] == "replace" and e[2] == str(local / "step-000000001.ckpt")]
    assert events.index(local_rename[0]) < events.index(rename)  # the local save is durable first


def test_a_failed_copy_leaves_drive_as_it_was_and_the_next_save_catches_up(colab, monkeypatch):
    run = _start(colab)
    local = run.checkpoints / "fold0"
    remote = run.dir / "checkpoints" / "fold0"
    ckpt.save_checkpoint(_state(1), local, step=1, log=None)
    before = (remote / "step-000000001.ckpt").read_bytes()

    def broken_copy(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    messages: list[str] = []
    saved = ckpt.save_checkpoint(_state(2), local, step=2, keep=1, log=messages.append)
    assert saved.is_file()  # the local save stands
    assert any("could not be copied" in m and "next save tries the copy again" in m for m in messages)
    assert sorted(p.name for p in remote.iterdir()) == ["step-000000001.ckpt"]  # no torn file, no temp file
    assert (remote / "step-000000001.ckpt").read_bytes() == before
    monkeypatch.undo()
    ckpt.save_checkpoint(_state(3), local, step=3, keep=1, log=None)
    assert sorted(p.name for p in remote.iterdir()) == ["step-000000003.ckpt"]


def test_a_new_runtime_resumes_from_drive(colab):
    run = _start(colab)
    ckpt.save_checkpoint(_state(1), run.checkpoints / "fold0", step=5, best=True, log=None)
    ckpt.save_checkpoint(_state(2), run.checkpoints / "fold0", step=9, log=None)
    ckpt.clear_mirror()
    fresh_disk = colab.content.parent / "content-new-vm"  # a new runtime: /content is empty
    again = _start(colab, content=fresh_disk)
    assert again.previous is not None and again.record["sessions"] == 2
    assert again.checkpoints.is_relative_to(fresh_disk.resolve())
    found = ckpt.load_latest(again.checkpoints / "fold0", log=None)
    assert (found.step, found.state["epoch"]) == (9, 2)
    assert ckpt.read_meta(again.checkpoints / "fold0" / ckpt.BEST_FILE) == {}
    # and the new runtime's saves keep going to Drive
    ckpt.save_checkpoint(_state(3), again.checkpoints / "fold0", step=12, log=None)
    assert (run.dir / "checkpoints" / "fold0" / "step-000000012.ckpt").is_file()


def test_restore_keeps_local_files_and_copies_only_what_is_missing(tmp_path):
    remote, local = tmp_path / "remote", tmp_path / "local"
    ckpt.save_checkpoint(_state(1), remote / "fold0", step=1, log=None)
    ckpt.save_checkpoint(_state(2), remote / "fold1", step=2, log=None)
    ckpt.save_checkpoint(_state(7), local / "fold0", step=1, log=None)  # this runtime's own, newer copy
    (remote / "fold1" / "notes.txt").write_text("not a checkpoint")
    restored = ckpt.restore_mirror(remote, local, log=None)
    assert restored == [local / "fold1" / "step-000000002.ckpt"]
    assert ckpt.load_latest(local / "fold0", log=None).state["epoch"] == 7
    assert not (local / "fold1" / "notes.txt").exists()


def test_copy_atomic_never_leaves_a_partial_file(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")

    def broken_copy(fin, fout, length=0):
        fout.write(fin.read(10))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError):
        ckpt.copy_atomic(src, dst)
    assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]
    monkeypatch.undo()
    ckpt.copy_atomic(src, dst)
    assert dst.read_bytes() == src.read_bytes()


def test_headless_colab_falls_back_to_a_local_run_without_a_mirror(colab, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    with pytest.warns(UserWarning, match="will NOT survive"):
        run = _start(colab)
    assert colab.mounts == []
    assert run.dir == (colab.content / "runs" / "digits").resolve()
    assert run.checkpoint_mirror is None and run.checkpoints == run.dir / "checkpoints"
    assert ckpt.mirror_of(run.checkpoints) is None


def test_elsewhere_checkpoints_stay_in_the_run_folder(tmp_path):
    run = start_run({}, run_name="r", output_dir=tmp_path / "out", budget="10m", seed=0, environ={},
                    echo=lambda m: None)
    assert run.checkpoints == (tmp_path / "out" / "checkpoints").resolve()
    assert run.checkpoint_mirror is None and "checkpoint_mirror" not in run.record
