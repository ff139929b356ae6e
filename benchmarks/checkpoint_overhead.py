"""Checkpoint overhead: the kit's atomic full-state save vs a plain `torch.save` of the same state.

    python benchmarks/checkpoint_overhead.py [--repeats 11] [--dir PATH]

The state is what a resume needs for a ResNet-50-sized run: model, AdamW state (after one step, so
it exists), scheduler, GradScaler, sampler, RNG states, history, config, classes and normalisation
statistics. The kit's save (`save_checkpoint`: temp file, CRC32, fsync, `os.replace`, directory
fsync, keep policy) and the plain `torch.save(state, path)` write to the same folder, alternating
which goes first; before each timed save `os.sync()` runs untimed, so neither pays for the other's
write-back. Medians (and minimum, and CPU seconds: on a busy machine the wall time mostly
measures waiting for a core) are reported, then the resume time (`load_latest` + `restore_state` into a
fresh model and optimizer) beside a plain `torch.load` + `load_state_dict`, both files first
dropped from the page cache.

Pass `--dir` to measure the disk a run really writes to (e.g. a Drive mount); the default is the
system temp folder. The last line is `ratio X` (kit save / plain torch.save).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

from kagglekit_nb.checkpoint import load_latest, save_checkpoint
from kagglekit_nb.sampler import ResumableSampler
from kagglekit_nb.state import capture_state, restore_state


def _parts():
    """A ResNet-50 run after one training step: model, optimizer, scheduler, scaler, sampler."""
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10_000)
    scaler = torch.amp.GradScaler("cpu")
    return {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler,
            "sampler": ResumableSampler(100_000, seed=0)}


def _full_state(parts) -> dict:
    model, opt = parts["model"], parts["optimizer"]
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).mean()
    loss.backward()
    opt.step()
    parts["scheduler"].step()
    parts["sampler"].advance(64)
    return capture_state(
        parts, epoch=0, global_step=1, best_score=0.5,
        history=[{"epoch": 1, "train_loss": 2.3, "val_loss": 2.2, "score": 0.5}],
        config={"MODEL": "resnet50", "IMG_SIZE": 224, "BATCH_SIZE": 64, "LR": 1e-3, "SEED": 0},
        classes=[str(i) for i in range(1000)], norm={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        plan={"epochs": 12, "folds": 5},
    )


def _evict(paths) -> None:
    """Write back and drop these files from the page cache, so a load reads them from disk."""
    os.sync()
    for path in paths:
        if hasattr(os, "posix_fadvise"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _timed(fn, cpu: list[float]) -> float:
    """Wall seconds of `fn()`; its CPU seconds (all threads) go to `cpu`."""
    os.sync()  # untimed: start each save with no write-back pending from the previous one
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    cpu.append(time.process_time() - c0)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11, help="timed saves of each kind (median reported)")
    ap.add_argument("--dir", default=None, help="folder to write in (default: a new temp folder)")
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats={args.repeats} must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="kk-ckpt-bench-", dir=args.dir))
    try:
        parts = _parts()
        state = _full_state(parts)
        plain_path, ckpt_dir = root / "plain.pt", root / "checkpoints"

        def plain() -> None:
            torch.save(state, plain_path)

        def plain_fsync() -> None:  # reference only: a plain save made durable by hand
            with open(root / "plain_fsync.pt", "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        def kit(step: int) -> None:
            save_checkpoint(state, ckpt_dir, step=step, keep=2, meta={"model": "resnet50"}, log=None)

        kit(0)  # warm-up of both paths (imports, first allocation)
        plain()
        plain_s, kit_s, fsync_s = [], [], []
        plain_cpu, kit_cpu, fsync_cpu = [], [], []
        for r in range(args.repeats):
            runs = [(plain_s, plain_cpu, plain), (kit_s, kit_cpu, lambda: kit(r + 1)),
                    (fsync_s, fsync_cpu, plain_fsync)]
            for times, cpu, fn in runs if r % 2 == 0 else runs[::-1]:
                times.append(_timed(fn, cpu))

        resume_s, plain_load_s = [], []
        for _ in range(3):
            fresh = _parts()
            _evict([plain_path, *ckpt_dir.iterdir()])
            t0 = time.perf_counter()
            found = load_latest(ckpt_dir, log=None)
            restore_state(found.state, fresh, log=None)
            resume_s.append(time.perf_counter() - t0)
            fresh = _parts()
            t0 = time.perf_counter()
            loaded = torch.load(plain_path, map_location="cpu", weights_only=True)
            fresh["model"].load_state_dict(loaded["model"])
            fresh["optimizer"].load_state_dict(loaded["optimizer"])
            plain_load_s.append(time.perf_counter() - t0)

        size_mb = plain_path.stat().st_size / 1e6
        plain_med, kit_med = statistics.median(plain_s), statistics.median(kit_s)
        print(f"state: resnet50 + AdamW + OneCycleLR + GradScaler + sampler + RNG, {size_mb:.1f} MB, in {root}")
        med = statistics.median
        print(f"plain torch.save         median {plain_med:.3f} s  min {min(plain_s):.3f} s  "
              f"cpu {med(plain_cpu):.3f} s  runs {[round(t, 3) for t in plain_s]}")
        print(f"kit save_checkpoint      median {kit_med:.3f} s  min {min(kit_s):.3f} s  "
              f"cpu {med(kit_cpu):.3f} s  runs {[round(t, 3) for t in kit_s]}")
        print(f"(reference: plain torch.save + fsync, no atomic rename or checksum: "
              f"median {med(fsync_s):.3f} s  min {min(fsync_s):.3f} s  cpu {med(fsync_cpu):.3f} s)")
        print(f"resume (load_latest + restore_state)  median {statistics.median(resume_s):.3f} s; "
              f"plain torch.load + load_state_dict {statistics.median(plain_load_s):.3f} s (files read from disk)")
        print(f"ratio {kit_med / plain_med:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
