"""Colab with Google Drive: the run folder lives on Drive, checkpoints are saved on the local disk and
copied atomically to Drive after each save (`run.mirror`), and a new runtime (empty local disk) resumes
from Drive. The mirror on its own: test_mirror.py.

A fake `google.colab` module and a fake notebook kernel stand in for Colab; temp folders stand in for
/content (local disk) and /content/drive (the mount).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from kagglekit_nb import checkpoint as ckpt
from kagglekit_nb.run import start_run

COLAB = {"COLAB_RELEASE_TAG": "release-colab_20240101-060000_RC00"}


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
    assert run.checkpoint_mirror == run.mirror.remote == run.dir / "checkpoints"
    assert run.mirror.local == run.checkpoints
    assert run.record["checkpoint_mirror"]["drive"] == str(run.dir / "checkpoints")


def test_each_save_is_copied_to_drive_and_pruned_there_too(colab):
    run = _start(colab)
    local = run.checkpoints / "fold0"
    remote = run.dir / "checkpoints" / "fold0"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(_state(step), local, step=step, keep=2, best=step != 2, mirror=run.mirror, log=None)
    names = sorted(p.name for p in remote.iterdir())
    assert names == ["best.ckpt", "step-000000002.ckpt", "step-000000003.ckpt"]  # no temp files either
    for name in names:
        assert (remote / name).read_bytes() == (local / name).read_bytes()
    assert ckpt.load_latest(remote, log=None).state["epoch"] == 3
    assert ckpt.load_checkpoint(remote / ckpt.BEST_FILE)["epoch"] == 3  # best moved on: Drive's copy too


def test_a_new_runtime_resumes_from_drive(colab):
    run = _start(colab)
    ckpt.save_checkpoint(_state(1), run.checkpoints / "fold0", step=5, best=True, mirror=run.mirror, log=None)
    ckpt.save_checkpoint(_state(2), run.checkpoints / "fold0", step=9, mirror=run.mirror, log=None)
    fresh_disk = colab.content.parent / "content-new-vm"  # a new runtime: /content is empty
    again = _start(colab, content=fresh_disk)
    assert again.previous is not None and again.record["sessions"] == 2
    assert again.checkpoints.is_relative_to(fresh_disk.resolve())
    found = ckpt.load_latest(again.checkpoints / "fold0", log=None)
    assert (found.step, found.state["epoch"]) == (9, 2)
    assert ckpt.read_meta(again.checkpoints / "fold0" / ckpt.BEST_FILE) == {}
    # and the new runtime's saves keep going to Drive
    assert again.mirror != run.mirror and again.mirror.remote == run.mirror.remote
    ckpt.save_checkpoint(_state(3), again.checkpoints / "fold0", step=12, mirror=again.mirror, log=None)
    assert (run.dir / "checkpoints" / "fold0" / "step-000000012.ckpt").is_file()


def test_headless_colab_falls_back_to_a_local_run_without_a_mirror(colab, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    with pytest.warns(UserWarning, match="will NOT survive"):
        run = _start(colab)
    assert colab.mounts == []
    assert run.dir == (colab.content / "runs" / "digits").resolve()
    assert run.mirror is None and run.checkpoint_mirror is None and run.checkpoints == run.dir / "checkpoints"


def test_elsewhere_checkpoints_stay_in_the_run_folder(tmp_path):
    run = start_run({}, run_name="r", output_dir=tmp_path / "out", budget="10m", seed=0, environ={},
                    echo=lambda m: None)
    assert run.checkpoints == (tmp_path / "out" / "checkpoints").resolve()
    assert run.mirror is None and run.checkpoint_mirror is None and "checkpoint_mirror" not in run.record
