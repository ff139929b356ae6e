"""Every CUDA path of the kit, exercised through the kit's own code on one machine in a few minutes.

The unit tests run on the CPU; this script checks what only a GPU can show. On Kaggle: a notebook with
the GPU T4 x2 accelerator (two GPUs, so the ddp item runs) and this repository in the session, cloned or
attached as a dataset (Kaggle's image has the kit's dependencies; the checkout's package is the one
checked), then in a cell

    !python kagglekit_nb/benchmarks/gpu_check.py            # every item, a few minutes
    !python kagglekit_nb/benchmarks/gpu_check.py --quick    # fewer epochs and timed steps
    !python kagglekit_nb/benchmarks/gpu_check.py --only oom resume

Anywhere else: `python benchmarks/gpu_check.py` from a checkout. It prints one line per item,
`PASS|FAIL|SKIP <item>: <detail>` (a failure's traceback goes to stderr), then a summary line, and
exits 0 only when no item failed. Without CUDA every item is a SKIP and it exits 0 at once.

    bf16           fit(amp="bf16"): the layers compute in bfloat16, no GradScaler, the loss is finite (8.0+ GPUs)
    fp16           fit(amp="fp16") with options.make_scaler's GradScaler: float16 layers, finite loss, scale recorded
    channels_last  fit's default on CUDA: the model's weights and every batch in channels_last
    compile        fit(LoopOptions(compile=True)): torch.compile (inductor) compiles graphs, the loss is finite
    pin_memory     loaders.make_loader on CUDA: pinned batches, kept by the loader rebuilt after out-of-memory
    hardware       hardware.environment_report and distributed.plan_world in a fresh process: the GPUs read
                   through NVML (else nvidia-smi) while torch.cuda.is_initialized() stays False
    rng            state.capture_state -> checkpoint.save_checkpoint -> load_latest -> restore_state: the CUDA
                   draws (and dropout masks) after the restore are those after the capture, on every GPU
    resume         cv.train_folds in a subprocess (deterministic algorithms, CUBLAS_WORKSPACE_CONFIG) killed by
                   SIGKILL mid-fold and run again: the final weights equal an uninterrupted run's bit for bit
    oom            fit at a batch sized from torch.cuda.mem_get_info to need 3x the free memory: the kit's
                   out-of-memory policy halves the batch (doubling accumulation) and training goes on
    memory_report  the pre-flight line of fit (preflight.memory_report): peak, reserved and total GPU memory
    ddp            with 2+ GPUs: the kit's torchrun command (distributed.torchrun_command, _worker_environ) starts
                   one NCCL process per GPU, each fits a DistributedDataParallel model; weights equal on all ranks
    speed          resnet18 at 224 px, batch 64, the kit's AMP and channels_last: img/s of fit against a plain
                   hand-written loop on the same data; FAIL below 0.8 of the plain loop's speed
    data_wait      fit on make_loader's default workers (images made on the CPU per item, pinned): the share of
                   step time spent waiting for the next batch
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "kagglekit_nb").is_dir() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # a checkout runs without installing; subprocesses get the same copy

DEVICE = torch.device("cuda")
SPEED_BATCH = 64


class Skip(Exception):
    """The item cannot run on this machine; the message says why."""


class CheckFailed(Exception):
    """A check did not hold; the message says what was seen."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# --------------------------------------------------------------------------- small models and data


class _MeanPool(nn.Module):
    """The mean over height and width: its backward is deterministic on CUDA (AdaptiveAvgPool2d's is not)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def _cnn(dropout: float = 0.0) -> nn.Module:
    """A small CNN without BatchNorm (so DDP ranks, and a resumed run, can agree bit for bit)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), _MeanPool(), nn.Dropout(dropout), nn.Linear(32, 4))


def _images(n: int, seed: int, size: int = 32) -> TensorDataset:
    """Noise images with labels the CNN can learn (the signs of two channel means)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    return TensorDataset(x, (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long())


class _MadeImages(Dataset):
    """uint8 images made from their index on the CPU and scaled per item (the work of a light decode)."""

    def __init__(self, n: int, size: int = 224):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        x = torch.randint(0, 256, (3, self.size, self.size), dtype=torch.uint8, generator=g)
        return (x.float() / 255 - 0.45) / 0.225, i % 10


def _loaders(train: Dataset, val: Dataset, batch: int, device: torch.device | str | None = None):
    """make_loader's train and validation loaders, in this process (no workers)."""
    from kagglekit_nb.loaders import make_loader

    device = DEVICE if device is None else device
    return (make_loader(train, batch, train=True, device=device, num_workers=0),
            make_loader(val, 64, train=False, device=device, num_workers=0))


def _fit(model: nn.Module, loaders: tuple[DataLoader, DataLoader] | None = None, *, epochs: int = 1, **kw):
    """The kit's `fit` of `model` on the CUDA device (default: the small image task); `kw` goes to fit."""
    from kagglekit_nb.loop import fit
    from kagglekit_nb.metrics import get_metric

    model = model.to(DEVICE)
    train, val = loaders or _loaders(_images(256, 1), _images(64, 2), 32)
    kw.setdefault("log", None)
    return fit(model, train, val, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
               loss_fn=nn.CrossEntropyLoss(), epochs=epochs, device=DEVICE, metric=get_metric("accuracy"), **kw)


def _loss(result) -> float:
    loss = result.history[-1]["train_loss"]
    _check(math.isfinite(loss), f"the training loss is {loss}")
    return loss


def _child_env(**extra: str) -> dict[str, str]:
    """This environment, with this copy of the kit importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _tail(done: subprocess.CompletedProcess) -> str:
    return " | ".join((done.stdout + done.stderr).strip().splitlines()[-6:])


def _digest(state: dict) -> str:
    return hashlib.sha256(b"".join(state[k].detach().cpu().contiguous().numpy().tobytes()
                                   for k in sorted(state))).hexdigest()[:16]


# --------------------------------------------------------------------------- the items


def check_bf16(args) -> str:
    from kagglekit_nb.options import LoopOptions, amp_dtype, make_scaler

    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        raise Skip(f"compute capability {cap[0]}.{cap[1]}: the kit uses bf16 from 8.0 (A100, L4, H100) and "
                   "trains in fp16 + GradScaler here (the fp16 item)")
    _check(amp_dtype(None, "cuda", cap) == torch.bfloat16, "amp=None does not choose bf16 on this GPU")
    _check(make_scaler(LoopOptions(amp="bf16"), DEVICE) is None, "bf16 got a GradScaler")
    model, seen = _cnn(), []
    model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    result = _fit(model, options=LoopOptions(amp="bf16"), epochs=1 if args.quick else 2)
    _check(set(seen) == {torch.bfloat16}, f"the first conv computed in {sorted(map(str, set(seen)))}")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return f"{result.steps} steps in bfloat16, loss {_loss(result):.4f}; torch: native bf16 {native}"


def check_fp16(args) -> str:
    from kagglekit_nb.options import LoopOptions, make_scaler

    scaler = make_scaler(LoopOptions(amp="fp16"), DEVICE)
    _check(isinstance(scaler, torch.amp.GradScaler), f"make_scaler gave {scaler!r} for fp16")
    model, seen = _cnn(), []
    model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    result = _fit(model, options=LoopOptions(amp="fp16"), scaler=scaler, epochs=1 if args.quick else 2)
    _check(set(seen) == {torch.float16}, f"the first conv computed in {sorted(map(str, set(seen)))}")
    saved = scaler.state_dict()  # what a checkpoint keeps
    _check(saved["_growth_tracker"] > 0 or saved["scale"] < 65536.0, "fit never stepped the GradScaler")
    return (f"{result.steps} steps in float16, loss {_loss(result):.4f}, loss scale {saved['scale']:g} "
            f"(growth tracker {saved['_growth_tracker']})")


def check_channels_last(args) -> str:
    from kagglekit_nb.options import use_channels_last

    _check(use_channels_last(None, "cuda"), "channels_last=None is off on CUDA")
    model, seen = _cnn(), []
    model[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].is_contiguous(
        memory_format=torch.channels_last)))
    result = _fit(model)
    cl = torch.channels_last
    _check(model[0].weight.is_contiguous(memory_format=cl), "fit left the conv weights in NCHW")
    _check(bool(seen) and all(seen), f"{seen.count(False)} of {len(seen)} batches reached the model in NCHW")
    return f"weights and {len(seen)} batches in channels_last over {result.steps} steps, loss {_loss(result):.4f}"


def check_compile(args) -> str:
    from torch._dynamo.utils import counters

    from kagglekit_nb.options import LoopOptions

    cap = torch.cuda.get_device_capability()
    if importlib.util.find_spec("triton") is None:
        raise Skip("triton is not installed: torch.compile's inductor backend needs it on CUDA")
    if cap < (7, 0):
        raise Skip(f"compute capability {cap[0]}.{cap[1]}: triton (inductor) needs 7.0 or newer")
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    t0 = time.monotonic()
    try:
        result = _fit(_cnn(), options=LoopOptions(compile=True))
        graphs = counters["stats"]["unique_graphs"] - before
    finally:
        torch._dynamo.reset()
    _check(graphs > 0, "fit(compile=True) compiled no graph")
    return (f"LoopOptions(compile=True): {graphs} graph(s) compiled (train and eval), {result.steps} steps, "
            f"loss {_loss(result):.4f}, {time.monotonic() - t0:.0f}s with compilation")


def check_pin_memory(args) -> str:
    from kagglekit_nb.loaders import _rebuild, _to, make_loader

    data = _images(64, 1)
    loader = make_loader(data, 16, train=True, device=DEVICE, num_workers=2)
    _check(loader.pin_memory, "make_loader(device='cuda') does not pin memory")
    x, y = next(iter(loader))
    _check(x.is_pinned() and y.is_pinned(), "the batches from two workers are not in pinned memory")
    half = _rebuild(loader, batch_size=8)  # what the out-of-memory back-off trains on
    _check(half.pin_memory and next(iter(half))[0].is_pinned(), "the loader rebuilt at half the batch lost pinning")
    _check(not make_loader(data, 16, train=False, device="cpu").pin_memory, "a CPU loader pins memory")
    on_gpu = _to(x, DEVICE, True)  # non_blocking copy from pinned memory
    torch.cuda.synchronize()
    _check(torch.equal(on_gpu.cpu(), x), "the non-blocking copy to the GPU differs from the batch")
    return "train batches pinned (2 workers), also after _rebuild(batch_size=8); non-blocking copy exact"


_HARDWARE_PROBE = """
import json, torch
from kagglekit_nb import distributed, hardware
report = hardware.environment_report()
print(json.dumps({"gpus": report["gpus"], "nvml": hardware._gpu_info_nvml() is not None,
                  "visible": distributed.visible_gpus(), "processes": distributed.plan_world(None).processes,
                  "lines": len(hardware.format_report(report).splitlines()),
                  "cuda_initialized": torch.cuda.is_initialized()}))
"""


def check_hardware(args) -> str:
    done = subprocess.run([sys.executable, "-c", _HARDWARE_PROBE], env=_child_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    _check(done.returncode == 0, f"the probe failed: {_tail(done)}")
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    _check(not seen["cuda_initialized"], "reading the hardware report initialised CUDA")
    _check(bool(seen["gpus"]), "the report lists no GPU")
    count = torch.cuda.device_count()
    _check(seen["visible"] == count, f"distributed.visible_gpus() = {seen['visible']}, torch sees {count}")
    _check(seen["processes"] == max(1, count), f"DEVICES=None plans {seen['processes']} processes")
    names = ", ".join(f"{g['name']} ({g['memory_total_mib']} MiB)" for g in seen["gpus"])
    source = "NVML" if seen["nvml"] else "nvidia-smi (pynvml is not installed: the NVML path did not run)"
    return (f"{names} through {source}; CUDA not initialised; DEVICES=None plans {seen['processes']} "
            f"process(es); {seen['lines']} report lines")


def check_rng(args) -> str:
    from kagglekit_nb import checkpoint as ckpt
    from kagglekit_nb.state import capture_state, restore_state

    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    model, drop = nn.Linear(4, 4).to(DEVICE), nn.Dropout(0.5)

    def draws() -> list[torch.Tensor]:
        out = [torch.rand(1000, device=d) for d in devices]
        return out + [drop(torch.ones(1000, device=DEVICE)), torch.rand(10)]

    draws()  # move every stream off its seed
    state = capture_state({"model": model}, step=1)
    _check(len(state["rng"].get("cuda", ())) == len(devices), "the state holds no CUDA RNG state for every GPU")
    with tempfile.TemporaryDirectory() as folder:
        ckpt.save_checkpoint(state, folder, step=1, log=None)
        expected = draws()
        draws()  # the restore has to rewind past these
        found = ckpt.load_latest(folder, log=None)
        restore_state(found.state, {"model": model}, log=None)
    got = draws()
    same = [torch.equal(a, b) for a, b in zip(expected, got)]
    _check(all(same), f"draws after the restore differ from those after the capture: {same}")
    return f"CUDA RNG of {len(devices)} GPU(s) through a checkpoint file: rand and dropout draws repeat exactly"


KILL_AT, CKPT_EVERY = 21, 3  # the kill lands mid-epoch 3 (8 steps per epoch), after the checkpoint at step 18


def check_resume(args) -> str:
    def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, __file__, "--fold-worker", str(out), *extra], capture_output=True,
                              text=True, timeout=300, check=False, env=_child_env(CUBLAS_WORKSPACE_CONFIG=":4096:8"))

    with tempfile.TemporaryDirectory() as tmp:
        straight, cut = Path(tmp) / "straight", Path(tmp) / "killed"
        done = train(straight)
        _check(done.returncode == 0, f"the uninterrupted run failed: {_tail(done)}")
        killed = train(cut, "--kill-at", str(KILL_AT))
        _check(killed.returncode == -signal.SIGKILL, f"the run to kill ended with {killed.returncode}: {_tail(killed)}")
        _check(not (cut / "result.json").exists(), "the killed run finished before its kill")
        done = train(cut)
        _check(done.returncode == 0, f"the resumed run failed: {_tail(done)}")
        a, b = (json.loads((p / "result.json").read_text()) for p in (straight, cut))
    _check(0 < b["resumed_step"] < KILL_AT, f"the second run resumed from step {b['resumed_step']}")
    _check(a["steps"] == b["steps"], f"{a['steps']} steps straight, {b['steps']} killed and resumed")
    _check(a["weights"] == b["weights"], f"final weights differ: {a['weights']} straight, {b['weights']} resumed")
    return (f"SIGKILL before step {KILL_AT} of {a['steps']}, resumed from step {b['resumed_step']}: final "
            f"weights identical ({a['weights']}), AMP {a['amp']}, deterministic algorithms")


def _fold_worker(out: Path, kill_at: int | None) -> int:
    """One fold of `cv.train_folds` on CUDA in deterministic mode (the `resume` item's subprocess)."""
    from kagglekit_nb import cv, repro
    from kagglekit_nb.loaders import make_loader
    from kagglekit_nb.metrics import get_metric
    from kagglekit_nb.options import _capability, amp_dtype
    from kagglekit_nb.run import start_run

    class StepTimer:
        """A checkpoint every CKPT_EVERY steps (as tests/chaos_train.py), and the SIGKILL at step `kill_at`."""

        calls = 0

        def __init__(self, *args, **kwargs):
            self.n = 0

        def due(self) -> bool:
            StepTimer.calls += 1
            if StepTimer.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            self.n += 1
            return self.n >= CKPT_EVERY

        def reset(self) -> None:
            self.n = 0

        def remaining(self) -> float:
            return float(CKPT_EVERY - self.n)

    cv.CheckpointTimer = StepTimer
    repro.set_deterministic(True)  # start_run's seeding keeps it
    run = start_run({}, run_name="gpu_check", output_dir=out / "run", seed=0, environ={})  # CUDA when there is one
    models = {}

    def setup(k: int) -> cv.FoldSetup:
        model = models[k] = _cnn(dropout=0.3).to(run.device)
        train = make_loader(_images(256, 1), 32, train=True, seed=100 + k, device=run.device, num_workers=0)
        val_data = _images(64, 2)
        val = make_loader(val_data, 64, train=False, device=run.device, num_workers=0)
        return cv.FoldSetup(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                            train_loader=train, val_loader=val, loss_fn=nn.CrossEntropyLoss(),
                            val_ids=list(range(64)), val_targets=val_data.tensors[1].numpy(), meta={"model": "cnn"})

    result = cv.train_folds(run, n_folds=2, folds=[0], setup=setup, metric=get_metric("accuracy"), max_epochs=4)
    (out / "result.json").write_text(json.dumps({
        "weights": _digest(models[0].state_dict()), "steps": result.folds[0]["steps"],
        "resumed_step": result.resumed[0]["step"] if result.resumed else 0,
        "amp": str(amp_dtype(None, run.device.type, _capability(run.device))).removeprefix("torch.")}))
    return 0


def check_oom(args) -> str:
    from kagglekit_nb.options import LoopOptions, _autocast, amp_dtype

    dtype = amp_dtype(None, "cuda", torch.cuda.get_device_capability())  # what fit will use

    def deep(blocks: int) -> nn.Module:  # 64 channels at 256 x 256 through `blocks` convolutions
        layers = [nn.ConvTranspose2d(3, 64, 4, stride=4), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, _MeanPool(), nn.Linear(64, 4)).to(DEVICE, memory_format=torch.channels_last)

    def peak(blocks: int, batch: int = 4) -> int:
        model = deep(blocks)
        x = torch.randn(batch, 3, 64, 64, device=DEVICE).to(memory_format=torch.channels_last)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with _autocast(DEVICE, dtype):
            loss = model(x).float().mean()
        loss.backward()
        return torch.cuda.max_memory_allocated() - base

    per_block = (peak(8) - peak(4)) / (4 * 4)  # bytes per sample per block, forward + backward
    _check(per_block > 0, f"four more blocks took {per_block * 16:.0f} more bytes")
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    batch = 128
    blocks = max(1, math.ceil(3 * free / (batch * per_block)))  # batch 128 needs ~3x the free memory
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(2 * batch, 3, 64, 64, generator=g), torch.randint(0, 4, (2 * batch,), generator=g))
    val = TensorDataset(torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 4, (8,), generator=g))
    result = _fit(deep(blocks), _loaders(train, val, batch), options=LoopOptions(oom_retries=4),
                  on_step=lambda *_: torch.cuda.reset_peak_memory_stats())  # the peak of the last step stays
    _check(any("out of memory" in w for w in result.warnings), f"batch {batch} with {blocks} blocks did not run out "
           f"of memory ({free / 2**30:.0f} GiB free)")
    _check(result.batch_size < batch and result.batch_size * result.accumulate == batch,
           f"ended at batch {result.batch_size} x accumulate {result.accumulate}")
    used = torch.cuda.max_memory_allocated() / total
    return (f"batch {batch} x {blocks} conv blocks (~{3 * free / 2**30:.0f} GiB for {free / 2**30:.0f} GiB free) "
            f"ran out of memory; fit went on at batch {result.batch_size} x accumulate {result.accumulate}: "
            f"{result.steps} steps, loss {_loss(result):.4f}, the last step's peak {used:.0%} of the GPU")


def check_memory_report(args) -> str:
    from kagglekit_nb.preflight import memory_report

    lines: list[str] = []
    torch.cuda.reset_peak_memory_stats()
    _loss(_fit(_cnn(), log=lines.append))
    line = next((x for x in lines if "GPU memory after the first step" in x), None)
    _check(line is not None, f"fit's pre-flight printed no GPU memory line: {lines[:3]}")
    peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.memory_reserved()
    total = torch.cuda.get_device_properties(DEVICE).total_memory
    _check(0 < peak <= reserved <= total, f"peak {peak}, reserved {reserved}, total {total} bytes")
    _check(memory_report(peak, reserved, total).startswith("GPU memory"), "memory_report changed its wording")
    return line.split("; ", 1)[-1]


def check_ddp(args) -> str:
    from kagglekit_nb import distributed

    count = torch.cuda.device_count()
    if count < 2:
        raise Skip(f"{count} GPU visible ({torch.cuda.get_device_name(0)}): DDP needs 2 or more (Kaggle's T4 x2)")
    world = distributed.plan_world(None)  # every visible GPU, counted without CUDA
    _check(world.processes == count and world.backend == "nccl", f"DEVICES=None plans {world.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        command = distributed.torchrun_command(Path(tmp) / "spec.json", world, logs=Path(tmp) / "logs")
        command[-3:] = [str(Path(__file__).resolve()), "--ddp-worker", tmp]  # in place of `-m kagglekit_nb.worker SPEC`
        done = subprocess.run(command, env=distributed._worker_environ(world, _child_env()), capture_output=True,
                              text=True, timeout=300, check=False)
        _check(done.returncode == 0, f"torchrun ended with {done.returncode}: {_tail(done)}")
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(count)]
    steps = {r["steps"] for r in ranks}
    _check(len(steps) == 1 and min(steps) > 0, f"steps per rank: {[r['steps'] for r in ranks]}")
    differ = [r for r in range(1, count) if _digest(ranks[r]["weights"]) != _digest(ranks[0]["weights"])]
    _check(not differ, f"the weights of rank(s) {differ} differ from rank 0's")
    return f"{world.describe()}: {min(steps)} steps each, weights equal on all {count} ranks"


def _ddp_worker(out: Path) -> int:
    """One process of the `ddp` item, started by torchrun: the kit's join, wrap, make_loader and fit."""
    from kagglekit_nb import distributed
    from kagglekit_nb.loaders import make_loader
    from kagglekit_nb.loop import fit
    from kagglekit_nb.metrics import get_metric

    device = distributed.join("nccl" if torch.cuda.is_available() else "gloo")
    try:
        torch.manual_seed(0)
        # A model DDP wraps is converted to channels_last by its owner (cv._wrapped does so), not by fit.
        model = _cnn().to(device).to(memory_format=torch.channels_last)
        per_process, world = 16, distributed.world_size()
        train = make_loader(_images(per_process * world * 5 + 3, 1), per_process, train=True, device=device,
                            num_workers=0)
        val = make_loader(_images(64, 2), 64, train=False, device=device, num_workers=0)
        result = fit(distributed.wrap(model, device), train, val, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     loss_fn=nn.CrossEntropyLoss(), epochs=2, device=device, metric=get_metric("accuracy"), log=None)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"weights": weights, "steps": result.steps}, out / f"rank{distributed.rank()}.pt")
    finally:
        distributed.leave()
    return 0


def _resnet18() -> nn.Module:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=10).to(DEVICE)


class _Window:
    """Timestamps (and loader waits) between optimizer step `warm` and `warm + steps`, synchronised."""

    def __init__(self, warm: int, steps: int, loader=None):
        self.warm, self.steps, self.loader, self.n, self.marks = warm, steps, loader, 0, []

    def step(self, *_) -> None:
        self.n += 1
        if self.n in (self.warm, self.warm + self.steps):
            torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), getattr(self.loader, "waited", 0.0)))

    def img_s(self, batch: int) -> float:
        return self.steps * batch / (self.marks[1][0] - self.marks[0][0])


def _plain_loop(loader: DataLoader, dtype: torch.dtype | None, window: _Window) -> None:
    model = _resnet18().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE.type) if dtype == torch.float16 else None
    model.train()
    for x, y in loader:
        x, y = x.to(DEVICE, memory_format=torch.channels_last, non_blocking=True), y.to(DEVICE, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        window.step()


def check_speed(args) -> str:
    from kagglekit_nb.options import amp_dtype

    dtype = amp_dtype(None, "cuda", torch.cuda.get_device_capability())
    warm, steps, rounds = 5, 12 if args.quick else 30, 1 if args.quick else 2
    n = SPEED_BATCH * (warm + steps)
    data = TensorDataset(torch.randn(n, 3, 224, 224, device=DEVICE), torch.randint(0, 10, (n,), device=DEVICE))
    val = TensorDataset(data.tensors[0][:SPEED_BATCH], data.tensors[1][:SPEED_BATCH])
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as after start_run's seeding
    kit, plain = [], []
    try:
        for _ in range(rounds):
            # The data is on the GPU already, so neither side waits for a loader: this is the loop's cost.
            window = _Window(warm, steps)
            _plain_loop(_loaders(data, val, SPEED_BATCH, device="cpu")[0], dtype, window)
            plain.append(window.img_s(SPEED_BATCH))
            window = _Window(warm, steps)
            _fit(_resnet18(), _loaders(data, val, SPEED_BATCH, device="cpu"), on_step=window.step)
            kit.append(window.img_s(SPEED_BATCH))
    finally:
        torch.backends.cudnn.benchmark = benchmark
    ratio = max(kit) / max(plain)
    _check(ratio >= 0.8, f"fit trains at {max(kit):.0f} img/s, the plain loop at {max(plain):.0f}: ratio {ratio:.2f}")
    return (f"resnet18 224 px batch {SPEED_BATCH} {str(dtype).removeprefix('torch.')}: fit {max(kit):.0f} img/s, "
            f"plain loop {max(plain):.0f} img/s, ratio {ratio:.3f}")


class _TimedLoader(DataLoader):
    """The kit's loader as make_loader built it, with a clock around each batch it hands out."""

    waited = 0.0

    def __iter__(self):
        batches = super().__iter__()
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.waited += time.perf_counter() - t0
            yield batch


def check_data_wait(args) -> str:
    from kagglekit_nb.loaders import make_loader
    from kagglekit_nb.loop import fit
    from kagglekit_nb.metrics import get_metric

    warm, steps = 5, 12 if args.quick else 30
    loader = make_loader(_MadeImages(SPEED_BATCH * (warm + steps + 1)), SPEED_BATCH, train=True, device=DEVICE)
    loader.__class__ = _TimedLoader  # the kit's loader, unchanged, but for the clock (fit measures no data wait)
    val = make_loader(_MadeImages(SPEED_BATCH), SPEED_BATCH, train=False, device=DEVICE, num_workers=0)
    window = _Window(warm, steps, loader)
    model = _resnet18()
    fit(model, loader, val, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=nn.CrossEntropyLoss(),
        epochs=1, device=DEVICE, metric=get_metric("accuracy"), on_step=window.step, log=None)
    (t0, w0), (t1, w1) = window.marks
    share = (w1 - w0) / (t1 - t0)
    note = "; the GPU waits for the CPU: more cores, or cheaper decoding" if share > 0.3 else ""
    pinned = "pinned" if loader.pin_memory else "not pinned"
    return (f"{share:.0%} of step time waiting for the next batch ({loader.num_workers} workers, {pinned}, "
            f"{window.img_s(SPEED_BATCH):.0f} img/s, resnet18 224 px batch {SPEED_BATCH}){note}")


ITEMS = {"bf16": check_bf16, "fp16": check_fp16, "channels_last": check_channels_last, "compile": check_compile,
         "pin_memory": check_pin_memory, "hardware": check_hardware, "rng": check_rng, "resume": check_resume,
         "oom": check_oom, "memory_report": check_memory_report, "ddp": check_ddp, "speed": check_speed,
         "data_wait": check_data_wait}


# --------------------------------------------------------------------------- running them


def _run_item(name: str, args) -> tuple[str, str]:
    """("PASS" | "FAIL" | "SKIP", detail) of one item; a failure never stops the others."""
    torch.manual_seed(0)
    try:
        return "PASS", ITEMS[name](args)
    except Skip as e:
        return "SKIP", str(e)
    except CheckFailed as e:
        return "FAIL", str(e)
    except Exception as e:  # noqa: BLE001 - any error is this item's FAIL; the next items still run
        traceback.print_exc()
        return "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ITEM", help=f"run these items: {', '.join(ITEMS)}")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and epochs")
    parser.add_argument("--fold-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fold_worker is not None:
        return _fold_worker(args.fold_worker, args.kill_at)
    if args.ddp_worker is not None:
        return _ddp_worker(args.ddp_worker)
    unknown = [name for name in args.only or () if name not in ITEMS]
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: unknown item(s); the items are {', '.join(ITEMS)}")
    t0, counts = time.monotonic(), {"PASS": 0, "FAIL": 0, "SKIP": 0}
    cuda = torch.cuda.is_available()
    for name in args.only or ITEMS:
        status, detail = _run_item(name, args) if cuda else ("SKIP", "no CUDA (torch.cuda.is_available() is False)")
        counts[status] += 1
        print(f"{status} {name}: {detail}", flush=True)
    where = torch.cuda.get_device_name(0) if cuda else "no GPU"
    print(f"summary: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in "
          f"{time.monotonic() - t0:.0f}s ({where}, torch {torch.__version__})", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
