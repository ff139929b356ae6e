"""Training in several processes at once (Kaggle's two T4s, or CPU processes with gloo) on PyTorch's own
engine: torch.distributed, DistributedDataParallel, and torchrun (`torch.distributed.run`) to start them.

    world = plan_world(cfg.DEVICES, device=cfg.DEVICE)   # in the notebook process: GPUs counted without CUDA
    if world.distributed:
        launch(spec, world, folder=run.dir, echo=run.echo)  # torchrun ... -m kagglekit_nb.worker SPEC, streamed

In a worker (`kagglekit_nb.worker`), `join(backend)` enters the process group; the training code then
asks `rank()`, `is_main()`, `barrier()`, `broadcast_object(...)`, `agree(...)` and `main_first()`,
each a no-op in a single process, so the single-process path runs as it always did.

One rule keeps the processes in step: a decision that could come out differently in two processes
(the budget's stop, the plan, which folds to train, a due checkpoint, the validation score) is taken
on rank 0 and shared, and a stop signal that reaches any rank stops every rank at the same step.
Only rank 0 writes files. Every collective has a timeout (`COLLECTIVE_TIMEOUT_S`): a rank that stops
answering ends the run with an error instead of a hang, and torchrun ends the others when one dies.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ._atomic import write_json
from .budget import WORKER_GRACE_S, forwarding_signals

__all__ = ["COLLECTIVE_TIMEOUT_S", "World", "WorkersFailed", "agree", "barrier", "broadcast_buffers", "broadcast_object", "check_config",
           "gather_objects", "gather_to_main", "is_main", "join", "launch", "leave", "main_first", "parse_devices", "plan_world",
           "rank", "shard", "sync_bn_note", "total", "visible_gpus", "world_size", "wrap", "write_spec"]

# The longest a rank waits at a collective: longer than anything rank 0 does alone while the others
# wait (the model ladder's timing, a whole validation pass, a checkpoint copied to Google Drive).
COLLECTIVE_TIMEOUT_S = 30 * 60.0
WORKER_MODULE = "kagglekit_nb.worker"
WORKERS_DIR = "workers"        # in the run folder: the spec, the workers' result, torchrun's error files
SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
DEVICES_HELP = ("use None (every visible GPU; with one GPU or none, one process), 1 (one process), a number of "
                "GPUs such as 2, or 'cpu:2' for two CPU processes (gloo)")


class WorkersFailed(RuntimeError):
    """The training workers ended without finishing; the message names the failing rank and what to do."""


# --------------------------------------------------------------------------- the DEVICES parameter


def parse_devices(value: Any) -> tuple[str, int | None]:
    """("auto", None) for None, ("gpu", n) for a number, ("cpu", n) for "cpu:n"; else ValueError.

    >>> parse_devices(None), parse_devices(2), parse_devices("cpu:2")
    (('auto', None), ('gpu', 2), ('cpu', 2))
    """
    if value is None:
        return "auto", None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return "gpu", value
    if isinstance(value, str):
        text = value.strip().lower()
        match = re.fullmatch(r"cpu:(\d+)", text)
        if match and int(match.group(1)) >= 1:
            return "cpu", int(match.group(1))
        if text.isdigit() and int(text) >= 1:
            return "gpu", int(text)
    raise ValueError(f"DEVICES={value!r} is not valid: {DEVICES_HELP}.")


def check_devices(devices: Any, device: str | None) -> None:
    """DEVICES on its own and next to DEVICE (which picks the device of one process); ValueError if they clash."""
    kind, n = parse_devices(devices)
    dev = None if device is None else str(device).split(":")[0].strip().lower()
    if kind == "cpu" and dev not in (None, "cpu"):
        raise ValueError(f"DEVICES={devices!r} asks for CPU processes but DEVICE={device!r}: set DEVICE=None, or "
                         "DEVICES to a number of GPUs.")
    if kind == "gpu" and n > 1 and dev == "cpu":
        raise ValueError(f"DEVICES={devices!r} asks for {n} GPU processes but DEVICE='cpu': use DEVICES='cpu:{n}' "
                         "for CPU processes, or DEVICE=None.")
    if kind == "gpu" and n > 1 and device is not None and str(device).strip().lower() != "cuda":
        raise ValueError(f"DEVICE={device!r} picks one GPU, but DEVICES={devices!r} gives each process its own: set "
                         "DEVICE=None (limit the GPUs with CUDA_VISIBLE_DEVICES), or DEVICES=1.")


def check_config(devices: Any, device: str | None, batch_size: int) -> None:
    """A task config's DEVICES, next to DEVICE and BATCH_SIZE (the batch of one optimizer step, which the
    processes share); ValueError saying what to change. With DEVICES = None the number of GPUs, and so
    the batch check, waits for `plan_world`."""
    check_devices(devices, device)
    _, n = parse_devices(devices)
    if n is not None:
        World(n).batch_per_process(batch_size)


def sync_bn_note(sync_bn: bool, world: "World") -> str | None:
    """What the log says when SYNC_BN cannot do what it asks (None when it can, or was not asked)."""
    if not sync_bn:
        return None
    if not world.distributed:
        return "SYNC_BN = True: one training process, so BatchNorm is already over the whole batch"
    if world.device_type != "cuda":
        return "SYNC_BN = True: not used by CPU processes (torch's SyncBatchNorm runs on GPUs only)"
    return None


def visible_gpus(environ: Mapping[str, str] | None = None, *, found: int | None = None) -> int:
    """The GPUs this process may use, counted without initialising CUDA: the driver's (NVML or nvidia-smi,
    or `found`), limited by CUDA_VISIBLE_DEVICES (which CUDA reads up to its first invalid entry)."""
    from .hardware import gpu_info

    environ = os.environ if environ is None else environ
    count = len(gpu_info()) if found is None else found
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return count
    ids = []
    for part in listed.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return min(len(ids), count)


@dataclass(frozen=True)
class World:
    """How many processes train, on what, talking through which backend (one process: today's path)."""

    processes: int = 1
    device_type: str | None = None   # "cuda" or "cpu" for several processes; None: DEVICE decides
    backend: str | None = None       # "nccl" on GPUs, "gloo" on CPUs; None for one process

    @property
    def distributed(self) -> bool:
        return self.processes > 1

    def batch_per_process(self, batch_size: int) -> int:
        """Each process's share of BATCH_SIZE, the batch of one optimizer step (so a step sees the same
        samples however many processes share it); ValueError when it does not divide."""
        if batch_size % self.processes:
            lower = batch_size - batch_size % self.processes
            raise ValueError(f"BATCH_SIZE={batch_size} is the batch of one optimizer step, shared by the "
                             f"{self.processes} training processes: make it a multiple of {self.processes} "
                             f"(e.g. {max(lower, self.processes)}).")
        return batch_size // self.processes

    def describe(self) -> str:
        if not self.distributed:
            return "one process"
        return f"{self.processes} processes on {'GPUs' if self.device_type == 'cuda' else 'CPUs'} ({self.backend})"


def plan_world(devices: Any, *, device: str | None = None, environ: Mapping[str, str] | None = None,
               gpus: int | None = None) -> World:
    """The World that DEVICES asks for here: None = every visible GPU when there are two or more (else
    one process), 1 = one process, n = n GPU processes (nccl), "cpu:n" = n CPU processes (gloo).
    GPUs are counted through the driver (`visible_gpus`; `gpus` to pass the count), never through CUDA:
    a notebook process that initialised CUDA would hold memory on the GPU its first worker needs."""
    check_devices(devices, device)
    kind, n = parse_devices(devices)
    if kind == "cpu":
        return World(n, "cpu", "gloo") if n > 1 else World()
    if kind == "gpu" and n == 1:
        return World()
    if kind == "auto" and device is not None:
        return World()  # DEVICE picked the device of one process
    count = visible_gpus(environ) if gpus is None else gpus
    if kind == "auto":
        return World(count, "cuda", "nccl") if count > 1 else World()
    if count < n:
        raise ValueError(f"DEVICES={devices!r} asks for {n} GPUs but {count} {'is' if count == 1 else 'are'} visible: "
                         f"use DEVICES=None (every visible GPU), 1 (one process), or 'cpu:{n}' for CPU processes.")
    return World(n, "cuda", "nccl")


# --------------------------------------------------------------------------- inside a worker


def active() -> bool:
    """Whether this process is part of a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and prints."""
    return rank() == 0


def join(backend: str) -> torch.device:
    """Enter the process group torchrun prepared (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)
    with a timeout on every collective; returns this process's device (its own GPU, or the CPU)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    extra: dict[str, Any] = {}
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = extra["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S), **extra)
    return device


def leave(*, wait: bool = False) -> None:
    """Leave the process group (at the end of a worker). `wait` (the worker returned): wait for every
    rank first, so none tears its connections down while a peer is still in a collective. The models
    left in reference cycles are freed first: a DistributedDataParallel model keeps the process group
    alive, and one destroyed at interpreter exit, after a peer has gone, aborts the process."""
    if active():
        gc.collect()
        if wait:
            barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel (on its GPU, or the CPU); `model` itself in a single process."""
    if world_size() == 1:
        return model
    device = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _device() -> torch.device:
    """Where a collective's tensor must live: NCCL works on the GPU only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait until every process is here."""
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` (anything picklable), on every rank."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` (anything picklable), in rank order, on rank 0; None on the other ranks."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard(n: int) -> range:
    """This rank's contiguous share of `n` items (rank order is item order; sizes differ by one at most)."""
    lo, hi = n * rank() // world_size(), n * (rank() + 1) // world_size()
    return range(lo, hi)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: after the last training step each
    rank has updated its own from its own samples, and rank 0's are the ones its checkpoint saves."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
            dist.broadcast(buffer.data, src=0)


def agree(values: Sequence[int]) -> list[int]:
    """The element-wise maximum of `values` over all ranks: one small all-reduce (a flag set on any rank,
    or a value only rank 0 sets, reaches every rank)."""
    if world_size() == 1:
        return [int(v) for v in values]
    tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def total(values: Sequence[float]) -> list[float]:
    """The element-wise sum of `values` over all ranks (float64), on every rank."""
    if world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, a repair of a checkpoint file), the others after it."""
    if world_size() == 1:
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# --------------------------------------------------------------------------- starting the workers


def torchrun_command(spec: Path, world: World, *, logs: Path, python: str = sys.executable) -> list[str]:
    """The torchrun command line that starts `world.processes` workers on this machine."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(world.processes), "--max-restarts", "0",
            "--shutdown-timeout", str(int(WORKER_GRACE_S)), "--log-dir", str(logs),
            "-m", WORKER_MODULE, str(spec)]


def _worker_environ(world: World, environ: Mapping[str, str]) -> dict[str, str]:
    """The workers' environment: this one, unbuffered output, this package importable, the CPU cores
    shared out (torchrun would otherwise set one thread and say so), no GPU for CPU processes."""
    env = dict(environ)
    env["PYTHONUNBUFFERED"] = "1"
    root = Path(__file__).resolve().parent.parent
    if root.name not in ("site-packages", "dist-packages"):  # a checkout: the workers import this copy
        env["PYTHONPATH"] = os.pathsep.join([str(root), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, _cpus() // world.processes))
    if world.device_type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _crowded(world: World, environ: Mapping[str, str]) -> str | None:
    """What the log says when CPU processes at the user's OMP_NUM_THREADS ask for more threads than cores."""
    threads = environ.get("OMP_NUM_THREADS", "")
    if world.device_type != "cpu" or not threads.isdigit() or int(threads) * world.processes <= _cpus():
        return None
    return (f"WARNING: OMP_NUM_THREADS={threads} for each of the {world.processes} CPU processes, on {_cpus()} "
            f"cores: they compete for the cores and train several times slower. Unset OMP_NUM_THREADS (each "
            f"process then gets {max(1, _cpus() // world.processes)}) or lower it.")


def _dies_with_parent() -> Callable[[], None] | None:
    """A preexec function that has Linux send SIGTERM to torchrun if this process dies (torchrun then
    stops its workers), so no worker outlives a killed notebook; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _forwarding(proc: subprocess.Popen, echo: Callable[[str], Any]) -> Iterator[list[str]]:
    """SIGTERM/SIGINT to this process go to torchrun, which passes them to every worker: each stops at
    its next step, after a checkpoint. (torchrun runs in a session of its own, so a signal to this
    process group reaches it once, through here.)"""
    received: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        echo(f"{name} received: passed to the training workers, which save a checkpoint at their next step "
             f"and stop (within {WORKER_GRACE_S:.0f}s)")
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signum)

    with forwarding_signals(handler):
        yield received


def write_spec(spec: Mapping[str, Any], world: World, *, folder: Path) -> Path:
    """Write what the workers train from (`kagglekit_nb.worker`) to `<folder>/workers/spec.json`, with a
    new launch id and the world (its backend); an earlier launch's result is removed. Returns the path."""
    work = Path(folder) / WORKERS_DIR
    work.mkdir(parents=True, exist_ok=True)
    (work / RESULT_FILE).unlink(missing_ok=True)
    path = work / SPEC_FILE
    write_json(path, {**spec, "launch": uuid.uuid4().hex, "world": dataclasses.asdict(world)}, default=str)
    return path


def launch(spec: Mapping[str, Any], world: World, *, folder: Path, echo: Callable[[str], Any] = print,
           environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start `world.processes` workers with torchrun on `spec` (`write_spec`), stream their output through
    `echo` as it comes (rank 0 speaks; any rank's traceback comes in full), and return what rank 0 wrote
    when they finished (`result.json`: a stop by signal or budget is a finish). Raises WorkersFailed,
    naming the failing rank and its error, when they end without finishing."""
    path = write_spec(spec, world, folder=folder)
    work = path.parent
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    spec = json.loads(path.read_text())
    command = torchrun_command(path, world, logs=logs)
    environ = os.environ if environ is None else environ
    if (crowded := _crowded(world, environ)) is not None:
        echo(crowded)
    echo(f"starting {world.describe()}: {' '.join(command[1:])}")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=_worker_environ(world, environ),
                            start_new_session=True, preexec_fn=_dies_with_parent())
    expected: list[str] = []  # torchrun's own traceback of a signal passed on: shown only if the workers fail
    seen: collections.deque[str] = collections.deque(maxlen=200)  # for torchrun's summary of a failure
    try:
        with _forwarding(proc, echo) as received:
            assert proc.stdout is not None
            _stream(proc.stdout, lambda line: (seen.append(line), echo(line)), received, expected)
            code = proc.wait()
    except BaseException:
        proc.terminate()  # torchrun stops its workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(WORKER_GRACE_S)
        raise
    result = _result(work, spec["launch"])
    if result is None:
        for line in expected:
            echo(line)
        raise WorkersFailed(_failure(folder, logs, code, received, list(seen)))
    return result


def _stream(lines: Iterator[str], echo: Callable[[str], Any], received: Sequence[str], expected: list[str]) -> None:
    """Each line to `echo` as it comes, but for torchrun's traceback of a signal it passed on (which
    goes to `expected`): the workers stopping after a signal is the plan, not an error."""
    held: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\n")
        if held is None and received and line.startswith("Traceback (most recent call last):"):
            held = [line]
            continue
        if held is None:
            echo(line)
            continue
        held.append(line)
        if line[:1] not in (" ", "\t", ""):  # the exception's own line ends the traceback
            if "SignalException" in line:
                expected.extend(held)
            else:
                for kept in held:
                    echo(kept)
            held = None
    for kept in held or ():
        echo(kept)


def _result(work: Path, launch_id: str) -> dict[str, Any] | None:
    """What rank 0 of this launch wrote when the workers finished, or None."""
    try:
        result = json.loads((work / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("launch") == launch_id else None


def _failure(folder: Path, logs: Path, code: int, received: Sequence[str], output: Sequence[str]) -> str:
    """Why the workers ended without finishing: the first failure as torchrun reports it (its "Root Cause"
    block: a rank killed by a signal has no traceback of its own), else the earliest error file."""
    what = f"the training workers ended without finishing (torchrun exit code {code}"
    what += f", after {received[0]})" if received else ")"
    cause = _root_cause(output) or _first_error(logs)
    if cause is not None:
        what += f": {cause}"
    return (what + ". The full report is above. The checkpoints in " + str(Path(folder) / "checkpoints") + " are kept: "
            "run this cell (or the same command) again and training resumes from the last one.")


def _root_cause(output: Sequence[str]) -> str | None:
    """The failing rank and its error from torchrun's failure summary. A rank killed by a signal other than
    the SIGTERM torchrun stops the others with (SIGKILL: out of memory; a crash) is the cause, whatever
    torchrun observed first (the others then fail at their next collective); else torchrun's root cause."""
    fields = ("time", "host", "rank", "exitcode", "error_file", "traceback")
    entries: list[dict[str, str]] = []
    for line in output:
        if re.fullmatch(r"\[\d+\]:", line.strip()):
            entries.append({})
            continue
        if not entries or line.startswith(("=", "-")):
            continue
        name, _, value = line.strip().partition(":")
        if name.strip() in fields and name.strip() not in entries[-1]:
            entries[-1][name.strip()] = value.strip()
        elif "traceback" in entries[-1] and line.strip():  # the traceback's next lines
            entries[-1]["traceback"] += "\n" + line.strip()
    entries = [e for e in entries if "rank" in e]
    if not entries:
        return None
    killed = [e for e in entries if re.search(r"\((SIG\w+)\)", e.get("exitcode", "")) and "SIGTERM" not in e["exitcode"]]
    cause = killed[0] if killed else entries[-1]  # the last block is torchrun's "Root Cause"
    rank_ = cause["rank"].split(" ")[0]
    signal_name = re.search(r"\((SIG\w+)\)", cause.get("exitcode", ""))
    if signal_name and cause.get("exitcode", "").startswith("-"):
        return f"rank {rank_} was killed by {signal_name.group(1)} (out of memory, or stopped from outside)"
    return f"rank {rank_} failed with {_last_line(cause.get('traceback', 'an error'))}"


def _first_error(logs: Path) -> str | None:
    """The earliest error a worker recorded in torchrun's error files (`@record` in `kagglekit_nb.worker`)."""
    errors = []
    for path in logs.rglob("error.json"):
        try:
            message = json.loads(path.read_text()).get("message", {})
        except (OSError, ValueError):
            continue
        if isinstance(message, dict):
            stamp = int((message.get("extraInfo") or {}).get("timestamp") or 0)
            text = str(message.get("message", ""))
        else:
            stamp, text = 0, str(message)
        errors.append((stamp, path.parent.name, text))
    if not errors:
        return None
    _, local_rank, text = min(errors)
    return f"rank {local_rank} failed with {_last_line(text)}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "an error"
    return last if len(last) <= 300 else last[:297] + "..."
