"""A small training command for crash-consistency testing with ckpt-chaos (tests/test_chaos.py,
benchmarks/chaos.sh): one fold of `cv.train_folds` on a synthetic task, with the kit's real
checkpoint writes, then a prediction with the model `cv.fold_models` hands out.

    python tests/chaos_train.py OUT [--epochs 4] [--every 3] [--keep 1000]
    python tests/chaos_train.py OUT --glacier DEMO   # a glacier U-Net member on DEMO's GlacierHack tiles

(`kagglekit demo glacier --out DEMO --tile-size 64` writes DEMO; keep it outside OUT, so that
its writes are no crash points.)

Run it again on the same OUT and it resumes (or, when the fold is done, only predicts). It prints
`chaos: resumed from step N` (0 for a fresh start) and writes OUT/result.json: the fold's record
(best epoch and score), the test predictions (as exact float reprs) and a digest of the weights
used, so two runs agree byte for byte only when they trained and predicted identically.

The checkpoint cadence is counted in steps here (every `--every` steps), not in minutes, so that
every run saves at the same file events: ckpt-chaos numbers its crash points by them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kagglekit_nb import cv
from kagglekit_nb.cv import FoldSetup, fold_models, load_fold_model, train_folds
from kagglekit_nb.folds import FoldRegistry
from kagglekit_nb.loaders import make_loader
from kagglekit_nb.metrics import get_metric
from kagglekit_nb.run import start_run

N_TRAIN, N_VAL, N_TEST, BATCH = 96, 48, 64, 16   # 6 steps per epoch


class StepTimer:
    """A checkpoint cadence of `every` steps (the fold asks `due()` once per step)."""

    every = 3

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def due(self) -> bool:
        self.calls += 1
        return self.calls >= self.every

    def reset(self) -> None:
        self.calls = 0

    def remaining(self) -> float:
        return float(self.every - self.calls)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy classes in 6-D: the validation score moves up and down between epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] + 0.8 * torch.randn(n, generator=g) > 0).long()
    return x, y


def _setup(k: int) -> FoldSetup:
    x, y = _data(N_TRAIN, 1)
    xv, yv = _data(N_VAL, 2)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    train = make_loader(torch.utils.data.TensorDataset(x, y), BATCH, train=True, seed=100 + k, num_workers=0)
    val = make_loader(torch.utils.data.TensorDataset(xv, yv), 64, train=False, num_workers=0)
    return FoldSetup(model=model, optimizer=optimizer, train_loader=train, val_loader=val, loss_fn=F.cross_entropy,
                     val_ids=[f"v{i}" for i in range(N_VAL)], val_targets=yv.numpy(), meta={"model": "mlp", "fold": k})


def _glacier(demo: Path, run, encoder: str):
    """One fine-tune member of the glacier notebook on a small GlacierHack demo, through its own setup
    (crops, band statistics, the U-Net and its loss, per-pixel out-of-fold maps): (setup, metric, test)."""
    from kagglekit_nb.tasks.glacier import finetune, training

    cfg = finetune.Config(DATA_DIR=str(demo / "glacierhack"), ENCODER=encoder, WEIGHTS=None, FOLDS=2, HOLDOUT=0,
                          SAMPLES_PER_EPOCH=6 * 4, BATCH_SIZE=4, CROP=32, NUM_WORKERS=0, SEED=0)
    quiet, run.echo = run.echo, (lambda message: None)
    data = finetune.load(cfg, run)
    folds = finetune.make_folds(data, cfg, run)
    run.echo = quiet
    said: set = set()
    test = training.TileDataset(data, [0], training.BandStats.fit([data.read(0)], data.bands))[0][0]
    return (lambda k: training._setup(data, folds, cfg, run, k, None, said)), training.PIXEL_MCC, test[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--every", type=int, default=3, help="checkpoint every N steps")
    ap.add_argument("--keep", type=int, default=1000, help="step files kept (ckpt-chaos tracks every one)")
    ap.add_argument("--glacier", type=Path, default=None, help="a glacier demo folder: train a U-Net member on it")
    ap.add_argument("--encoder", default="resnet18", help="with --glacier: the U-Net's smp encoder")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    StepTimer.every = a.every
    cv.CheckpointTimer = StepTimer
    run = start_run({}, run_name="chaos", output_dir=a.out / "run", seed=0, environ={}, echo=print)
    setup, metric, (xt, yt) = _setup, get_metric("accuracy"), _data(N_TEST, 3)
    if a.glacier is not None:
        setup, metric, xt = _glacier(a.glacier, run, a.encoder)
    result = train_folds(run, n_folds=2, folds=[0], setup=setup, metric=metric, max_epochs=a.epochs, keep=a.keep)
    if result.resumed:
        step = result.resumed[0]["step"]
    elif 0 in result.folds and "fold0" not in result.plan:  # kept as done: nothing left to train
        step = result.folds[0]["steps"]
    else:
        step = 0
    print(f"chaos: resumed from step {step}", flush=True)
    if result.stop_reason.startswith("signal"):
        print(f"chaos: stopped ({result.stop_reason})", flush=True)
        return 143
    record = FoldRegistry(run.dir).get(0)
    [(_, path, kind)] = fold_models(run, 2)
    weights, _ = load_fold_model(path)
    model = setup(0).model
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        probs = model(xt).softmax(1)[:, 1].flatten()
    digest = hashlib.sha256(b"".join(weights[n].numpy().tobytes() for n in sorted(weights))).hexdigest()
    accuracy = float(((probs > 0.5).long() == yt).float().mean()) if a.glacier is None else float("nan")
    out = {"best_epoch": record["best_epoch"], "score": record["score"], "status": record["status"], "kind": kind,
           "test_accuracy": accuracy, "weights": digest, "probs": [repr(float(p)) for p in probs]}
    (a.out / "result.json").write_text(json.dumps(out, indent=1))
    print(f"chaos: fold 0 best epoch {record['best_epoch']} score {record['score']:.4f}, "
          f"test accuracy {out['test_accuracy']:.4f} with {path.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
