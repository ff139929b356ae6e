"""Where the notebook runs: platform, input data and weights, working, run and scratch dirs.

Everything here reads the environment through an ``environ`` mapping the caller may pass, so the
same code is tested with plain dicts. The machine itself (GPUs, CPUs, memory, versions) is
described by `hardware`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PLATFORMS", "detect_platform", "find_competition_dir", "find_previous_run", "find_weights",
    "has_live_frontend", "headless_reason", "hub_cache_dir", "input_dir", "kaggle_run_type",
    "make_scratch_dir", "run_dir", "scratch_dir", "working_dir",
]

PLATFORMS = ("kaggle", "colab", "local")

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
RUN_FILE = "run.json"  # a run folder's record; a folder holding one is a run (kagglekit_nb.run writes it)
COLAB_CONTENT = Path("/content")
DRIVE_ROOT = Path("/content/drive")  # where Colab mounts Google Drive
DRIVE_SUBDIR = "kagglekit"  # runs live in <drive>/MyDrive/kagglekit/<run_name>

# Off Kaggle, competition data is looked for (and `kagglekit download` puts it) in <working dir>/input,
# the local stand-in for /kaggle/input; this variable names another folder.
INPUT_VAR = "KAGGLEKIT_INPUT"
LOCAL_INPUT_DIR = "input"
# Scratch space for data extracted from the competition's archives (see `scratch_dir`): on Kaggle the
# space that is not saved as notebook output, with a fallback; this variable names another folder.
SCRATCH_VAR = "KAGGLEKIT_SCRATCH"
KAGGLE_TEMP = Path("/kaggle/temp")
KAGGLE_SCRATCH_FALLBACK = Path("/tmp/kagglekit")
COLAB_SCRATCH_DIR = "kagglekit_data"  # under /content: the local disk, not Drive
LOCAL_SCRATCH_DIR = ".kagglekit_data"
# Pretrained weights: file types looked for, and the local folder searched after /kaggle/input.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
LOCAL_WEIGHTS_DIR = "weights"
# A Hugging Face hub snapshot keeps the weights in a folder named after the model, in this order of
# preference; the hub cache holds one folder per repository: models--<owner>--<name>/snapshots/<rev>/.
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_HUB_REPO_PREFIX = "models--"

# Set to a true value by our own runner (``kagglekit run``) so notebooks never wait for a human.
HEADLESS_VAR = "KAGGLEKIT_HEADLESS"
# Variables whose presence (with a true-ish value) means nobody is watching the notebook.
_HEADLESS_VARS = (HEADLESS_VAR, "CI", "PAPERMILL_EXECUTION", "PYTEST_CURRENT_TEST")
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in _FALSE_WORDS


# --------------------------------------------------------------------------- platform


def _colab_module_exists() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no ``google`` package at all, or a broken one
        return False


def detect_platform(
    environ: Mapping[str, str] | None = None, *, colab_importable: bool | None = None
) -> str:
    """Return "kaggle", "colab" or "local" for the given environment.

    >>> detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_DATA_PROXY_URL": "x"})
    'kaggle'
    """
    env = _env(environ)
    # Kaggle first: its image is built on Colab's and may carry Colab's variables and modules.
    if "KAGGLE_KERNEL_RUN_TYPE" in env and "KAGGLE_DATA_PROXY_URL" in env:
        return "kaggle"
    if "COLAB_RELEASE_TAG" in env:
        return "colab"
    if colab_importable is None:
        colab_importable = _colab_module_exists()
    return "colab" if colab_importable else "local"


def _check_platform(platform: str) -> str:
    if platform not in PLATFORMS:
        raise ValueError(f"platform={platform!r} is not known; use one of {', '.join(PLATFORMS)}")
    return platform


def kaggle_run_type(environ: Mapping[str, str] | None = None) -> str | None:
    """Kaggle run type: "Interactive" in the editor, "Batch" for a saved version, else None."""
    return _env(environ).get("KAGGLE_KERNEL_RUN_TYPE") or None


def headless_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """Return why nobody can answer the notebook (e.g. "CI=true"), or None when nothing says so."""
    env = _env(environ)
    for name in _HEADLESS_VARS:
        if _is_true(env.get(name)):
            return f"{name}={env[name]}"
    if kaggle_run_type(env) == "Batch":
        return "KAGGLE_KERNEL_RUN_TYPE=Batch (a saved Kaggle version runs without a viewer)"
    return None


def _current_ipython() -> Any:
    # Only look if IPython is already loaded: if it is not, no kernel is running here.
    ipython_module = sys.modules.get("IPython")
    get_ipython = getattr(ipython_module, "get_ipython", None)
    return get_ipython() if get_ipython is not None else None


def has_live_frontend(environ: Mapping[str, str] | None = None, *, ipython: Any = None) -> bool:
    """True when an IPython kernel (Jupyter, Colab, Kaggle editor) runs and nothing says headless.

    ``ipython`` is the shell (``get_ipython()``); only kernel shells, which have a ``kernel``,
    count. Headless markers: CI, KAGGLEKIT_HEADLESS, PAPERMILL_EXECUTION, PYTEST_CURRENT_TEST and
    a Kaggle batch run.
    """
    if headless_reason(environ) is not None:
        return False
    shell = _current_ipython() if ipython is None else ipython
    return shell is not None and getattr(shell, "kernel", None) is not None


# --------------------------------------------------------------------------- input data


def _matches(directory: Path, required: Sequence[str]) -> bool:
    return all(next(directory.glob(pattern), None) is not None for pattern in required)


def _walk_dirs(root: Path, max_depth: int) -> list[tuple[int, Path]]:
    found = [(0, root)]
    frontier = [root]
    for depth in range(1, max_depth + 1):
        children = []
        for parent in frontier:
            try:  # scandir: image folders hold many thousands of files, so avoid a stat per file
                with os.scandir(parent) as entries:
                    children.extend(
                        parent / e.name
                        for e in entries
                        if not e.name.startswith(".") and e.is_dir()
                    )
            except OSError:  # an unreadable mount: skip it rather than fail the search
                continue
        children.sort()
        found.extend((depth, child) for child in children)
        frontier = children
    return found


def _drop_nested(dirs: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
    # A dataset often repeats its files one level down; the shallowest copy stands for the tree.
    kept: list[tuple[int, Path]] = []
    for depth, path in sorted(dirs):
        if not any(path.is_relative_to(k) for _, k in kept):
            kept.append((depth, path))
    return kept


def input_dir(platform: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where competition data lives: /kaggle/input on Kaggle, elsewhere ``$KAGGLEKIT_INPUT`` or
    ``<working dir>/input`` (where ``kagglekit download`` puts it)."""
    env = _env(environ)
    platform = _check_platform(detect_platform(env) if platform is None else platform)
    if platform == "kaggle":
        return KAGGLE_INPUT
    override = env.get(INPUT_VAR, "").strip()
    return Path(override).expanduser() if override else working_dir(platform, env) / LOCAL_INPUT_DIR


def _default_input_roots(environ: Mapping[str, str] | None) -> list[Path]:
    roots = [KAGGLE_INPUT, input_dir(environ=environ)]
    return list(dict.fromkeys(roots))  # on Kaggle both are /kaggle/input


def find_competition_dir(
    required: Sequence[str],
    *,
    input_root: str | Path | None = None,
    slug: str | None = None,
    max_depth: int = 3,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Find the one directory under ``input_root`` holding every ``required`` name or glob pattern.

    Finds both ``<root>/<slug>/`` and ``<root>/competitions/<slug>/`` layouts and datasets nested
    deeper; returns None when nothing matches. ``input_root=None`` searches /kaggle/input, then
    (off Kaggle) the local input folder that ``kagglekit download`` fills (see `input_dir`).

    >>> find_competition_dir(["train.csv", "sample_submission.csv"])  # doctest: +SKIP
    PosixPath('/kaggle/input/competitions/titanic')
    """
    if input_root is None:
        for root in _default_input_roots(environ):
            found = find_competition_dir(required, input_root=root, slug=slug, max_depth=max_depth)
            if found is not None:
                return found
        return None
    if isinstance(required, (str, bytes)) or not required:
        raise ValueError(
            f"required={required!r} must be a non-empty list of file names or glob patterns, "
            'e.g. ["train.csv", "sample_submission.csv"]'
        )
    bad = [p for p in required if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(
            f"required contains {bad!r}; every entry must be a non-empty file name or glob"
        )
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise ValueError(
            f"max_depth={max_depth!r} must be an integer >= 0 (levels below input_root)"
        )
    root = Path(input_root)
    if not root.is_dir():
        return None

    matches = [(d, p) for d, p in _walk_dirs(root, max_depth) if _matches(p, required)]
    if not matches:
        return None
    candidates = _drop_nested(matches)
    if slug is not None:
        chosen = [(d, p) for d, p in matches if slug in p.relative_to(root).parts]
        if not chosen:
            listed = "\n  ".join(str(p) for _, p in candidates)
            raise ValueError(
                f"slug={slug!r} matches none of the folders under {root} "
                f"that hold {list(required)}:\n  {listed}\n"
                "Pass one of these names as slug, or the folder itself as DATA_DIR."
            )
        shallowest = min(d for d, _ in chosen)
        candidates = [(d, p) for d, p in chosen if d == shallowest]
    if len(candidates) == 1:
        return candidates[0][1]
    listed = "\n  ".join(str(p) for _, p in candidates)
    raise ValueError(
        f"several folders under {root} hold {list(required)}:\n  {listed}\n"
        "Set DATA_DIR to the one you mean, or pass slug=<competition name>."
    )


def find_previous_run(run_name: str, *, input_root: str | Path = KAGGLE_INPUT, max_depth: int = 4) -> Path | None:
    """The newest folder named ``run_name`` holding a ``run.json`` under ``input_root``: on Kaggle, an
    earlier version's output attached as an input, whose checkpoints a new session resumes from."""
    _check_run_name(run_name)
    root = Path(input_root)
    if not root.is_dir():
        return None
    found = [p for _, p in _walk_dirs(root, max_depth) if p.name == run_name and (p / RUN_FILE).is_file()]
    return max(found, key=lambda p: (p / RUN_FILE).stat().st_mtime) if found else None


def _names_model(name: str, model_name: str) -> bool:
    """Whether a file or folder name stands for ``model_name``: ``resnet18.pth``,
    ``resnet18.a1_in1k.safetensors``, ``resnet18-5c106cde.pth`` do; ``resnet18d.pth`` does not."""
    name, model_name = name.lower(), model_name.lower()
    if name.startswith("models--"):  # a Hugging Face cache folder: models--timm--resnet18.a1_in1k
        name = name.rsplit("--", 1)[-1]
    if not name.startswith(model_name):
        return False
    rest = name[len(model_name):]
    return rest == "" or rest[0] in ".-_"


def _weight_files(root: Path, model_name: str, max_depth: int) -> list[Path]:
    found = []
    for _, directory in _walk_dirs(root, max_depth):
        try:
            with os.scandir(directory) as entries:
                files = [e.name for e in entries if e.is_file()]
        except OSError:
            continue
        parts = (root.name, *directory.relative_to(root).parts)
        named_dir = any(_names_model(part, model_name) for part in parts)
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if (suffix in WEIGHT_SUFFIXES and _names_model(name, model_name)) or \
                    (named_dir and name in _HUB_WEIGHT_FILES):
                found.append(directory / name)
    return found


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache (where timm and smp downloads land): ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    env = _env(environ)
    if env.get("HF_HUB_CACHE", "").strip():
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME", "").strip():
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME", "").strip() else \
        Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "huggingface" / "hub"


def _hub_snapshot(repo: Path) -> Path | None:
    """The snapshot a hub cache folder serves: the one ``refs/main`` names, else the newest."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = [p for p in (repo / "snapshots").glob("*") if p.is_dir()]
    return max(snapshots, key=lambda p: p.stat().st_mtime) if snapshots else None


def _hub_weight_files(hub: Path, model_name: str) -> list[Path]:
    """One weights file per cached repository named after the model (``models--timm--resnet18.a1_in1k``)."""
    found = []
    for repo in sorted(hub.glob(f"{_HUB_REPO_PREFIX}*")):
        if not repo.is_dir() or not _names_model(repo.name, model_name):
            continue
        snapshot = _hub_snapshot(repo)
        files = [snapshot / f for f in _HUB_WEIGHT_FILES if snapshot is not None and (snapshot / f).is_file()]
        if files:
            found.append(files[0])
    return found


def _weights_name(path: Path) -> str:
    """The model a weights file stands for: its stem, or for a hub file the folder it sits in (the
    repository's name in a hub cache, ``resnet18.a1_in1k`` for ``models--timm--resnet18.a1_in1k``)."""
    if path.name not in _HUB_WEIGHT_FILES:
        return path.stem.lower()
    for part in reversed(path.parent.parts):
        if part.startswith(_HUB_REPO_PREFIX):
            return part.rsplit("--", 1)[-1].lower()
    return path.parent.name.lower()


def find_weights(
    model_name: str,
    explicit: str | Path | None = None,
    *,
    input_root: str | Path = KAGGLE_INPUT,
    local_dir: str | Path = LOCAL_WEIGHTS_DIR,
    hub_cache: str | Path | None = None,
    prefer: Sequence[str] = (),
    max_depth: int = 6,
    required: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The pretrained weights file for ``model_name`` (a timm or smp encoder name), never downloaded.

    Looks at ``explicit`` (a file, or a folder to search), then under ``input_root`` (datasets and
    Kaggle Models attached to the session: ``<model>/pytorch/<variation>/<version>/``), then in
    ``local_dir`` (``./weights``), then in the Hugging Face hub cache (``hub_cache``, default
    `hub_cache_dir`), for ``<model_name>*.{safetensors,pth,pt,bin}`` or a hub snapshot folder named
    after the model. Several matches in one place are an error unless one is named exactly
    ``<model_name>`` or one of ``prefer`` (e.g. timm's default tag ``resnet18.a1_in1k``). Nothing
    found: FileNotFoundError saying where to put the file (None when ``required=False``).

    >>> find_weights("resnet18")  # doctest: +SKIP
    PosixPath('/kaggle/input/timm-resnet18/resnet18.a1_in1k.safetensors')
    """
    if not isinstance(model_name, str) or not model_name.strip() or "/" in model_name:
        raise ValueError(f"model_name={model_name!r} must be a model name such as 'resnet18' or "
                         "'efficientnet_b0' (no path: pass a file as explicit=...).")
    hub = Path(hub_cache) if hub_cache is not None else hub_cache_dir(environ)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise FileNotFoundError(f"WEIGHTS={str(explicit)!r} is not a file or folder: point it at the weights file "
                                    f"(.safetensors/.pth) of {model_name}, or at the folder that holds it.")
        places = [path]
    else:
        places = [Path(input_root), Path(local_dir), hub]
    exact_names = {model_name.lower(), *(p.lower() for p in prefer)}
    for place in places:
        if not place.is_dir():
            continue
        found = _hub_weight_files(place, model_name) if place == hub and explicit is None else \
            _weight_files(place, model_name, max_depth)
        exact = [p for p in found if _weights_name(p) in exact_names]
        if len(found) == 1 or len(exact) == 1:
            return exact[0] if len(exact) == 1 else found[0]
        if found:
            listed = "\n  ".join(map(str, found[:10])) + ("\n  ..." if len(found) > 10 else "")
            raise ValueError(f"several weights files for {model_name} under {place}:\n  {listed}\n"
                             "Set WEIGHTS to the one you mean.")
    if not required:
        return None
    looked = ", ".join(str(p) for p in places)
    raise FileNotFoundError(
        f"no pretrained weights for {model_name!r} found (looked in {looked} for "
        f"{model_name}*.safetensors/.pth/.pt/.bin): attach a Kaggle dataset or model holding the file "
        f"(`kagglekit weights {model_name} --out DIR` makes one), or put it in ./{LOCAL_WEIGHTS_DIR}/, or set "
        "WEIGHTS to its path; WEIGHTS=None trains from random initialisation.")


# --------------------------------------------------------------------------- directories


def working_dir(platform: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the platform's scratch dir: /kaggle/working, /content, or the current directory."""
    platform = _check_platform(detect_platform(environ) if platform is None else platform)
    if platform == "kaggle":
        return KAGGLE_WORKING
    if platform == "colab":
        return COLAB_CONTENT
    return Path.cwd()


def _scratch_dirs(platform: str | None, environ: Mapping[str, str] | None) -> list[Path]:
    """The scratch folders to try, best first (see `scratch_dir`)."""
    env = _env(environ)
    platform = _check_platform(detect_platform(env) if platform is None else platform)
    override = env.get(SCRATCH_VAR, "").strip()
    if override:
        return [Path(override).expanduser()]
    if platform == "kaggle":
        return [KAGGLE_TEMP, KAGGLE_SCRATCH_FALLBACK]
    if platform == "colab":
        return [COLAB_CONTENT / COLAB_SCRATCH_DIR]
    return [working_dir(platform, env) / LOCAL_SCRATCH_DIR]


def scratch_dir(platform: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where data extracted from the competition's archives goes (the folder is not created here:
    `make_scratch_dir` does).

    Kaggle: /kaggle/temp, space that is not saved as notebook output (`make_scratch_dir` falls back
    to /tmp/kagglekit when it cannot be created). Colab: /content/kagglekit_data, on the local disk,
    not Drive. Elsewhere: ``<cwd>/.kagglekit_data``. ``$KAGGLEKIT_SCRATCH`` overrides all three.
    """
    return _scratch_dirs(platform, environ)[0]


def make_scratch_dir(platform: str | None = None, environ: Mapping[str, str] | None = None, *,
                     log: Callable[[str], object] = print) -> Path:
    """Create and return `scratch_dir` (on Kaggle, /tmp/kagglekit when /kaggle/temp cannot be made)."""
    return _first_creatable(_scratch_dirs(platform, environ), log)


def _first_creatable(candidates: Sequence[Path], log: Callable[[str], object]) -> Path:
    """The first of `candidates` that exists or can be created; when none can, the last one's error."""
    *earlier, last = candidates
    for path, after in zip(earlier, candidates[1:]):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return path
        except OSError as e:
            log(f"cannot create {path} ({e.strerror or e}); extracted data goes to {after} instead")
    try:
        last.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the scratch folder {last} ({e.strerror or e}): set "
                               f"{SCRATCH_VAR} to a writable folder") from e
    return last


def _check_run_name(run_name: str) -> str:
    valid = "a plain folder name such as 'effnet_b0_fold0'"
    if not isinstance(run_name, str) or not run_name.strip():
        raise ValueError(f"run_name={run_name!r} must be a non-empty string, {valid}")
    forbidden = {"/", "\\", "\0", "..", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in run_name for s in forbidden) or run_name == ".":
        raise ValueError(
            f"run_name={run_name!r} must not hold path separators or '..', nor be '.'; use {valid}"
        )
    return run_name


def _mount_drive(drive_root: str) -> None:
    from google.colab import drive  # only exists on Colab

    drive.mount(drive_root)


def run_dir(
    run_name: str,
    *,
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    interactive: bool | None = None,
    drive_root: str | Path = DRIVE_ROOT,
    mount: Callable[[str], object] | None = None,
    local_root: str | Path | None = None,
    warn: Callable[[str], object] = warnings.warn,
) -> Path:
    """Create and return the persistent dir for ``run_name`` (checkpoints survive the session).

    Colab: ``<drive_root>/MyDrive/kagglekit/<run_name>`` (Drive is mounted when someone can approve
    it; otherwise a local folder and a warning). Kaggle: ``/kaggle/working/<run_name>``. Elsewhere:
    ``<local_root or ./runs>/<run_name>``. ``local_root``, when given, replaces the local default
    on every platform.
    """
    _check_run_name(run_name)
    platform = _check_platform(detect_platform(environ) if platform is None else platform)
    if local_root is not None:
        local = Path(local_root)
    elif platform == "kaggle":
        local = KAGGLE_WORKING
    else:
        local = working_dir(platform, environ) / "runs"

    target = local / run_name
    if platform == "colab":
        drive_runs = _drive_runs_dir(Path(drive_root), environ, interactive, mount, warn)
        if drive_runs is not None:
            target = drive_runs / run_name
    target.mkdir(parents=True, exist_ok=True)
    return target


def _drive_runs_dir(
    drive_root: Path,
    environ: Mapping[str, str] | None,
    interactive: bool | None,
    mount: Callable[[str], object] | None,
    warn: Callable[[str], object],
) -> Path | None:
    my_drive = drive_root / "MyDrive"
    lost = "checkpoints go to a local folder and will NOT survive a disconnect or runtime reset."
    if not my_drive.is_dir():  # already mounted (e.g. earlier in the session) needs no approval
        if interactive is None:
            interactive = has_live_frontend(environ)
        if not interactive:
            reason = headless_reason(environ) or "no notebook front end to approve the mount"
            warn(f"Google Drive is not mounted and cannot be mounted here ({reason}); {lost}")
            return None
        try:
            (mount or _mount_drive)(str(drive_root))
        except Exception as exc:  # any mount failure means the same thing: no Drive this session
            cause = f"{type(exc).__name__}: {exc}"
            warn(f"Could not mount Google Drive at {drive_root} ({cause}); {lost}")
            return None
        if not my_drive.is_dir():
            warn(f"Google Drive mount at {drive_root} shows no MyDrive folder; {lost}")
            return None
    return my_drive / DRIVE_SUBDIR
