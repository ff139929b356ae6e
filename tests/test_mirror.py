"""Tests for kagglekit_nb.mirror: the copy of the checkpoints on a second file system (Google Drive on
Colab). Temp folders stand in for the local disk and the Drive mount; each test builds its Mirror."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from kagglekit_nb import checkpoint as ckpt
from kagglekit_nb.mirror import Mirror, copy_atomic


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64,), value)}, "epoch": int(value)}


@pytest.fixture
def mirror(tmp_path) -> Mirror:
    return Mirror(local=tmp_path / "local", remote=tmp_path / "drive" / "checkpoints")


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_each_save_with_the_mirror_is_copied_and_pruned_there(mirror):
    local, remote = mirror.local / "fold0", mirror.remote / "fold0"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(_state(step), local, step=step, keep=2, best=step == 1, mirror=mirror, log=None)
    assert _names(remote) == _names(local) == ["best.ckpt", "step-000000002.ckpt", "step-000000003.ckpt"]
    for name in _names(remote):
        assert (remote / name).read_bytes() == (local / name).read_bytes()
    assert ckpt.load_checkpoint(remote / ckpt.BEST_FILE)["epoch"] == 1


def test_only_the_mirror_passed_in_is_written(mirror, tmp_path):
    other = Mirror(local=mirror.local, remote=tmp_path / "elsewhere")
    ckpt.save_checkpoint(_state(1), mirror.local / "fold0", step=1, mirror=mirror, log=None)
    ckpt.save_checkpoint(_state(2), mirror.local / "fold0", step=2, keep=5, log=None)  # no mirror: local only
    assert _names(mirror.remote / "fold0") == ["step-000000001.ckpt"]
    assert not other.remote.exists()  # no process-wide registry: a Mirror acts only where it is given


def test_a_folder_outside_local_is_not_mirrored(mirror, tmp_path):
    outside = tmp_path / "scratch"
    ckpt.save_checkpoint(_state(1), outside, step=1, mirror=mirror, log=None)
    assert mirror.remote_of(outside) is None and mirror.sync(outside, log=None) == []
    assert mirror.remote_of(mirror.local / "fold3") == mirror.remote / "fold3"
    assert not mirror.remote.exists()


def test_the_remote_copy_is_written_under_a_temp_name_fsynced_then_renamed(mirror, monkeypatch):
    local, remote = mirror.local / "fold0", mirror.remote / "fold0"
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    ckpt.save_checkpoint(_state(1), local, step=1, mirror=mirror, log=None)
    final = str(remote / "step-000000001.ckpt")
    (rename,) = [e for e in events if e[0] == "replace" and e[2] == final]
    temp = Path(rename[1])
    assert temp.parent == remote and temp.name.startswith(".step-000000001.ckpt.") and temp.name.endswith(".tmp")
    assert ("fsync", str(temp)) in events[:events.index(rename)]
    assert ("fsync", str(remote)) in events[events.index(rename):]  # the rename is made durable too
    local_rename = [e for e in events if e[0] == "replace" and e[2] == str(local / "step-000000001.ckpt")]
    assert events.index(local_rename[0]) < events.index(rename)  # the local save is durable first


def test_a_failed_copy_leaves_the_remote_as_it_was_and_the_next_save_catches_up(mirror, monkeypatch):
    local, remote = mirror.local / "fold0", mirror.remote / "fold0"
    ckpt.save_checkpoint(_state(1), local, step=1, mirror=mirror, log=None)
    before = (remote / "step-000000001.ckpt").read_bytes()

    def broken_copy(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    messages: list[str] = []
    saved = ckpt.save_checkpoint(_state(2), local, step=2, keep=1, mirror=mirror, log=messages.append)
    assert saved.is_file()  # the local save stands
    (warning,) = [m for m in messages if "could not be copied" in m]
    assert warning.startswith("WARNING: step-000000002.ckpt") and str(remote) in warning
    assert "No space left on device" in warning and "next save tries the copy again" in warning
    assert _names(remote) == ["step-000000001.ckpt"]  # no torn file, no temp file
    assert (remote / "step-000000001.ckpt").read_bytes() == before
    monkeypatch.undo()
    ckpt.save_checkpoint(_state(3), local, step=3, keep=1, mirror=mirror, log=None)
    assert _names(remote) == ["step-000000003.ckpt"]


def test_temps_left_on_the_remote_by_an_interrupted_copy_are_removed(mirror):
    remote = mirror.remote / "fold0"
    remote.mkdir(parents=True)
    stale = [remote / ".step-000000004.ckpt.k2j_x9ab.tmp", remote / ".best.ckpt.12345.tmp"]
    for p in stale:
        p.write_bytes(b"half a copy")
    (remote / "notes.txt").write_text("kept")
    messages: list[str] = []
    ckpt.save_checkpoint(_state(5), mirror.local / "fold0", step=5, mirror=mirror, log=messages.append)
    assert _names(remote) == ["notes.txt", "step-000000005.ckpt"]
    assert sum("interrupted copy" in m for m in messages) == 2


def test_restore_keeps_local_files_and_copies_only_what_is_missing(tmp_path):
    remote, local = tmp_path / "remote", tmp_path / "local"
    ckpt.save_checkpoint(_state(1), remote / "fold0", step=1, log=None)
    ckpt.save_checkpoint(_state(2), remote / "fold1", step=2, best=True, log=None)
    ckpt.save_checkpoint(_state(7), local / "fold0", step=1, log=None)  # this runtime's own, newer copy
    (remote / "fold1" / "notes.txt").write_text("not a checkpoint")
    messages: list[str] = []
    restored = Mirror(local=local, remote=remote).restore(log=messages.append)
    assert restored == [local / "fold1" / "best.ckpt", local / "fold1" / "step-000000002.ckpt"]
    assert ckpt.load_latest(local / "fold0", log=None).state["epoch"] == 7
    assert ckpt.load_latest(local / "fold1", log=None).step == 2
    assert not (local / "fold1" / "notes.txt").exists()
    assert messages == [f"copied 2 checkpoint file(s) from {remote} to {local}"]
    assert Mirror(local=local, remote=tmp_path / "no-drive-yet").restore(log=None) == []


def test_copy_atomic_never_leaves_a_partial_file(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")

    def broken_copy(fin, fout, length=0):
        fout.write(fin.read(10))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="Input/output error"):
        copy_atomic(src, dst)
    assert dst.read_bytes() == b"old" and _names(tmp_path) == ["dst", "src"]
    monkeypatch.undo()
    assert copy_atomic(src, dst) == dst
    assert dst.read_bytes() == src.read_bytes()
