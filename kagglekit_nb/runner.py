"""Execute a notebook with papermill: parameter checking, headless settings, clear failures.

Used by `kagglekit run`. Parameters are checked against the notebook's `parameters` cell before
anything runs: an unknown name is an error listing the valid ones, and each value is converted to
the type of the notebook's default (`params.parse_value`, the rule the notebook form uses too).
"""
from __future__ import annotations

import ast
import contextlib
import errno
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .params import parse_value

__all__ = ["NOTEBOOKS", "LAYOUTS", "resolve_notebook", "notebook_parameters", "parameter_types", "convert_parameters",
           "execute", "new_notebook", "NotebookFailed"]

# Short names -> files in notebooks/.
NOTEBOOKS = {
    "classification": "image_classification.ipynb",
    "glacier_pretrain": "glacier_pretrain.ipynb",
    "glacier_finetune": "glacier_finetune.ipynb",
    "isic": "isic_embed_lgbm.ipynb",
}
# What each notebook expects to find, one line each (`kagglekit list`).
LAYOUTS = {
    "classification": "image competitions as Kaggle publishes them: labels CSV, class folders, labelled file names or "
                      "pixel rows; archives; any target the sample asks for (`kagglekit inspect DIR`; timm, K-fold)",
    "glacier_pretrain": "HKH-style multispectral patches *_img_NNN.npy / *_mask_NNN.npy (U-Net encoder pretraining)",
    "glacier_finetune": "GlacierHack Train/Band1..5/*.tif + Train/labels (U-Net, code package solution.py + model.pth)",
    "isic": "ISIC 2024: train/test-metadata.csv + train/test-image.hdf5 + sample_submission.csv (embeddings + LightGBM)",
}


class NotebookFailed(RuntimeError):
    """A cell raised, the kernel died or the disk is full; the message says which and what to do."""


_KERNELS: list[Any] = []   # kernel managers started by this process (their pids get our signals)


def notebooks_dir() -> Path:
    """The folder holding the template notebooks: KAGGLEKIT_NOTEBOOKS, else the copy a wheel carries
    inside the package (`kagglekit_nb/notebooks`), else the checkout's top-level `notebooks/`."""
    override = os.environ.get("KAGGLEKIT_NOTEBOOKS")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    installed = package / "notebooks"
    return installed if installed.is_dir() else package.parent / "notebooks"


def resolve_notebook(name_or_path: str) -> Path:
    """A short name (`classification`, `isic`, …; the file stem works too) or a path to a notebook."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".ipynb":
        if not path.is_file():
            raise FileNotFoundError(f"notebook {name_or_path!r} does not exist.")
        return path
    by_stem = {Path(f).stem: f for f in NOTEBOOKS.values()}
    file = NOTEBOOKS.get(name_or_path) or by_stem.get(name_or_path)
    if file is None:
        raise ValueError(f"unknown notebook {name_or_path!r}; use one of {', '.join(NOTEBOOKS)} "
                         "or a path to an .ipynb file.")
    path = notebooks_dir() / file
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} is not there: the installed kit is incomplete; reinstall "
                                "kagglekit_nb (pip install --force-reinstall kagglekit_nb), or pass the notebook's path.")
    return path


def new_notebook(name: str, dest: str | Path | None = None, *, force: bool = False,
                 with_py: bool = False) -> list[Path]:
    """Write a clean copy of the template notebook `name` (outputs, execution counts and front-end
    metadata removed) to `dest` (a file, or a folder to put it in; default: the working dir), and
    with `with_py` its py:percent twin beside it. Refuses to overwrite unless `force`."""
    import json

    source = resolve_notebook(name)
    target = Path.cwd() if dest is None else Path(dest).expanduser()
    if target.is_dir() or (dest is not None and str(dest).endswith(("/", os.sep))):
        target = target / source.name
    if target.suffix != ".ipynb":
        raise ValueError(f"PATH {dest!s} must be a folder or an .ipynb file name, e.g. my_{source.name}.")
    targets = [target] + ([target.with_suffix(".py")] if with_py else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exists: pass --force to overwrite it, or "
                              "give another PATH.")
    nb = json.loads(source.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)
    for key in ("widgets", "colab", "papermill"):
        nb.get("metadata", {}).pop(key, None)
    from ._atomic import write_text

    write_text(target, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    if with_py:
        twin = source.with_suffix(".py")
        if not twin.is_file():
            raise FileNotFoundError(f"the py:percent twin {twin} is not installed; use the .ipynb alone.")
        write_text(targets[1], twin.read_text(encoding="utf-8"))
    return targets


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Name -> default value of the notebook's `parameters` cell (literals only)."""
    import papermill

    params = papermill.inspect_notebook(str(path))
    if not params:
        raise ValueError(f"{path} has no cell tagged 'parameters': papermill cannot inject values into it.")
    out = {}
    for name, info in params.items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{path}: parameter {name} = {info['default']} is not a literal; the "
                             "parameters cell must hold literals only.") from e
    return out


_TASK_IMPORT = re.compile(r"^from\s+(kagglekit_nb\.tasks[\w.]*)\s+import\s+(\w+)\s+as\s+task\b", re.MULTILINE)


def parameter_types(path: Path) -> dict[str, tuple[type, ...]]:
    """Name -> the types the notebook's task Config allows (e.g. EPOCHS: int or None), found from the
    notebook's own `from kagglekit_nb.tasks... import ... as task` line; {} for a notebook without one."""
    import importlib
    import json
    import typing

    from .params import annotation_types

    try:
        cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return {}
    code = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
    match = _TASK_IMPORT.search(code)
    if match is None:
        return {}
    config = getattr(importlib.import_module(f"{match.group(1)}.{match.group(2)}"), "Config", None)
    if config is None:
        return {}
    return {name: annotation_types(hint) for name, hint in typing.get_type_hints(config).items()}


def convert_parameters(pairs: Sequence[tuple[str, str]], defaults: Mapping[str, Any],
                       types: Mapping[str, Sequence[type]] | None = None) -> dict[str, Any]:
    """Check `-p NAME VALUE` pairs against the notebook's parameters and convert each value: to the
    default's type, or to what the task's Config allows for it (`types`, see `parameter_types`)."""
    out = {}
    for name, text in pairs:
        if name not in defaults:
            raise ValueError(f"-p {name}: the notebook has no parameter {name!r}; "
                             f"its parameters are {', '.join(defaults)}.")
        out[name] = parse_value(f"-p {name}", text, defaults[name], (types or {}).get(name, ()))
    return out


def _kernel_manager() -> dict[str, Any]:
    """Talk to the kernel over local sockets (IPC) in the runtime folder rather than TCP: nothing is
    reachable from the network, and the kernel has no reason to print its "Kernel is running over
    TCP without encryption" warning into the terminal. TCP where IPC does not exist (Windows)."""
    if os.name == "nt":
        return {}
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            await super().start_kernel(**kw)
            _KERNELS.append(self)

        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:  # the sockets sit next to the connection file, not in the cwd
            from jupyter_core.paths import jupyter_runtime_dir

            stem = os.path.splitext(self.connection_file)[0] if self.connection_file else \
                os.path.join(jupyter_runtime_dir(), f"kagglekit-{os.getpid()}")
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            return stem + "-ipc"

    return {"kernel_manager_class": LocalKernelManager}


@dataclass
class Execution:
    notebook: Path
    output: Path
    parameters: dict[str, Any]
    seconds: float
    stopped_by: str | None = None   # the signal passed to the kernel, when one arrived


def _kernel_pids() -> list[int]:
    pids = []
    for km in _KERNELS:
        pid = getattr(getattr(km, "provisioner", None), "pid", None)
        if isinstance(pid, int) and km.has_kernel:
            pids.append(pid)
    return pids


@contextlib.contextmanager
def _forward_signals(grace_s: float, say=lambda m: print(m, file=sys.stderr, flush=True)):
    """SIGTERM/SIGINT to this command go to the kernel (the kit's handler there checkpoints and
    stops training; the notebook's later cells write the submission). The command waits up to
    `grace_s` for the notebook to end, then kills the kernel; a second signal kills it at once."""
    from .budget import forwarding_signals

    received: list[str] = []

    def kill_kernels(why: str) -> None:
        say(f"kagglekit run: {why}: stopping the kernel; its last checkpoint is kept, run the same command "
            "again to resume")
        for pid in _kernel_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if received:
            kill_kernels(f"{name} received again")
            return
        received.append(name)
        pids = _kernel_pids()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
        say(f"kagglekit run: {name} received: passed to the kernel{'' if pids else ' (none running)'}, which "
            f"saves a checkpoint and stops training; waiting up to {grace_s:.0f}s for the notebook to finish")
        timer = threading.Timer(grace_s, kill_kernels, [f"the notebook did not finish within {grace_s:.0f}s of {name}"])
        timer.daemon = True
        timer.start()

    with forwarding_signals(handler):
        yield received


def execute(
    notebook: str,
    *,
    out: str | Path,
    data: str | Path | None = None,
    budget: str | None = None,
    params: Sequence[tuple[str, str]] = (),
    start: float | None = None,
    stream: bool = True,
    kernel_name: str | None = None,
    grace_s: float | None = None,
) -> Execution:
    """Run `notebook` headless with papermill, writing the executed copy into `out`.

    `start` is the monotonic time the command began (the budget counts from there).
    Raises NotebookFailed with the failing cell's error when a cell fails, and with one line saying
    what to do when the kernel dies or the disk fills. SIGTERM/SIGINT are passed to the kernel and
    the notebook gets `grace_s` (default `budget.STOP_GRACE_S`) to finish (`_forward_signals`).
    """
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from .budget import STOP_GRACE_S

    start = time.monotonic() if start is None else start
    path = resolve_notebook(notebook)
    defaults = notebook_parameters(path)
    values = convert_parameters(params, defaults, parameter_types(path) if params else None)
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    for name, value, flag in (("OUTPUT_DIR", str(out), "--out"),
                              ("DATA_DIR", None if data is None else str(Path(data).expanduser().resolve()), "--data"),
                              ("BUDGET", budget, "--budget")):
        if value is None:
            continue
        if name not in defaults:
            raise ValueError(f"{flag}: notebook {path.name} has no {name} parameter.")
        values[name] = value
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder: point it at the competition's files.")
    if budget is not None:
        from .budget import parse_duration

        parse_duration(budget, name="--budget")
    output = out / path.name
    env_backup = {k: os.environ.get(k) for k in ("KAGGLEKIT_HEADLESS", "KAGGLEKIT_START")}
    os.environ["KAGGLEKIT_HEADLESS"] = "1"  # nothing in the notebook waits for a person
    os.environ["KAGGLEKIT_START"] = repr(start)
    try:
        with _forward_signals(STOP_GRACE_S if grace_s is None else grace_s) as received:
            try:
                papermill.execute_notebook(
                    str(path), str(output), parameters=values, log_output=False, progress_bar=False,
                    kernel_name=kernel_name, cwd=os.getcwd(),
                    stdout_file=sys.stdout if stream else None, stderr_file=sys.stderr if stream else None,
                    **_kernel_manager(),
                )
            except PapermillExecutionError as e:
                raise NotebookFailed(
                    f"cell {e.exec_count} of {path.name} failed: {e.ename}: {e.evalue}\n"
                    f"The executed notebook with the full traceback is {output}."
                ) from None
            except DeadKernelError:
                why = f" after {received[0]}" if received else " (out of memory, or killed)"
                raise NotebookFailed(
                    f"the kernel running {path.name} died{why}. The checkpoints in {out} are kept: run the "
                    f"same command again to resume; the notebook executed so far is {output}.") from None
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                raise NotebookFailed(
                    f"no space left on device while writing {e.filename or output}: free disk space (old "
                    f"runs, large outputs), then run the same command again; the checkpoints in {out} are "
                    "kept and training resumes from them.") from None
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Execution(notebook=path, output=output, parameters=values, seconds=time.monotonic() - start,
                     stopped_by=received[0] if received else None)

