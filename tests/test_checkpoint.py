"""Tests for kagglekit_nb.checkpoint: atomic saves, newest-valid lookup, safe loading, full-state
restore, and the exact-resume property (N steps straight == k steps, kill, resume, N-k steps)."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _fakes import FakeClock
from torch import nn
from torch.utils.data import DataLoader, Dataset

import kagglekit_nb.checkpoint as ck
from kagglekit_nb.sampler import IndexSeeded, ResumableSampler


def _state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((3, 4), value), "b": torch.arange(3.0)}, "epoch": 2,
            "history": [{"loss": 0.5, "score": 0.9}], "name": "resnet18"}


def _messages():
    out: list[str] = []
    return out, out.append


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _touch(path):
    """The 'payload' of a malicious pickle: creating this file proves code ran."""
    with open(path, "w") as f:
        f.write("ran")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


# ----------------------------------------------------------------------------- save / load


def test_round_trip_names_meta_and_no_temp_files(tmp_path):
    path = ck.save_checkpoint(_state(2.0), tmp_path, step=42, meta={"model": "resnet18", "classes": ["a", "b"]},
                              log=None)
    assert path == tmp_path / ck.STEP_FILE.format(step=42) == tmp_path / "step-000000042.ckpt"
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000042.ckpt"]
    loaded = ck.load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3, 4), 2.0))
    assert loaded["history"] == [{"loss": 0.5, "score": 0.9}] and loaded["epoch"] == 2
    assert ck.read_meta(path) == {"model": "resnet18", "classes": ["a", "b"]}
    assert path.read_bytes().startswith(ck.MAGIC) and path.read_bytes().endswith(ck.END_MAGIC)


def test_large_state_round_trips_and_corruption_is_found(tmp_path):
    big = {"w": torch.arange(6_000_000, dtype=torch.float32)}  # 24 MB: several read chunks when verifying
    path = ck.save_checkpoint(big, tmp_path, step=1, log=None)
    assert torch.equal(ck.load_checkpoint(path)["w"], big["w"])
    with open(path, "r+b") as f:
        f.seek(20_000_000)
        byte = f.read(1)
        f.seek(20_000_000)
        f.write(bytes([byte[0] ^ 0x80]))
    with pytest.raises(ValueError, match="checksum mismatch"):
        ck.load_checkpoint(path)


def test_torch_record_crc_setting_is_restored(tmp_path):
    before = torch.serialization.get_crc32_options()
    ck.save_checkpoint(_state(), tmp_path, step=1, log=None)
    assert torch.serialization.get_crc32_options() == before


def test_truncated_newest_is_skipped_with_message(tmp_path):
    for step in (1, 2, 3):
        ck.save_checkpoint(_state(step), tmp_path, step=step, log=None)
    newest = tmp_path / "step-000000003.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    msgs, log = _messages()
    assert ck.find_latest(tmp_path, log=log) == tmp_path / "step-000000002.ckpt"
    assert len(msgs) == 1 and "step-000000003.ckpt" in msgs[0] and "truncated" in msgs[0]
    found = ck.load_latest(tmp_path, log=None)
    assert found.step == 2 and torch.equal(found.state["model"]["w"], torch.full((3, 4), 2.0))
    assert len(found.skipped) == 1


def test_corrupt_byte_is_detected(tmp_path):
    ck.save_checkpoint(_state(1.0), tmp_path, step=1, log=None)
    path = ck.save_checkpoint(_state(2.0), tmp_path, step=2, log=None)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the tensor data: torch.load would not notice
    path.write_bytes(bytes(data))
    msgs, log = _messages()
    assert ck.find_latest(tmp_path, log=log) == tmp_path / "step-000000001.ckpt"
    assert "checksum mismatch" in msgs[0]
    with pytest.raises(ValueError, match=r"step-000000002\.ckpt cannot be used: checksum mismatch"):
        ck.load_checkpoint(path)


@pytest.mark.parametrize("content, reason", [
    (b"this is not a checkpoint at all", "not a kagglekit checkpoint"),
    (b"", "empty"),
    (ck.MAGIC + b"\x00\x00", "truncated"),
])
def test_garbage_with_a_step_name_is_skipped(tmp_path, content, reason):
    ck.save_checkpoint(_state(), tmp_path, step=5, log=None)
    (tmp_path / "step-000000099.ckpt").write_bytes(content)
    msgs, log = _messages()
    assert ck.find_latest(tmp_path, log=log) == tmp_path / "step-000000005.ckpt"
    assert reason in msgs[0] and "step-000000099.ckpt" in msgs[0]


def test_plain_torch_file_with_a_step_name_is_skipped(tmp_path):
    torch.save(_state(), tmp_path / "step-000000007.ckpt")
    msgs, log = _messages()
    assert ck.find_latest(tmp_path, log=log) is None
    assert "plain torch.save file" in msgs[0]
    assert ck.load_latest(tmp_path, log=None) is None


def test_newest_by_step_number_not_text(tmp_path):
    ck.save_checkpoint(_state(1.0), tmp_path, step=999_999_999, keep=5, log=None)
    ck.save_checkpoint(_state(2.0), tmp_path, step=1_000_000_000, keep=5, log=None)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "step-1000000000.ckpt"  # text order puts the newest first
    assert ck.find_latest(tmp_path, log=None).name == "step-1000000000.ckpt"
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [999_999_999, 1_000_000_000]


def test_unpadded_names_are_ordered_by_number(tmp_path):
    for step in (9, 10):
        ck.save_checkpoint(_state(step), tmp_path / "a", step=step, keep=5, log=None).rename(
            tmp_path / f"step-{step}.ckpt")
    assert ck.find_latest(tmp_path, log=None).name == "step-10.ckpt"
    assert ck.load_latest(tmp_path, log=None).step == 10


def test_keep_policy_best_plus_newest(tmp_path):
    for step in range(1, 6):
        ck.save_checkpoint(_state(step), tmp_path, step=step, keep=2, best=step == 2, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "step-000000004.ckpt", "step-000000005.ckpt"]
    assert torch.equal(ck.load_checkpoint(tmp_path / "best.ckpt")["model"]["w"], torch.full((3, 4), 2.0))
    assert ck.load_latest(tmp_path, log=None).step == 5


def test_best_is_the_fallback_when_every_step_file_is_bad(tmp_path):
    ck.save_checkpoint(_state(1.0), tmp_path, step=1, best=True, keep=1, log=None)
    ck.save_checkpoint(_state(2.0), tmp_path, step=2, keep=1, log=None)
    (tmp_path / "step-000000002.ckpt").write_bytes(b"\x00" * 100)
    msgs, log = _messages()
    found = ck.load_latest(tmp_path, log=log)
    assert found.path.name == "best.ckpt" and found.step == 1
    assert "resuming from best.ckpt (step 1)" in msgs[-1]


def test_failed_save_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        ck.save_checkpoint(_state(step), tmp_path, step=step, keep=2, best=step == 1, log=None)
    before = _files(tmp_path)
    real_write = ck._CrcWriter.write

    def disk_full(self, data):  # the disk fills up part-way through the payload
        if self.size > 300:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(ck._CrcWriter, "write", disk_full)
    with pytest.raises(ck.CheckpointError) as info:
        ck.save_checkpoint(_state(4.0), tmp_path, step=4, keep=2, log=None)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "step-000000004.ckpt" in message and "No space left on device" in message
    assert "intact (newest: step-000000003.ckpt)" in message and "Free disk space" in message
    assert _files(tmp_path) == before  # nothing deleted, nothing half-written, no temp file
    monkeypatch.undo()
    ck.save_checkpoint(_state(5.0), tmp_path, step=5, keep=2, log=None)  # training goes on
    assert ck.load_latest(tmp_path, log=None).step == 5


def test_failed_fsync_keeps_previous_and_removes_temp(tmp_path, monkeypatch):
    ck.save_checkpoint(_state(1.0), tmp_path, step=1, keep=1, log=None)
    before = _files(tmp_path)

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ck.os, "fsync", broken_fsync)
    with pytest.raises(ck.CheckpointError, match="Input/output error"):
        ck.save_checkpoint(_state(2.0), tmp_path, step=2, keep=1, log=None)
    assert _files(tmp_path) == before


def test_stale_temp_files_from_killed_saves_are_removed(tmp_path):
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = tmp_path / f".step-000000003.ckpt.{dead_pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    msgs, log = _messages()
    ck.save_checkpoint(_state(), tmp_path, step=4, log=log)
    assert not stale.exists() and any("interrupted save" in m for m in msgs)


def test_newer_files_from_an_abandoned_run_are_removed_after_save(tmp_path):
    for step in (1, 2, 3):
        ck.save_checkpoint(_state(step), tmp_path, step=step, keep=5, log=None)
    msgs, log = _messages()
    ck.save_checkpoint(_state(9.0), tmp_path, step=2, keep=5, log=log)  # resumed from step 2
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [1, 2]
    assert "step-000000003.ckpt" in msgs[0]


_SAVE_FOREVER = textwrap.dedent("""
    import sys, torch
    from kagglekit_nb.checkpoint import save_checkpoint
    state, step = {"w": torch.zeros(4_000_000)}, 0
    while True:
        step += 1
        state["w"].fill_(step)
        save_checkpoint(state, sys.argv[1], step=step, keep=2, log=None)
        print(step, flush=True)
""")


def test_kill_9_while_saving_leaves_a_valid_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert proc.stdout.readline().strip(), "the saving process died early"
        time.sleep(0.02)  # most likely in the middle of the next save
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    found = ck.load_latest(tmp_path, log=None)
    assert found is not None and found.step >= 3
    assert torch.all(found.state["w"] == found.step)  # the state of exactly that step, not a mix
    ck.save_checkpoint({"w": torch.ones(1)}, tmp_path, step=found.step + 1, log=None)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the killed save's temp is gone


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="step=-1"):
        ck.save_checkpoint(_state(), tmp_path, step=-1)
    with pytest.raises(ValueError, match="keep=0"):
        ck.save_checkpoint(_state(), tmp_path, step=1, keep=0)
    with pytest.raises(ValueError, match="JSON"):
        ck.save_checkpoint(_state(), tmp_path, step=1, meta={"x": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope.ckpt")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- safe loading


def test_state_that_cannot_load_safely_is_refused_before_writing(tmp_path):
    state = {**_state(), "stats": {"mean": np.zeros(3)}}
    with pytest.raises(ValueError, match=r"state\['stats'\]\['mean'\] is a numpy.ndarray.*torch.from_numpy"):
        ck.save_checkpoint(state, tmp_path, step=1)
    with pytest.raises(ValueError, match="numpy.float64"):
        ck.save_checkpoint({"best": np.float64(0.5)}, tmp_path, step=1)
    assert list(tmp_path.iterdir()) == []


def test_plain_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2), "x": _Evil(marker)}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*weights\.pth.*run code"):
        ck.load_checkpoint(path)
    assert not marker.exists()


def test_code_inside_a_valid_checkpoint_is_refused_and_skipped(tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    ck.save_checkpoint(_state(1.0), tmp_path / "c", step=1, log=None)
    monkeypatch.setattr(ck, "_check_loadable", lambda obj, where: None)  # a crafted file, checksum and all
    evil = ck.save_checkpoint({"x": _Evil(marker)}, tmp_path / "c", step=2, log=None)
    with pytest.raises(ValueError, match=r"refusing to load .*step-000000002\.ckpt.*_touch"):
        ck.load_checkpoint(evil)
    msgs, log = _messages()
    assert ck.load_latest(tmp_path / "c", log=log).step == 1
    assert "refusing" in msgs[0]
    assert not marker.exists()


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt is not a checkpoint"):
        ck.load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(4.0)}, plain)
    assert torch.equal(ck.load_checkpoint(plain)["w"], torch.arange(4.0))
    pickle_garbage = tmp_path / "old.pt"
    pickle_garbage.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"old\.pt cannot be loaded safely \(Unsupported operand"):
        ck.load_checkpoint(pickle_garbage)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(plain.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"broken\.pt is not a readable torch file"):
        ck.load_checkpoint(broken)


def test_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "encoder.safetensors"
    save_file({"conv.weight": torch.arange(6.0).reshape(2, 3)}, path)
    assert torch.equal(ck.load_checkpoint(path)["conv.weight"], torch.arange(6.0).reshape(2, 3))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"bad\.safetensors is not a readable"):
        ck.load_checkpoint(bad)


# ----------------------------------------------------------------------------- RNG, compatibility, state


def test_rng_state_round_trips_through_weights_only():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leaves numpy with a cached gaussian, part of its state
    buf = io.BytesIO()
    torch.save(ck.pack_rng_state(), buf)
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    buf.seek(0)
    ck.unpack_rng_state(torch.load(buf, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]
    with pytest.raises(ValueError, match="RNG state is incomplete"):
        ck.unpack_rng_state({"torch": torch.get_rng_state()})


def test_check_compatible_reports_sentences():
    saved = {"model": "resnet18", "classes": ["cat", "dog"], "img_size": 224}
    assert ck.check_compatible(saved, {"model": "resnet18", "classes": ("cat", "dog"), "img_size": 224}) == []
    diffs = ck.check_compatible(saved, {"model": "resnet50", "classes": ["cat", "dog", "eel"], "img_size": 224,
                                        "in_chans": 3, "lr": 0.1})
    assert diffs == [
        "model: the checkpoint has 'resnet18', this run has 'resnet50'",
        "classes: the checkpoint has ['cat', 'dog'], this run has ['cat', 'dog', 'eel']",
        "in_chans: the checkpoint does not record it (this run: 3)",
    ]


def test_restore_is_complete_or_loud():
    model = nn.Linear(2, 2)
    state = ck.capture_state({"model": model}, epoch=1)
    with pytest.raises(ValueError, match=r"optimizer \(not in the checkpoint\).*allow_partial=True"):
        ck.restore_state(state, {"model": nn.Linear(2, 2), "optimizer": torch.optim.SGD(model.parameters(), 0.1)})
    with pytest.raises(ValueError, match=r"model \(saved, but not given to restore\)"):
        ck.restore_state(state, {})
    msgs, log = _messages()
    fresh = nn.Linear(2, 2)
    gaps = ck.restore_state(state, {"model": fresh, "optimizer": torch.optim.SGD(fresh.parameters(), 0.1)},
                            allow_partial=True, log=log)
    assert gaps == ["optimizer (not in the checkpoint)"] and "partial restore" in msgs[0]
    assert torch.equal(fresh.weight, model.weight)
    with pytest.raises(ValueError, match="could not restore .model.*size mismatch.*different setup"):
        ck.restore_state(state, {"model": nn.Linear(3, 2)})
    with pytest.raises(ValueError, match="clash"):
        ck.capture_state({"model": model}, rng=1)


# ----------------------------------------------------------------------------- cadence and signals


def test_timer_on_a_fake_clock():
    clock = FakeClock(100.0)
    timer = ck.CheckpointTimer("5m", clock=clock)
    assert timer.every_s == 300 and not timer.due() and timer.remaining() == 300
    clock.advance(299.9)
    assert not timer.due()
    clock.advance(0.1)
    assert timer.due() and timer.remaining() == 0
    timer.reset()
    assert not timer.due()
    with pytest.raises(ValueError, match="CHECKPOINT_EVERY='soon'"):
        ck.CheckpointTimer("soon")


def _wait_for(flag, timeout=2.0):
    end = time.monotonic() + timeout
    while not flag and time.monotonic() < end:
        time.sleep(0.001)


def test_sigterm_sets_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    names: list[str] = []
    with ck.install_sigterm_handler(names.append) as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(stop)
        assert stop.received == "SIGTERM" and names == ["SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_second_sigint_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with ck.install_sigterm_handler(signals=(signal.SIGTERM, signal.SIGINT)) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(stop)
            assert stop.received == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGINT) == before


# ----------------------------------------------------------------------------- exact resume


class _Noisy(Dataset):
    """A small classification set whose items are augmented with python, numpy and torch randomness."""

    def __init__(self, n: int = 48):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = torch.from_numpy(np.random.randn(6)).float() * random.random() + 0.1 * torch.rand(6)
        return self.x[i] + 0.1 * noise, self.y[i]


def _build(workers: int, init_seed: int):
    """Fresh model, optimizer, scheduler, sampler and loader, as a restarted notebook would build them."""
    random.seed(init_seed)
    np.random.seed(init_seed)
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    data = _Noisy()
    sampler = ResumableSampler(data, seed=7, with_epoch=True)
    loader = DataLoader(IndexSeeded(data, 7), batch_size=4, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(7))
    return {"model": model, "optimizer": opt, "scheduler": sched, "sampler": sampler}, loader


def _train(parts, loader, steps: int, seen: list) -> None:
    """The loop's contract in miniature: set_epoch, step, advance, stop at a step boundary."""
    model, opt, sched, sampler = parts["model"], parts["optimizer"], parts["scheduler"], parts["sampler"]
    model.train()
    done, epoch = 0, sampler.epoch
    while done < steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            sampler.advance(len(y))
            seen.append(x)
            done += 1
            if done == steps:
                return
        epoch += 1


def _next_randoms():
    return torch.rand(4), np.random.rand(4), random.random()


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume_mid_epoch(tmp_path, workers):
    n, k = 30, 17  # 12 steps per epoch: the kill lands in the middle of the second epoch
    straight, loader = _build(workers, init_seed=0)
    straight_batches: list = []
    _train(straight, loader, n, straight_batches)
    expected_randoms = _next_randoms()
    del loader

    first, loader = _build(workers, init_seed=0)
    resumed_batches: list = []
    _train(first, loader, k, resumed_batches)
    state = ck.capture_state(first, global_step=k)
    ck.save_checkpoint(state, tmp_path, step=k, meta={"model": "mlp"}, log=None)
    del first, loader, state  # the process dies here (a kill, a disconnect)

    fresh, loader = _build(workers, init_seed=12345)  # a restarted notebook: other init, other RNG state
    found = ck.load_latest(tmp_path, log=None)
    assert found.step == k and found.state["global_step"] == k
    assert ck.restore_state(found.state, fresh) == []
    assert fresh["sampler"].epoch == 1 and fresh["sampler"].position == (k - 12) * 4
    _train(fresh, loader, n - k, resumed_batches)
    got_randoms = _next_randoms()

    assert all(torch.equal(a, b) for a, b in zip(straight_batches, resumed_batches))
    for (name, a), b in zip(straight["model"].state_dict().items(), fresh["model"].state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = straight["optimizer"].state_dict(), fresh["optimizer"].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, per_param in sa["state"].items():
        for key, value in per_param.items():
            assert torch.equal(value, sb["state"][i][key]), (i, key)
    assert straight["scheduler"].state_dict() == fresh["scheduler"].state_dict()
    assert torch.equal(got_randoms[0], expected_randoms[0])
    assert np.array_equal(got_randoms[1], expected_randoms[1]) and got_randoms[2] == expected_randoms[2]


def test_training_does_not_depend_on_worker_count():
    results = []
    for workers in (0, 2):
        parts, loader = _build(workers, init_seed=0)
        _train(parts, loader, 14, [])
        results.append(parts["model"].state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
