"""Overhead of the kit's training loop against a plain hand-written PyTorch loop.

The same model, data, seed and features (one-cycle LR stepped per step, evaluation after every
epoch, best weights kept) are trained by `kagglekit_nb.fit` with its default options (pre-flight
check, NaN guard, learning check, watchdog) and by a plain loop, alternately, several times. Both
must end with bit-identical weights: the kit's checks change nothing that training computes.

    python benchmarks/loop_overhead.py [--repeats 12] [--epochs 5] [--model cnn|resnet18] [--threads 1]

Prints each repeat's wall (and CPU) times, the medians, and as its last line `ratio X`: the median
wall time of the kit over that of the plain loop. One intra-op thread by default, so that other
processes on a shared machine stall neither side at thread barriers; kit and plain alternate which
runs first.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from kagglekit_nb.loaders import make_loader
from kagglekit_nb.loop import fit
from kagglekit_nb.metrics import get_metric
from kagglekit_nb.repro import seed_everything

SEED = 0
LR = 3e-3


def _data(n_train: int, n_val: int, size: int):
    """Handwritten digits (scikit-learn's, real images) upsampled to size x size, repeated to n_train."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    idx = torch.arange(n_train + n_val) % len(x)
    tr, va = idx[:n_train], idx[n_train:]
    return (torch.utils.data.TensorDataset(x[tr], y[tr]), torch.utils.data.TensorDataset(x[va], y[va]))


def _model(name: str) -> nn.Module:
    if name == "resnet18":
        import timm

        return timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                         nn.MaxPool2d(2), *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def _setup(args, train_ds, val_ds):
    seed_everything(SEED)
    model = _model(args.model)
    train = make_loader(train_ds, args.batch_size, train=True, seed=SEED, num_workers=0)
    val = make_loader(val_ds, args.batch_size * 2, train=False, num_workers=0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=args.epochs * len(train), pct_start=0.2)
    return model, train, val, opt, sched


def run_kit(args, train_ds, val_ds) -> tuple[float, float, dict[str, torch.Tensor]]:
    model, train, val, opt, sched = _setup(args, train_ds, val_ds)
    messages: list[str] = []
    t0, c0 = time.perf_counter(), time.process_time()
    fit(model, train, val, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), epochs=args.epochs, device="cpu",
        metric=get_metric("accuracy"), scheduler=sched, log=messages.append)
    return time.perf_counter() - t0, time.process_time() - c0, model.state_dict()


def run_plain(args, train_ds, val_ds) -> tuple[float, float, dict[str, torch.Tensor]]:
    model, train, val, opt, sched = _setup(args, train_ds, val_ds)
    loss_fn = nn.CrossEntropyLoss()
    t0, c0 = time.perf_counter(), time.process_time()
    best, best_state, best_probs, history = -1.0, None, None, []
    for epoch in range(args.epochs):
        train.sampler.set_epoch(epoch)  # the usual call for a distributed/seeded sampler
        model.train()
        total, count = torch.zeros(()), 0
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(y)
            count += len(y)
        model.eval()
        probs, targets, val_loss = [], [], torch.zeros(())
        with torch.inference_mode():
            for x, y in val:
                logits = model(x)
                val_loss += loss_fn(logits, y) * len(y)
                probs.append(torch.softmax(logits, 1).numpy())
                targets.append(y.numpy())
        p, t = np.concatenate(probs), np.concatenate(targets)
        score = float((p.argmax(1) == t).mean())
        history.append({"train_loss": total.item() / count, "val_loss": val_loss.item() / len(t), "score": score})
        if score > best:  # keep the best weights and their out-of-fold probabilities
            best, best_probs = score, p
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    assert best_state is not None and best_probs is not None and len(history) == args.epochs
    return time.perf_counter() - t0, time.process_time() - c0, model.state_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=12, help="even: each side runs first equally often")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=8, help="image side in pixels (the digits are 8x8)")
    p.add_argument("--model", choices=("cnn", "resnet18"), default="cnn")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_ds, val_ds = _data(args.n_train, args.n_val, args.size)
    print(f"{args.model} on {args.n_train} train / {args.n_val} val digits at {args.size}px, batch {args.batch_size}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads, torch {torch.__version__}")
    warm = argparse.Namespace(**{**vars(args), "epochs": 1})
    run_kit(warm, train_ds, val_ds)
    run_plain(warm, train_ds, val_ds)
    kit_s, plain_s, kit_cpu, plain_cpu = [], [], [], []
    for i in range(args.repeats):
        order = (run_kit, run_plain) if i % 2 == 0 else (run_plain, run_kit)
        out = {f: f(args, train_ds, val_ds) for f in order}
        (tk, ck, wk), (tp, cp, wp) = out[run_kit], out[run_plain]
        identical = wk.keys() == wp.keys() and all(torch.equal(wk[k], wp[k]) for k in wk)
        if not identical:
            raise SystemExit(f"repeat {i + 1}: the kit's weights differ from the plain loop's")
        kit_s.append(tk)
        plain_s.append(tp)
        kit_cpu.append(ck)
        plain_cpu.append(cp)
        print(f"repeat {i + 1}: kit {tk:7.3f}s  plain {tp:7.3f}s  wall ratio {tk / tp:.3f}  "
              f"(cpu {ck:.3f}s / {cp:.3f}s = {ck / cp:.3f})  identical weights: yes")
    mk, mp = statistics.median(kit_s), statistics.median(plain_s)
    ratios = np.array(kit_s) / np.array(plain_s)
    print(f"median wall: kit {mk:.3f}s  plain {mp:.3f}s; per-repeat wall ratios "
          f"{ratios.min():.3f}..{ratios.max():.3f}, median {np.median(ratios):.3f}; "
          f"median cpu ratio {statistics.median(kit_cpu) / statistics.median(plain_cpu):.3f}")
    print(f"ratio {mk / mp:.3f}")


if __name__ == "__main__":
    main()
