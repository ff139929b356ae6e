"""Per-step cost of training in two CPU processes (DDP over gloo, started by torchrun) against one process,
on the same global batch.

One process trains at batch B; two processes train at B/2 each, so every optimizer step covers the same
samples (`kagglekit_nb.loaders.make_loader`). Both go through the kit's `fit` with the same model, data
and seed, one intra-op thread per process. The cost of a step is read between optimizer steps (the
`on_step` hook), after a warm-up epoch, so neither process start-up nor evaluation is counted. The two
sides alternate, several times.

    python benchmarks/ddp_overhead.py [--repeats 4] [--epochs 2] [--batch-size 32] [--size 16] [--model resnet18|cnn]

Prints each repeat's milliseconds per step, the medians, and as its last line `ratio X`: the median
per-step time of two processes over that of one. On a machine with at least two free cores a ratio
below 1 means the second process pays for its gradient all-reduce; on two GPUs the same code runs
with NCCL, where the all-reduce overlaps the backward pass.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from kagglekit_nb import distributed
from kagglekit_nb.loaders import make_loader
from kagglekit_nb.loop import fit
from kagglekit_nb.metrics import get_metric
from kagglekit_nb.options import LoopOptions
from kagglekit_nb.repro import seed_everything

SEED = 0


def _data(n_train: int, n_val: int, size: int):
    """Handwritten digits (scikit-learn's, real images) upsampled to size x size, repeated to n_train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    idx = torch.arange(n_train + n_val) % len(x)
    tr, va = idx[:n_train], idx[n_train:]
    return torch.utils.data.TensorDataset(x[tr], y[tr]), torch.utils.data.TensorDataset(x[va], y[va])


def _model(name: str) -> nn.Module:
    if name == "resnet18":
        import timm

        return timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def step_ms(args) -> float:
    """Milliseconds per optimizer step of `fit` in this process (one of several under torchrun)."""
    torch.set_num_threads(1)
    seed_everything(SEED)
    model = _model(args.model)
    train_ds, val_ds = _data(args.n_train, args.n_val, args.size)
    train = make_loader(train_ds, args.batch_size // distributed.world_size(), train=True, seed=SEED, num_workers=0)
    val = make_loader(val_ds, args.batch_size * 2, train=False, num_workers=0)
    stamps: list[float] = []
    fit(distributed.wrap(model, torch.device("cpu")), train, val,
        optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3), loss_fn=nn.CrossEntropyLoss(),
        epochs=args.epochs + 1, device="cpu", metric=get_metric("accuracy"), log=None,
        options=LoopOptions(preflight=False, learning_check=False),
        on_step=lambda epoch, n: stamps.append(time.perf_counter()) if epoch > 0 else None)  # epoch 0 warms up
    return 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def _two_processes(args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ms.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   __file__, "--worker", str(out), *_passed(args)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
        return json.loads(out.read_text())["ms"]


def _passed(args) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "repeats")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4, help="even: each side runs first equally often")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch of one step (each of 2 takes half)")
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--model", choices=("resnet18", "cnn"), default="resnet18")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:  # one of the two processes torchrun started
        distributed.join("gloo")
        try:
            ms = step_ms(args)
            if distributed.is_main():
                Path(args.worker).write_text(json.dumps({"ms": ms}))
        finally:
            distributed.leave()
        return
    if args.batch_size % 2:
        p.error(f"--batch-size {args.batch_size} must be even: the two processes take half each.")
    print(f"{args.model} on {args.n_train} digits at {args.size}px, global batch {args.batch_size} "
          f"({args.batch_size // 2} per process), {args.epochs} timed epochs, 1 thread per process, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")
    one, two = [], []
    for i in range(args.repeats):
        sides = ("one", "two") if i % 2 == 0 else ("two", "one")
        for side in sides:
            (one if side == "one" else two).append(step_ms(args) if side == "one" else _two_processes(args))
        print(f"repeat {i + 1}: one process {one[-1]:.1f} ms/step, two processes {two[-1]:.1f} ms/step")
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"median: one process {m1:.1f} ms/step, two processes {m2:.1f} ms/step")
    print(f"ratio {m2 / m1:.3f}")


if __name__ == "__main__":
    main()
