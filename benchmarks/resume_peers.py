"""Resume after a SIGKILL: the kit against two libraries that also promise an exact resume for PyTorch,
efficio (0.1.1) and ravex (0.10.1), on the same small training task.

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install -e . efficio==0.1.1 ravex==0.10.1
    /tmp/peers-venv/bin/python benchmarks/resume_peers.py [--repeats 3] [--kill-at 170] [--every 25] [--workers 0 2]

The peers go in a virtual environment of their own, never the kit's. The task: a small CNN with
dropout on generated 3x16x16 images, random flips, shifts and noise drawn in the dataset from torch's
global RNG, AdamW with a per-step OneCycleLR, a loader shuffled by a seeded generator, one torch
thread, 2 epochs of 100 steps; once loading in the training process and once with 2 persistent
DataLoader workers (what efficio's own loader tuning picks on a 2-core Linux machine). Each tool
trains it three ways, each in a fresh process: uninterrupted; killed with SIGKILL (its whole process
group, as when a session dies) right after optimizer step `--kill-at` (170: 70 steps into the
second epoch); restarted on what the killed run left, to the end. Every tool checkpoints through
its own mechanism every `--every` optimizer steps (25):

- the kit: `cv.train_folds` with a `FoldSetup`, the real resume path of its notebooks, with the
  checkpoint timer counting optimizer steps instead of minutes (as tests/chaos_train.py does);
- efficio: `Run(checkpoint_dir=..., resume=True)`, `run.prepare`, `run.loop`, `run.backward`,
  `run.step`, as its README shows; its cadence is in minutes only, so the loop calls its public
  `run.save()` every `--every` steps and its own timer is set out of reach; `optimize_data=False`,
  so that it trains on the same loader as the others;
- ravex: the `@ravex.train_loop(...)` decorator around an unchanged plain loop, with
  `checkpoint_every`, `max_steps` (its documented way to end a restarted loop at the right step)
  and `backend="torch_save"` (its default engine, moonclip, is an extra it falls back from).

Per tool it reports (1) whether the final weights of the restarted run equal those of the
uninterrupted one bit for bit (else the largest absolute difference), (2) the seconds from the
restart (process start) to the end of the first new optimizer step, median of `--repeats` restarts
from the same checkpoints, and the part of it spent importing torch and the tool, (3) the optimizer
steps done again (from the step it resumed at up to the kill), counted by a hook on the optimizer
in both processes, and the wall time of the uninterrupted run. The last line gives each peer
against the kit (peer / kit). About 2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS_PER_EPOCH, EPOCHS, BATCH = 100, 2, 16
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
N_TRAIN, N_VAL, CLASSES = STEPS_PER_EPOCH * BATCH, 256, 4
LR, SEED = 3e-3, 0
TOOLS = ("kit", "efficio", "ravex")
KILL_MARK = "kill-me"   # the child writes it at the kill step and waits for the SIGKILL
PROBE_FILE = "probe.json"
WEIGHTS_FILE = "weights.pt"


# --------------------------------------------------------------------------- the task (every tool the same)

def _images(n: int, seed: int):
    """Four classes of 3x16x16 images: a class-coloured bar at a class position, plus noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    for c in range(CLASSES):
        rows = y == c
        x[rows, c % 3, 4 * c:4 * c + 3, :] += 1.5
    return x, y


def _train_set():
    import torch

    class Augmented(torch.utils.data.Dataset):
        """Random flip, shift and noise per item, drawn from torch's global RNG."""

        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            img = self.x[i]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
            dy, dx = torch.randint(-2, 3, (2,)).tolist()
            img = torch.roll(img, (dy, dx), dims=(1, 2))
            return img + 0.1 * torch.randn_like(img), self.y[i]

    return Augmented(*_images(N_TRAIN, 1))


def _model():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(32, CLASSES))


def _loader(workers: int):
    """The peers' loader: shuffled by a seeded generator; workers, when any, persistent."""
    import torch

    return torch.utils.data.DataLoader(_train_set(), batch_size=BATCH, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, generator=torch.Generator().manual_seed(SEED))


def _optimizer(model):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=TOTAL_STEPS)


class _Probe:
    """Counts this process's optimizer steps (a post-step hook), notes when the first one ended, and
    at the kill step tells the parent to SIGKILL this process, then waits for it."""

    def __init__(self, out: Path, kill_at: int, started: float):
        self.out, self.kill_at, self.started, self.steps, self.first = out, kill_at, started, 0, None
        self.imported = time.time()

    def attach(self, optimizer) -> None:
        optimizer.register_step_post_hook(self._hook)

    def _hook(self, *_):
        self.steps += 1
        if self.first is None:
            self.first = time.time()
            self.write()
        if self.steps == self.kill_at:
            self.write()
            (self.out / KILL_MARK).touch()
            while True:
                time.sleep(1)

    def write(self) -> None:
        (self.out / PROBE_FILE).write_text(json.dumps({
            "steps": self.steps, "imported": self.imported - self.started,
            "first_step": None if self.first is None else self.first - self.started}))


# --------------------------------------------------------------------------- one process of one tool

def _kit(work: Path, probe: _Probe, every: int, workers: int):
    import torch
    import torch.nn.functional as F

    from kagglekit_nb import cv
    from kagglekit_nb.cv import FoldSetup, train_folds
    from kagglekit_nb.loaders import make_loader
    from kagglekit_nb.metrics import get_metric
    from kagglekit_nb.run import start_run

    class StepTimer:
        """Due once `every` optimizer steps (the probe's count) have finished since the last save."""

        def __init__(self, *args, **kwargs):
            self.last = probe.steps

        def due(self) -> bool:
            return probe.steps - self.last >= every

        def reset(self) -> None:
            self.last = probe.steps

        def remaining(self) -> float:
            return float(every - (probe.steps - self.last))

    built = {}

    def setup(k: int) -> FoldSetup:
        xv, yv = _images(N_VAL, 2)
        model = _model()
        opt, _ = _optimizer(model)
        probe.attach(opt)
        built["model"] = model
        train = make_loader(_train_set(), BATCH, train=True, seed=SEED, num_workers=workers)
        val = make_loader(torch.utils.data.TensorDataset(xv, yv), 128, train=False, num_workers=0)
        return FoldSetup(model=model, optimizer=opt, train_loader=train, val_loader=val, loss_fn=F.cross_entropy,
                         val_ids=list(range(N_VAL)), val_targets=yv.numpy(),
                         make_scheduler=lambda o, total: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=LR,
                                                                                             total_steps=total),
                         meta={"model": "cnn"})

    cv.CheckpointTimer = StepTimer
    run = start_run({}, run_name="peers", output_dir=work / "run", seed=SEED, environ={}, echo=lambda *_: None)
    train_folds(run, n_folds=2, folds=[0], setup=setup, metric=get_metric("accuracy"), max_epochs=EPOCHS)
    return built["model"].state_dict()


def _efficio(work: Path, probe: _Probe, every: int, workers: int):
    import efficio
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    # optimize_data=False: every tool gets the same loader. On Linux its default would give it
    # min(cores, 8) persistent workers, which is what --workers (cores) tries.
    run = efficio.Run(checkpoint_dir=str(work / "ckpt"), save_every_minutes=10**6, resume=True, verbose=False,
                      optimize_data=False)
    model = _model()
    opt, sched = _optimizer(model)
    probe.attach(opt)
    model, opt = run.prepare(model, opt, sched)
    loader = _loader(workers)
    model.train()
    for x, y in run.loop(loader, epochs=EPOCHS):
        with run.autocast():
            loss = F.cross_entropy(model(x), y)
        run.backward(loss)
        run.step()
        if run.state.step % every == 0:
            run.save()
    return model.state_dict()


def _ravex(work: Path, probe: _Probe, every: int, workers: int):
    import ravex
    import torch
    import torch.nn.functional as F

    @ravex.train_loop(checkpoint_every=every, max_steps=TOTAL_STEPS, backend="torch_save",
                      storage={"type": "local", "path": str(work / "ckpt")})
    def train():
        torch.manual_seed(SEED)
        model = _model()
        opt, sched = _optimizer(model)
        probe.attach(opt)
        loader = _loader(workers)
        model.train()
        for _ in range(EPOCHS):
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    return train()


def child(tool: str, work: Path, kill_at: int, every: int, workers: int, started: float) -> None:
    import torch

    torch.set_num_threads(1)
    {"kit": lambda: __import__("kagglekit_nb"), "efficio": lambda: __import__("efficio"),
     "ravex": lambda: __import__("ravex")}[tool]()
    probe = _Probe(work, kill_at, started)
    weights = {"kit": _kit, "efficio": _efficio, "ravex": _ravex}[tool](work, probe, every, workers)
    probe.write()
    torch.save(weights, work / WEIGHTS_FILE)


# --------------------------------------------------------------------------- the parent

def _launch(tool: str, work: Path, kill_at: int, every: int, workers: int) -> dict:
    """Run one process of `tool` in `work` (SIGKILLed at step `kill_at` when > 0); its probe and wall time."""
    (work / KILL_MARK).unlink(missing_ok=True)
    (work / PROBE_FILE).unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    log = open(work / f"log-{time.monotonic_ns()}.txt", "w")
    started = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--child", tool, "--work", str(work), "--kill-at", str(kill_at),
                             "--every", str(every), "--workers", str(workers), "--started", repr(started)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
    while proc.poll() is None:
        if kill_at and (work / KILL_MARK).exists():
            # The whole process group, DataLoader workers included, as when a session dies. Killing
            # the trainer alone leaves its workers running for up to their 5 s parent check.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.005)
    log.close()
    wall = time.time() - started
    killed = proc.returncode == -signal.SIGKILL
    if proc.returncode != 0 and not (kill_at and killed):
        tail = Path(log.name).read_text()[-3000:]
        raise SystemExit(f"{tool}: process exited with {proc.returncode} in {work}:\n{tail}")
    probe = json.loads((work / PROBE_FILE).read_text())
    return {**probe, "wall": wall, "killed": killed}


def _compare(a: Path, b: Path) -> tuple[bool, float]:
    import torch

    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    if sorted(wa) != sorted(wb):
        return False, float("nan")
    exact = all(torch.equal(wa[k], wb[k]) for k in wa)
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    return exact, diff


def bench_tool(tool: str, root: Path, kill_at: int, every: int, repeats: int, workers: int) -> dict:
    ref, crash, saved = root / tool / "uninterrupted", root / tool / "crash", root / tool / "after-kill"
    for d in (ref, crash):
        d.mkdir(parents=True)
    straight = _launch(tool, ref, 0, every, workers)
    if straight["steps"] != TOTAL_STEPS:
        raise SystemExit(f"{tool}: the uninterrupted run took {straight['steps']} optimizer steps, not {TOTAL_STEPS}")
    killed = _launch(tool, crash, kill_at, every, workers)
    if not killed["killed"] or killed["steps"] != kill_at:
        raise SystemExit(f"{tool}: the run was not killed at step {kill_at} ({killed})")
    shutil.copytree(crash, saved)
    restarts = []
    for r in range(repeats):
        if r:
            shutil.rmtree(crash)
            shutil.copytree(saved, crash)
        resumed = _launch(tool, crash, 0, every, workers)
        exact, diff = _compare(ref / WEIGHTS_FILE, crash / WEIGHTS_FILE)
        restarts.append({**resumed, "exact": exact, "diff": diff,
                         "resumed_at": TOTAL_STEPS - resumed["steps"]})
    first = [r["first_step"] for r in restarts]
    return {"tool": tool, "restarts": restarts, "exact": all(r["exact"] for r in restarts),
            "diff": max(r["diff"] for r in restarts), "first_step": statistics.median(first),
            "first_steps": first, "imported": statistics.median(r["imported"] for r in restarts),
            "resumed_at": sorted({r["resumed_at"] for r in restarts}),
            "lost": max(kill_at - r["resumed_at"] for r in restarts), "straight_wall": straight["wall"]}


def _row(r: dict) -> str:
    exact = "bitwise" if r["exact"] else f"max|diff| {r['diff']:.3g}"
    at = "/".join(str(s) for s in r["resumed_at"])
    return (f"{r['tool']:<8} {r['workers']:>7} {exact:<20} {r['first_step']:>8.2f} s {r['imported']:>8.2f} s   "
            f"{at:>7} {r['lost']:>6}  {r['straight_wall']:>7.1f} s")


def _ratio(peer: dict, kit: dict) -> str:
    exact = "yes" if peer["exact"] else f"no ({peer['diff']:.2g})"
    lost = "n/a" if kit["lost"] == 0 else f"x{peer['lost'] / kit['lost']:.2f}"
    return (f"{peer['tool']} exact={exact}, restart-to-step x{peer['first_step'] / kit['first_step']:.2f}, "
            f"steps-lost {lost} ({peer['lost']} vs {kit['lost']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="restarts from the same checkpoints (median time)")
    ap.add_argument("--kill-at", type=int, default=170, help="SIGKILL right after this optimizer step")
    ap.add_argument("--every", type=int, default=25, help="checkpoint cadence in optimizer steps, every tool")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                    help="DataLoader worker counts to compare at, every tool (0: load in the training process)")
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    ap.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--started", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.work, a.kill_at, a.every, a.workers[0], a.started)
        return
    if not 0 < a.kill_at < TOTAL_STEPS:
        raise SystemExit(f"--kill-at={a.kill_at} must be between 1 and {TOTAL_STEPS - 1}")
    if a.every < 1 or a.repeats < 1 or min(a.workers) < 0:
        raise SystemExit(f"--every={a.every} and --repeats={a.repeats} must be at least 1, --workers={a.workers} "
                         "at least 0")
    root = Path(tempfile.mkdtemp(prefix="kk-resume-peers-"))
    try:
        results = []
        for workers in a.workers:
            for tool in a.tools:
                r = bench_tool(tool, root / f"workers{workers}", a.kill_at, a.every, a.repeats, workers)
                results.append({**r, "workers": workers})
                times = [round(t, 2) for t in r["first_steps"]]
                print(f"{tool}, {workers} workers: restarts to the first step {times} s", flush=True)
        print(f"\ntask: CNN + dropout, augmentation from torch's RNG, AdamW + per-step OneCycleLR, shuffled loader; "
              f"{EPOCHS} epochs x {STEPS_PER_EPOCH} steps; checkpoint every {a.every} steps; SIGKILL after step "
              f"{a.kill_at}; {a.repeats} restart(s) each (median time)")
        print(f"{'tool':<8} {'workers':>7} {'resumed weights':<20} {'to step 1':>10} {'imports':>10}   {'from':>7} "
              f"{'redone':>6}  {'straight':>9}")
        for r in results:
            print(_row(r))
        groups = []
        for workers in a.workers:
            rows = {r["tool"]: r for r in results if r["workers"] == workers}
            if "kit" in rows and len(rows) > 1:
                ratios = "; ".join(_ratio(r, rows["kit"]) for t, r in rows.items() if t != "kit")
                groups.append(ratios if workers == 0 else f"with {workers} workers: {ratios}")
        if groups:
            print("ratios vs kit: " + "; ".join(groups))
        if a.keep:
            print(f"work folder: {root}")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
