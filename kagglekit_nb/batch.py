"""A batch of runs: every combination of a small parameter grid, each in its own run folder.

    kagglekit batch classification --out runs/seeds --grid grid.yaml --budget 2h

with grid.yaml holding, e.g.

    SEED: [0, 1, 2]
    MODEL: [resnet18, efficientnet_b0]

Each combination runs through `kagglekit run` (the kit's runner checks and converts every value
against the notebook's parameters cell, here before any run starts) in `<out>/<NAME=value,...>`,
with its output in `batch.log` there. A rerun skips finished runs (a valid verification.json and a
run.json) and resumes the others in their folders (the notebooks resume from their checkpoints).
One `--budget` covers the whole batch: each run gets its share of what is left when it starts
(`budget.split_budget`). The runs of a batch share one split (the first run's `folds.csv` is copied
into the others' folders), so their out-of-fold predictions can be blended (`kagglekit blend`),
unless the grid varies FOLDS. `--parallel N` runs up to N at once, one GPU each (CUDA_VISIBLE_DEVICES),
on a machine with several GPUs; with one GPU or none the runs go one at a time (`gpu_slots`). A failing
run is reported and the others go on. The batch ends with a
leaderboard, printed and saved as `<out>/leaderboard.csv`.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LEADERBOARD_FILE", "LOG_FILE", "load_grid", "combinations", "run_name", "is_finished",
           "gpu_slots", "BatchRun", "run_batch"]

LEADERBOARD_FILE = "leaderboard.csv"
LOG_FILE = "batch.log"                 # each run's stdout and stderr, in its folder
SHARED_FOLDS = "folds.csv"             # the batch's split, in --out, copied into each new run folder
RESERVED = ("OUTPUT_DIR", "DATA_DIR", "BUDGET")   # set by --out, --data and --budget
MAX_NAME = 120                         # longer run folder names are cut and end in a hash
POLL_S = 0.5                           # how often a waiting run looks for the batch's split
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def load_grid(path: str | Path) -> dict[str, list[Any]]:
    """Read a grid file (.yaml/.yml or .json): a mapping of parameter name -> list of values (a
    single value means that value for every run). Raises ValueError listing everything wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--grid {path} does not exist: write a YAML or JSON file such as "
                                "'SEED: [0, 1, 2]'.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--grid {path} is not valid JSON ({e}).") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"--grid {path}: reading YAML needs PyYAML (pip install pyyaml); or write the "
                             "grid as JSON.") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--grid {path} is not valid YAML ({e}).") from None
    else:
        raise ValueError(f"--grid {path}: the file must end in .yaml, .yml or .json.")
    return check_grid(data, where=f"--grid {path}")


def check_grid(data: Any, *, where: str = "the grid") -> dict[str, list[Any]]:
    """The grid as name -> non-empty list of scalar values; a ValueError lists every problem."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where} must be a non-empty mapping of parameter names to lists of values, "
                         f"e.g. {{'SEED': [0, 1, 2]}}; it holds {type(data).__name__} {data!r:.80}.")
    problems, grid = [], {}
    for name, values in data.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(f"{name!r} is not a parameter name")
        elif name in RESERVED:
            problems.append(f"{name} is set by the batch (--out, --data, --budget), not by the grid")
        if not values:
            problems.append(f"{name}: the list of values is empty")
        bad = [v for v in values if isinstance(v, (Mapping, set))]
        if bad:
            problems.append(f"{name}: {bad[0]!r} is not a single value")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            problems.append(f"{name}: a value is listed twice")
        grid[str(name)] = values
    if problems:
        raise ValueError(f"{where} is not a valid grid:\n" + "\n".join(f"  - {p}" for p in problems))
    return grid


def _text(value: Any) -> str:
    """A grid value as the text `kagglekit run -p NAME TEXT` takes."""
    return value if isinstance(value, str) else repr(value)


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's order (the last name varies fastest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def run_name(values: Mapping[str, Any]) -> str:
    """A run folder name from the values, e.g. `SEED=1,MODEL=resnet18` (safe on every file system)."""
    name = ",".join(f"{k}={_text(v)}" for k, v in values.items())
    safe = _SAFE.sub("_", name).strip("._") or "run"
    if safe == name and len(safe) <= MAX_NAME:
        return name
    import hashlib  # a changed or cut name ends in a hash of the full one, so two never collide

    return f"{safe[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def is_finished(run_dir: str | Path) -> bool:
    """A run is finished when its run.json reads and its verification.json says valid."""
    run_dir = Path(run_dir)
    try:
        json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        report = json.loads((run_dir / "verification.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("valid") is True


def gpu_slots(parallel: int, gpus: int, environ: Mapping[str, str] | None = None) -> tuple[list[str | None], str]:
    """The device slots runs take, one per concurrent run (a CUDA_VISIBLE_DEVICES value, or None to
    leave it alone), and a line saying how the runs share the machine: with two GPUs or more, up to
    `parallel` runs at once, one GPU each; else one run at a time."""
    if parallel < 1:
        raise ValueError(f"--parallel {parallel} must be at least 1.")
    environ = os.environ if environ is None else environ
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible[:gpus] if visible else [str(i) for i in range(gpus)]
    if len(devices) >= 2:
        n = min(parallel, len(devices))
        note = f"{n} run(s) at a time, one GPU each ({', '.join(devices[:n])})"
        if parallel > n:
            note += f"; --parallel {parallel} is more than the {len(devices)} GPUs"
        return list(devices[:n]), note
    # One GPU or none: one at a time. Each run's torch already takes every CPU core (and the one GPU),
    # so two at once would each run at about half speed and plan their epochs on a contended pace.
    ignored = f" (--parallel {parallel} ignored: it needs two GPUs or more)" if parallel > 1 else ""
    if len(devices) == 1:
        return [None], "one GPU: the runs go one at a time" + ignored
    return [None], "no GPU: the runs go one at a time on the CPU" + ignored


@dataclass
class BatchRun:
    """One run of the batch: its values, folder, and what happened."""

    name: str
    values: dict[str, Any]
    dir: Path
    status: str = "pending"            # finished | skipped (already finished) | failed | not started
    seconds: float | None = None
    budget_s: float | None = None
    message: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    def row(self, grid_names: Sequence[str]) -> dict[str, Any]:
        record = self.record
        submitted = record.get("submitted")
        scores = record.get("candidates") or {}
        return {"run": self.name, **{n: self.values.get(n) for n in grid_names},
                "metric": (record.get("config") or {}).get("METRIC"),
                "cv_score": record.get("cv_score"),
                "submitted": submitted, "oof_score": scores.get(submitted),
                "time_s": self.seconds if self.seconds is not None else record.get("elapsed_s"),
                "valid": is_finished(self.dir), "status": self.status}


def _read_record(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_finished_values(run: BatchRun, values: Mapping[str, Any]) -> None:
    """A finished run folder must have been made with the values the batch asks for now."""
    config = run.record.get("config") or {}
    differ = {k: (config[k], v) for k, v in values.items() if k in config and config[k] != v}
    if differ:
        said = ", ".join(f"{k}={a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise ValueError(f"run folder {run.dir} was made with other parameters ({said}): use another --out "
                         "for a different batch, or delete that folder to run it again.")


def run_batch(notebook: str, *, out: str | Path, grid: Mapping[str, Sequence[Any]], data: str | Path | None = None,
              budget: str | float | None = None, parallel: int = 1, params: Sequence[tuple[str, str]] = (),
              echo: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
              gpus: int | None = None, command: Sequence[str] | None = None) -> list[BatchRun]:
    """Run every combination of `grid` (name -> values) of `notebook`, `parallel` at a time, inside
    one `budget` for the whole batch; return the runs (finished, skipped, failed, not started) and
    write `<out>/leaderboard.csv`. `gpus` replaces the GPU count (`hardware.gpu_info`, read without
    initialising CUDA); `command` replaces `python -m kagglekit_nb` (tests)."""
    from .budget import parse_duration, split_budget
    from .runner import convert_parameters, notebook_parameters, parameter_types, resolve_notebook

    start = clock()
    path = resolve_notebook(notebook)
    grid = check_grid(dict(grid))
    defaults = notebook_parameters(path)
    unknown = [n for n in grid if n not in defaults]
    if unknown:
        raise ValueError(f"the grid names {', '.join(unknown)}, which {path.name} does not have; its parameters "
                         f"are {', '.join(defaults)}.")
    both = sorted({n for n, _ in params} & set(grid))
    if both:
        raise ValueError(f"{', '.join(both)} is both in the grid and in -p: keep it in one of them.")
    types = parameter_types(path)
    fixed = convert_parameters(params, defaults, types)
    total_s = None if budget is None else parse_duration(budget, name="--budget")
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder: point it at the competition's files.")
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if gpus is None:
        from .hardware import gpu_info

        gpus = len(gpu_info())
    slots, note = gpu_slots(parallel, gpus)
    runs: list[BatchRun] = []
    for values in combinations(grid):
        converted = convert_parameters([(n, _text(v)) for n, v in values.items()], defaults, types)
        name = run_name(values)
        if any(r.name == name for r in runs):
            raise ValueError(f"two combinations of the grid give the run folder name {name!r}: make the values "
                             "differ in letters or digits, not only in punctuation.")
        run = BatchRun(name=name, values=converted, dir=out / name)
        run.record = _read_record(run.dir)
        if is_finished(run.dir):
            _check_finished_values(run, {**converted, **fixed})
            run.status = "skipped (already finished)"
        runs.append(run)
    pending = [r for r in runs if r.status == "pending"]
    echo(f"batch of {len(runs)} run(s) of {path.name} in {out}: {len(runs) - len(pending)} already finished, "
         f"{len(pending)} to run; {note}"
         + (f"; budget {total_s:.0f}s for the whole batch" if total_s is not None else ""))
    share_folds = "FOLDS" not in grid
    base = list(command) if command is not None else [sys.executable, "-m", "kagglekit_nb"]
    free = list(slots)
    lock = threading.Lock()
    children: list[subprocess.Popen] = []
    left = [len(pending)]
    first_done = threading.Event()

    def shared_split() -> Path | None:
        target = out / SHARED_FOLDS
        if target.is_file():
            return target
        for r in runs:
            if (r.dir / SHARED_FOLDS).is_file():
                shutil.copyfile(r.dir / SHARED_FOLDS, target)
                return target
        return None

    def one(run: BatchRun, index: int) -> None:
        if share_folds and index > 0:  # wait for the first run's split (it also writes a demo's files)
            while shared_split() is None and not first_done.wait(POLL_S):
                pass
        with lock:
            slot = free.pop(0)
            share = None if total_s is None else split_budget(total_s - (clock() - start), left[0], len(slots))
            left[0] -= 1
        try:
            if share is not None and share < 1.0:
                run.status, run.message = "not started", "the batch's budget is spent"
                echo(f"  {run.name}: not started, the batch's budget is spent")
                return
            run.dir.mkdir(parents=True, exist_ok=True)
            split = shared_split() if share_folds else None
            if split is not None and not (run.dir / SHARED_FOLDS).exists():
                shutil.copyfile(split, run.dir / SHARED_FOLDS)
            argv = [*base, "run", str(path), "--out", str(run.dir), "--quiet"]
            if data is not None:
                argv += ["--data", str(Path(data).expanduser().resolve())]
            if share is not None:
                argv += ["--budget", f"{share:.0f}s"]
            run.budget_s = share
            for n, text in [*params, *((n, _text(run.values[n])) for n in grid)]:
                argv += ["-p", n, text]
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            echo(f"  {run.name}: started" + (f" (budget {share:.0f}s)" if share is not None else "")
                 + (f" on GPU {slot}" if slot is not None else "") + f"; log: {run.dir / LOG_FILE}")
            t0 = clock()
            with open(run.dir / LOG_FILE, "ab") as log:
                # its own session: a Ctrl-C reaches it once, through `forward`, not twice
                child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                with lock:
                    children.append(child)
                code = child.wait()
                with lock:
                    children.remove(child)
            run.seconds = clock() - t0
            run.record = _read_record(run.dir)
            if code == 0 and is_finished(run.dir):
                run.status = "finished"
            else:
                run.status = f"failed (exit {code})"
                run.message = _last_error(run.dir / LOG_FILE)
            echo(f"  {run.name}: {run.status} in {run.seconds:.0f}s" + (f": {run.message}" if run.message else ""))
        finally:
            with lock:
                free.append(slot)
            if index == 0:
                first_done.set()

    def forward(signum: int, frame: Any) -> None:  # the runs checkpoint and stop; the batch reports
        with lock:
            for child in children:
                child.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            for future in [pool.submit(one, r, i) for i, r in enumerate(pending)]:
                future.result()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    write_leaderboard(runs, out, list(grid), echo=echo)
    return runs


def _last_error(log: Path) -> str:
    """What `kagglekit run` said when it failed: its log from its last `kagglekit ...:` line on
    (else the last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    said = [i for i, ln in enumerate(lines) if ln.startswith("kagglekit ")]
    return " ".join(lines[said[-1] if said else -1:])[:500] if lines else ""


def write_leaderboard(runs: Sequence[BatchRun], out: Path, grid_names: Sequence[str], *,
                      echo: Callable[[str], None] = print) -> Path:
    """The runs as a table (best out-of-fold score first), printed and saved as `<out>/leaderboard.csv`."""
    import pandas as pd

    from ._atomic import write_atomic
    from .metrics import get_metric

    table = pd.DataFrame([r.row(grid_names) for r in runs])
    metrics = {m for m in table["metric"] if m}
    if len(metrics) == 1 and table["oof_score"].notna().any():
        ascending = not get_metric(metrics.pop()).greater_is_better
        table = table.sort_values("oof_score", ascending=ascending, na_position="last", kind="stable")
    path = out / LEADERBOARD_FILE
    write_atomic(path, lambda fh: table.to_csv(fh, index=False), newline="")
    echo("\n" + table.to_string(index=False) + f"\n\nleaderboard: {path}")
    return path
