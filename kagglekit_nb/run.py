"""A run: its output folder, seed, budget, device and `run.json` record.

`start_run` is the first call of every notebook. Re-running with the same OUTPUT_DIR picks up the
record the previous run left (`run.json`), so later steps can skip finished work.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._atomic import write_json
from .lock import RunLock, acquire as lock_folder
from .budget import Budget
from .distributed import is_main
from .env import RUN_FILE
from .mirror import Mirror
from .repro import seed_everything

__all__ = ["RUN_FILE", "Run", "join_run", "select_device", "start_run"]

LOCAL_SCRATCH = "kagglekit_local"  # on Colab: /content/kagglekit_local, local copies of Drive checkpoints


def select_device(device: str | None = None) -> torch.device:
    """The device to train on: `device` if given (validated), else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"DEVICE={device!r} is not a device: use None, 'cpu', 'cuda' or 'cuda:1'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"DEVICE={device!r} but no CUDA GPU is visible: turn on a GPU accelerator "
            "(Kaggle: Settings > Accelerator; Colab: Runtime > Change runtime type) or use DEVICE=None."
        )
    return dev


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


@dataclass
class Run:
    """One execution of a notebook: where it writes, how long it may take, what it did."""

    name: str
    dir: Path
    budget: Budget
    device: torch.device
    seed: int
    platform: str = "local"
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None
    echo: Callable[[str], None] = print
    checkpoint_dir: Path | None = None     # None: <dir>/checkpoints; set when `dir` is on Google Drive
    mirror: Mirror | None = None           # the Drive copy of `checkpoints`: pass it to save_checkpoint
    lock: RunLock | None = None       # this process's hold on `dir` (kagglekit_nb.lock)

    @property
    def checkpoints(self) -> Path:
        """Where checkpoints are saved: `<dir>/checkpoints`, or a local folder mirrored to it."""
        path = self.checkpoint_dir if self.checkpoint_dir is not None else self.dir / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoint_mirror(self) -> Path | None:
        """Where each checkpoint is copied after its local save (on Google Drive), or None."""
        return None if self.mirror is None else self.mirror.remote

    def log(self, message: str) -> None:
        """Print `message` prefixed with the elapsed time and what is left of the budget (on rank 0 of a
        multi-process run; the other ranks are quiet)."""
        if not is_main():
            return
        left = self.budget.remaining()
        left_text = f"{left / 60:5.1f} min left" if math.isfinite(left) else "no limit"
        self.echo(f"[{self.budget.elapsed():7.1f}s | {left_text}] {message}")

    def save(self) -> Path:
        """Write `run.json` atomically: the record plus the budget's summary (rank 0 of a multi-process
        run writes it for all)."""
        data = {"run_name": self.name, "seed": self.seed, "platform": self.platform,
                "device": str(self.device), "config": self.config, **self.record, **self.budget.summary()}
        path = self.dir / RUN_FILE
        if is_main():
            write_json(path, data, default=_json_default)
        return path

    def handover(self) -> dict[str, Any]:
        """What a training worker needs to continue this run in its own process (`join_run`)."""
        state = {"name": self.name, "dir": str(self.dir), "seed": self.seed, "platform": self.platform,
                 "config": self.config, "record": self.record, "previous": self.previous,
                 "budget": self.budget.handover()}
        if self.mirror is not None:
            state["mirror"] = {"local": str(self.mirror.local), "remote": str(self.mirror.remote)}
        return json.loads(json.dumps(state, default=_json_default))

    def reload(self) -> None:
        """Take back what another process of this run saved in run.json (the training workers' rank 0):
        its record, and the budget's phases and reserves; the budget's clock and this Run's own fields stay."""
        saved = json.loads((self.dir / RUN_FILE).read_text())
        own = {"run_name", "seed", "platform", "device", "config", *self.budget.summary()}
        self.record = {k: v for k, v in saved.items() if k not in own}
        self.budget.phases = {k: float(v) for k, v in (saved.get("phases") or {}).items()}
        self.budget.reserves = {k: float(v) for k, v in (saved.get("reserves") or {}).items()}


def _mirror_checkpoints(run: Run, local: Path) -> None:
    """Checkpoints of a run on Google Drive: saved under `local` first, then copied to Drive."""
    run.mirror = Mirror(local=local / "checkpoints", remote=run.dir / "checkpoints")
    run.checkpoint_dir = run.mirror.local
    restored = run.mirror.restore(log=None)
    run.record["checkpoint_mirror"] = {"local": str(run.mirror.local), "drive": str(run.mirror.remote)}
    run.log(f"checkpoints are saved in {run.mirror.local} and copied to Google Drive ({run.mirror.remote}) "
            "after each save" + (f"; {len(restored)} file(s) copied back from Drive to resume" if restored else ""))


def start_run(
    config: Mapping[str, Any],
    *,
    run_name: str,
    output_dir: str | Path | None,
    budget: Any = None,
    seed: int = 42,
    device: str | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    echo: Callable[[str], None] = print,
    input_root: str | Path | None = None,
    drive_root: str | Path | None = None,
    local_disk: str | Path | None = None,
    resume_from: str | None = None,
    kaggle_api_factory: Callable[[], Any] | None = None,
) -> Run:
    """Seed everything, resolve the budget and output folder, and open (or reopen) the run.

    The folder is locked for this process (`kagglekit_nb.lock`): a second run on it, from another
    process or machine, raises `RunLocked` naming the holder; the same process may start it again.

    `output_dir=None` uses the platform's persistent run dir (Drive on Colab, /kaggle/working on
    Kaggle, ./runs/<run_name> elsewhere). A new output folder is seeded with the run of the same
    name found under `input_root` (default on Kaggle: /kaggle/input, where an earlier version's output
    attached as an input appears), so a new session continues it. With `resume_from` ("OWNER/SLUG" of a
    Kaggle notebook, the RESUME_FROM parameter) a new output folder is first filled with the run saved
    in that notebook's latest output, through the Kaggle API (`kaggle_io.restore_output`, with
    `kaggle_api_factory` in place of `kaggle_io.connect`); a folder that already holds a run keeps it.

    On Colab, when the output folder is on Google Drive (under `drive_root`, default /content/drive),
    checkpoints are saved on the runtime's local disk (`local_disk`, default /content, in
    kagglekit_local/) and copied to `<output>/checkpoints` on Drive after each save (`run.mirror`,
    which `save_checkpoint(..., mirror=run.mirror)` takes); a new runtime
    first copies them back from Drive, so it resumes where the last one stopped. Without Drive the
    run folder is `<local_disk>/runs/<run_name>`.
    """
    from . import env, hardware

    environ = os.environ if environ is None else environ
    platform = env.detect_platform(environ)
    seed = seed_everything(seed)
    bud = Budget.resolve(budget, platform=platform, environ=environ, clock=clock)
    drive = Path(drive_root) if drive_root is not None else env.DRIVE_ROOT
    disk = Path(local_disk) if local_disk is not None else env.working_dir(platform, environ)
    if output_dir is None:
        fallback = disk / "runs" if platform == "colab" else None
        out = env.run_dir(run_name, platform=platform, environ=environ, drive_root=drive, local_root=fallback)
    else:
        out = Path(output_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(f"OUTPUT_DIR={str(output_dir)!r} is a file, not a folder: choose a folder path.")
    out.mkdir(parents=True, exist_ok=True)
    held = lock_folder(out, log=echo)  # one writer per run folder, until this process exits
    restored_from = None
    if resume_from is not None:
        if (out / RUN_FILE).exists():
            echo(f"RESUME_FROM={resume_from!r} not used: {out} already holds a run ({RUN_FILE}), which this "
                 "session continues")
        else:
            from .kaggle_io import restore_output

            restore_output(resume_from, out, run_name=run_name, api_factory=kaggle_api_factory, log=echo)
            restored_from = resume_from
    seeded_from = None
    search = input_root if input_root is not None else (env.KAGGLE_INPUT if platform == "kaggle" else None)
    if search is not None and not (out / RUN_FILE).exists():
        found = env.find_previous_run(run_name, input_root=search)
        if found is not None and found.resolve() != out.resolve():
            shutil.copytree(found, out, dirs_exist_ok=True)  # inputs are read-only: continue in a copy
            seeded_from = str(found)
    previous = None
    if (out / RUN_FILE).exists():
        try:
            previous = json.loads((out / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            previous = None  # a torn record is rewritten below; models and folds are checked on their own
    run = Run(name=run_name, dir=out.resolve(), budget=bud, device=select_device(device), seed=seed,
              platform=platform, config=dict(config), previous=previous, echo=echo, lock=held)
    run.record["sessions"] = (previous or {}).get("sessions", 0) + 1
    if restored_from:
        run.record["restored_from"] = restored_from
    if seeded_from:
        run.record["continued_from_input"] = seeded_from
        run.log(f"continuing the run found in {seeded_from} (copied into {run.dir})")
    if platform == "colab" and run.dir.is_relative_to(drive.resolve()):
        _mirror_checkpoints(run, (disk / LOCAL_SCRATCH / run.dir.relative_to(drive.resolve())).resolve())
    report = hardware.environment_report(environ=environ, paths={"output": run.dir})
    run.record["environment"] = report
    limit = f"{bud.total_s:.0f}s ({bud.source})" if bud.limited else "none"
    run.log(f"run '{run_name}' in {run.dir} | platform {platform} | device {run.device} | "
            f"seed {seed} | budget {limit}" + (" | continuing a previous run" if previous else ""))
    gpus = ", ".join(f"{g.get('name')} ({g.get('memory_total_mib')} MiB)" for g in report["gpus"]) or "none"
    run.log(f"hardware: {report['cpu_count']} CPU cores, {report['ram_total_gib']} GiB RAM, GPU: {gpus}; "
            f"torch {report['versions'].get('torch')}, timm {report['versions'].get('timm')}")
    if run.device.type == "cpu" and torch.cuda.is_available():
        run.log("WARNING: a CUDA GPU is available but this run trains on the CPU (DEVICE='cpu').")
    run.save()
    return run


def join_run(state: Mapping[str, Any], *, device: torch.device, echo: Callable[[str], None] = print) -> Run:
    """The run a notebook process handed over (`Run.handover`), in a training worker: the same folder,
    seed, record and budget (the same deadline). No lock: the notebook process holds the folder, and
    only rank 0 writes or prints."""
    seed = seed_everything(int(state["seed"]))
    run = Run(name=state["name"], dir=Path(state["dir"]), budget=Budget.taken_over(state["budget"]), device=device,
              seed=seed, platform=state.get("platform", "local"), config=dict(state.get("config") or {}),
              record=dict(state.get("record") or {}), previous=state.get("previous"), echo=echo)
    if state.get("mirror"):
        run.mirror = Mirror(local=Path(state["mirror"]["local"]), remote=Path(state["mirror"]["remote"]))
        run.checkpoint_dir = run.mirror.local
    return run
