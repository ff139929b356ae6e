"""Kaggle from the command line: push a notebook, download a competition, submit a file.

    kagglekit push classification --competition digit-recognizer --dataset me/kagglekit-nb-wheels
    kagglekit download digit-recognizer            # -> ./input/digit-recognizer, found by the notebooks
    kagglekit submit runs/a/submission.csv --competition digit-recognizer -m "resnet18, 5 folds"
    kagglekit restore alice/digits-resnet --out runs/classification   # a run saved in a notebook's output

Everything that talks to Kaggle goes through the `kaggle` package's `KaggleApi`, made by one
factory (`connect`, or the `api_factory` a caller passes, e.g. a fake in tests). The package is
imported only there: `import kaggle` authenticates on import and, in some versions, exits the
process when no credentials exist. `bundle` (the offline wheels) asks the same factory for the
dataset owner's user name. Credentials come from the environment (KAGGLE_USERNAME and
KAGGLE_KEY) or kaggle.json, as the kaggle package reads them; in a Kaggle notebook `connect` first
copies the notebook's Kaggle Secrets of those names into the environment (`use_kaggle_secrets`).
This module never prints, logs or writes them anywhere (only the user name goes into
kernel-metadata.json, as the kernel's owner).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import write_json

__all__ = [
    "ACCELERATORS", "KERNEL_METADATA_FILE", "KaggleCredentialsError", "KaggleError", "PushResult",
    "SubmissionRefused", "check_kernel", "check_kernel_metadata", "check_kernelspec", "connect", "credentials_help",
    "data_folder", "download", "find_sample", "kernel_metadata", "kernel_slug", "push", "restore_output", "submit",
    "use_kaggle_secrets", "username",
]

ApiFactory = Callable[[], Any]
Log = Callable[[str], None]

KERNEL_METADATA_FILE = "kernel-metadata.json"
DEFAULT_STAGING = Path("build") / "kaggle_push"   # push copies the notebook here, next to its metadata

# --gpu choice -> kernel-metadata.json `machine_shape`. The accepted names are listed in kagglesdk's
# ApiSaveKernelRequest.machine_shape docstring (kagglesdk/kernels/types/kernels_api_service.py:
# "NvidiaTeslaT4", "NvidiaTeslaP100", "Tpu1VmV38"); KaggleApi.kernels_push passes the metadata's
# `machine_shape` on unchanged (kaggle/api/kaggle_api_extended.py). "NvidiaTeslaT4" is the editor's
# "GPU T4 x2" (a session gets both T4s). None: no accelerator (enable_gpu false, no machine_shape).
ACCELERATORS: dict[str, str | None] = {"t4x2": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100", "none": None}

# What KaggleApi.kernels_push accepts (valid_push_language_types / valid_push_kernel_types).
_LANGUAGES = ("python", "r", "rmarkdown")
_KERNEL_TYPES = ("script", "notebook")
_REQUIRED_FIELDS = ("id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
                    "enable_internet", "competition_sources", "dataset_sources", "kernel_sources")
_MIN_TITLE = 5         # kernels_push: "Title must be at least five characters"
_MIN_KERNEL_SLUG = 5   # validate_kernel_string: "Kernel slug must be at least five characters"
_SLUG_SYNTAX = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")       # KaggleApi._validate_slug_syntax
_COMPETITION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")       # old competitions have capitals
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class KaggleError(RuntimeError):
    """A call to Kaggle failed; the message says why and what to do."""


class KaggleCredentialsError(KaggleError):
    """No usable Kaggle credentials: the message says where to put them."""


class SubmissionRefused(ValueError):
    """The submission file failed verification against the sample submission; nothing was sent."""


# ----------------------------------------------------------------------------- the API object


def _config_dir(environ: Mapping[str, str]) -> Path:
    """Where the kaggle package looks for kaggle.json (its own rule, without importing it)."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return Path(environ["KAGGLE_CONFIG_DIR"])
    home = Path(environ.get("HOME") or Path.home())
    legacy = home / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return legacy


def credentials_help(environ: Mapping[str, str] | None = None) -> str:
    """What to do when no Kaggle credentials are found."""
    env = os.environ if environ is None else environ
    return (
        "no Kaggle credentials found. Create an API token on kaggle.com (Settings > API > Create New "
        f"Token) and either save the downloaded kaggle.json as {_config_dir(env) / 'kaggle.json'} "
        "(then `chmod 600` it), or set the environment variables KAGGLE_USERNAME and KAGGLE_KEY. "
        "In a Kaggle notebook, add them as Kaggle Secrets: Add-ons > Secrets > Add Secret, one named "
        "KAGGLE_USERNAME (your user name) and one named KAGGLE_KEY (the \"key\" in kaggle.json), each with "
        "this notebook's box ticked (kagglekit reads both; the notebook also needs Internet on). "
        "On Colab: the same two names under Secrets (the key icon), with notebook access on. "
        "kagglekit never prints or saves the key."
    )


_SECRET_NAMES = ("KAGGLE_USERNAME", "KAGGLE_KEY")


def _secret_readers() -> list[Callable[[str], Any]]:
    """The secret stores of the platform this runs on: Kaggle Secrets, Colab's Secrets (either or none)."""
    readers: list[Callable[[str], Any]] = []
    try:
        from kaggle_secrets import UserSecretsClient  # only in Kaggle notebooks

        readers.append(UserSecretsClient().get_secret)
    except Exception:  # noqa: BLE001 - not on Kaggle, or its secrets service is unreachable
        pass
    try:
        from google.colab import userdata  # only on Colab

        readers.append(userdata.get)
    except Exception:  # noqa: BLE001 - not on Colab
        pass
    return readers


def use_kaggle_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Copy the notebook's secrets KAGGLE_USERNAME and KAGGLE_KEY (Kaggle Secrets, or Colab's) into
    `environ` (default os.environ), where the kaggle package reads them; returns the names it set.

    Nothing happens when both are set already (or KAGGLE_API_TOKEN is), or off Kaggle and Colab.
    A secret that is missing or not shared with this notebook is skipped. The values are never printed.
    """
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_API_TOKEN") or all(env.get(name) for name in _SECRET_NAMES):
        return []
    set_names: list[str] = []
    for read in _secret_readers():
        for name in _SECRET_NAMES:
            if env.get(name):
                continue
            try:
                value = read(name)
            except Exception:  # noqa: BLE001 - no such secret, or not attached to this notebook
                continue
            if isinstance(value, str) and value.strip():
                env[name] = value.strip()
                set_names.append(name)
    return set_names


def connect() -> Any:
    """An authenticated `kaggle.KaggleApi`; KaggleCredentialsError (not an exit) without credentials.

    The notebook's Kaggle Secrets (`use_kaggle_secrets`) are read first. The kaggle package is imported
    here, not when this module is imported. What it prints while authenticating (its own login help)
    is dropped; a warning about a readable kaggle.json is kept.
    """
    use_kaggle_secrets()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise KaggleCredentialsError(credentials_help()) from None
    except ImportError as e:
        raise KaggleError(f"the kaggle package cannot be imported ({e}): "
                          "pip install 'kaggle>=1.6' six (kaggle 2.x imports six without declaring it).") from None
    except Exception as e:  # noqa: BLE001 - token checks may go online; any failure means: not signed in
        raise KaggleCredentialsError(f"Kaggle sign-in failed ({type(e).__name__}); " + credentials_help()) from None
    finally:
        for line in printed.getvalue().splitlines():
            if line.startswith("Warning:"):
                print(f"kaggle: {line}", file=sys.stderr)
    return api


def _api(api_factory: ApiFactory | None) -> Any:
    return (api_factory or connect)()


def username(api: Any) -> str:
    """The Kaggle user name of the credentials (KAGGLE_USERNAME or kaggle.json's "username")."""
    name = api.get_config_value("username")
    if not name:
        raise KaggleCredentialsError("the Kaggle credentials name no user: " + credentials_help())
    return str(name)


def _secrets(api: Any) -> list[str]:
    values = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    config = getattr(api, "config_values", None)
    if isinstance(config, Mapping):
        values += [config.get("key"), config.get("token")]
    return [v for v in values if isinstance(v, str) and len(v) >= 8]


def _scrub(text: str, api: Any) -> str:
    for secret in _secrets(api):
        text = text.replace(secret, "***")
    return text


def _call(api: Any, what: str, method: str, *args: Any, hints: Mapping[int, str] | None = None,
          **kwargs: Any) -> Any:
    """`api.<method>(...)` with its failures (exceptions and exits) turned into a KaggleError."""
    hints = {401: "Kaggle rejected the credentials: check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json "
                  "(a new token replaces the old one).", **(hints or {})}
    try:
        return getattr(api, method)(*args, **kwargs)
    except SystemExit as e:
        raise KaggleError(f"{what} failed: the kaggle package stopped (exit status {e.code}).") from None
    except KaggleError:
        raise
    except Exception as e:  # noqa: BLE001 - requests, kagglesdk and protobuf errors alike
        status = getattr(getattr(e, "response", None), "status_code", None)
        detail = _scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, api)
        hint = hints.get(status, "") if isinstance(status, int) else ""
        if not hint and any(c.__name__ in ("ConnectionError", "Timeout") for c in type(e).__mro__):
            hint = ("Kaggle cannot be reached: in a Kaggle notebook turn Internet on (Settings > Internet), "
                    "elsewhere check the network.")
        raise KaggleError(f"{what} failed: {detail}" + (f". {hint}" if hint else "")) from None


# ----------------------------------------------------------------------------- checks


def _check_competition(competition: str) -> str:
    if not isinstance(competition, str) or not _COMPETITION.match(competition.strip()):
        raise ValueError(f"--competition {competition!r} is not a competition name: use the name in the "
                         "competition's URL, e.g. digit-recognizer for kaggle.com/competitions/digit-recognizer.")
    return competition.strip()


def _check_source(kind: str, value: str, *, min_slug: int = 1, name: str | None = None) -> str:
    parts = value.split("/") if isinstance(value, str) else []
    ok = len(parts) in (2, 3) and all(parts) and _OWNER.match(parts[0]) and len(parts[1]) >= min_slug
    if len(parts) == 3 and not parts[2].isdigit():
        ok = False
    if not ok:
        extra = f" (the slug has at least {min_slug} characters)" if min_slug > 1 else ""
        said = f"{name}={value!r}" if name else f"--{kind} {value!r}"
        raise ValueError(f"{said} must be OWNER/NAME or OWNER/NAME/VERSION as in its URL{extra}, "
                         f"e.g. alice/my-{kind}.")
    return value


def check_kernel(kernel: str, name: str = "kernel") -> str:
    """`kernel` as OWNER/SLUG or OWNER/SLUG/VERSION (kaggle.com/code/OWNER/SLUG), else a ValueError that
    repeats the parameter `name` and its value."""
    return _check_source("kernel", kernel.strip() if isinstance(kernel, str) else kernel,
                         min_slug=_MIN_KERNEL_SLUG, name=name)


def kernel_slug(title: str) -> str:
    """The URL slug Kaggle derives from a kernel title (the same `python-slugify` call kaggle makes)."""
    from slugify import slugify  # a dependency of the kaggle package

    return slugify(title)


def check_kernelspec(notebook: str | os.PathLike) -> dict[str, Any]:
    """Read a notebook and check it names its kernel (Kaggle and papermill both need
    metadata.kernelspec); returns the notebook's JSON."""
    path = Path(notebook)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .ipynb notebook ({e}).") from None
    spec = nb.get("metadata", {}).get("kernelspec") if isinstance(nb, dict) else None
    if not isinstance(spec, dict) or not spec.get("name"):
        raise ValueError(f"{path} has no metadata.kernelspec: Kaggle and papermill need it. Open and save it "
                         f"in Jupyter, or run `jupytext --set-kernel python3 {path}`.")
    return nb


def kernel_metadata(
    *,
    user: str,
    title: str,
    code_file: str,
    competition: str,
    datasets: Sequence[str] = (),
    kernels: Sequence[str] = (),
    gpu: str = "t4x2",
    internet: bool = True,
    public: bool = False,
) -> dict[str, Any]:
    """The kernel-metadata.json that `KaggleApi.kernels_push` reads, every setting explicit."""
    if gpu not in ACCELERATORS:
        raise ValueError(f"--gpu {gpu!r} is not known; use one of {', '.join(ACCELERATORS)}.")
    meta: dict[str, Any] = {
        "id": f"{user}/{kernel_slug(title)}",
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": not public,
        "enable_gpu": ACCELERATORS[gpu] is not None,
        "enable_tpu": False,
        "enable_internet": bool(internet),
        "competition_sources": [_check_competition(competition)],
        "dataset_sources": [_check_source("dataset", d) for d in datasets],
        "kernel_sources": [_check_source("kernel", k, min_slug=_MIN_KERNEL_SLUG) for k in kernels],
        "model_sources": [],
    }
    if ACCELERATORS[gpu] is not None:
        meta["machine_shape"] = ACCELERATORS[gpu]
    return meta


def check_kernel_metadata(meta: Mapping[str, Any], folder: str | os.PathLike | None = None) -> list[str]:
    """What `KaggleApi.kernels_push` (and the slug rules behind it) would object to, as sentences."""
    problems = [f"{name} is missing" for name in _REQUIRED_FIELDS if name not in meta]
    title = meta.get("title")
    if not isinstance(title, str) or len(title) < _MIN_TITLE:
        problems.append(f"title {title!r} must have at least {_MIN_TITLE} characters (--title)")
    kid = meta.get("id")
    parts = kid.split("/") if isinstance(kid, str) else []
    if len(parts) != 2 or not all(parts):
        problems.append(f"id {kid!r} must be USER/SLUG (no version)")
    elif isinstance(title, str):
        slug = parts[1]
        if slug != kernel_slug(title):
            problems.append(f"id slug {slug!r} is not the slug of the title ({kernel_slug(title)!r}): Kaggle "
                            "would give the kernel another URL")
        if len(slug) < _MIN_KERNEL_SLUG or not _SLUG_SYNTAX.match(slug):
            problems.append(f"slug {slug!r} must have at least {_MIN_KERNEL_SLUG} letters, digits or dashes: "
                            "choose a longer --title")
    if meta.get("language") not in _LANGUAGES:
        problems.append(f"language {meta.get('language')!r} must be one of {', '.join(_LANGUAGES)}")
    if meta.get("kernel_type") not in _KERNEL_TYPES:
        problems.append(f"kernel_type {meta.get('kernel_type')!r} must be one of {', '.join(_KERNEL_TYPES)}")
    for name in ("is_private", "enable_gpu", "enable_internet"):
        if name in meta and not isinstance(meta[name], bool):
            problems.append(f"{name} must be true or false, not {meta[name]!r}")
    shape = meta.get("machine_shape")
    shapes = [s for s in ACCELERATORS.values() if s]
    if shape is not None and shape not in shapes:
        problems.append(f"machine_shape {shape!r} must be one of {', '.join(shapes)}")
    if bool(shape) != bool(meta.get("enable_gpu")):
        problems.append("enable_gpu and machine_shape disagree (a GPU shape needs enable_gpu true)")
    for kind, key, min_slug in (("dataset", "dataset_sources", 1), ("kernel", "kernel_sources", _MIN_KERNEL_SLUG)):
        for source in meta.get(key) or []:
            try:
                _check_source(kind, source, min_slug=min_slug)
            except ValueError as e:
                problems.append(str(e))
    if folder is not None and isinstance(meta.get("code_file"), str) and \
            not (Path(folder) / meta["code_file"]).is_file():
        problems.append(f"code_file {meta['code_file']!r} is not in {folder}")
    return problems


# ----------------------------------------------------------------------------- push


@dataclass
class PushResult:
    """What `push` staged (and sent, unless a dry run)."""

    folder: Path
    metadata: dict[str, Any]
    pushed: bool = False
    url: str | None = None
    version: int | None = None
    warnings: list[str] = field(default_factory=list)


def push(
    notebook: str | os.PathLike,
    *,
    competition: str,
    datasets: Sequence[str] = (),
    kernels: Sequence[str] = (),
    gpu: str = "t4x2",
    internet: bool = True,
    public: bool = False,
    title: str | None = None,
    out: str | os.PathLike | None = None,
    dry_run: bool = False,
    api_factory: ApiFactory | None = None,
    log: Log = print,
) -> PushResult:
    """Stage a notebook with its kernel-metadata.json and push it as a new Kaggle kernel version.

    `notebook` is a short name (`classification`) or an .ipynb path. The staging folder (default
    build/kaggle_push/<slug>) holds a copy of the notebook and the metadata; `dry_run` stops there.
    """
    from .runner import resolve_notebook

    path = resolve_notebook(str(notebook))
    check_kernelspec(path)
    competition = _check_competition(competition)
    if title is None:
        title = f"{competition} {path.stem.replace('_', ' ')}"
    api = _api(api_factory)
    meta = kernel_metadata(user=username(api), title=title, code_file=path.name, competition=competition,
                           datasets=datasets, kernels=kernels, gpu=gpu, internet=internet, public=public)
    problems = check_kernel_metadata(meta)
    if problems:
        raise ValueError("the kernel metadata would be refused: " + "; ".join(problems) + ".")
    folder = Path(out) if out is not None else DEFAULT_STAGING / kernel_slug(title)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: choose a folder for the notebook and its metadata.")
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / path.name
    if not (staged.exists() and staged.resolve() == path.resolve()):
        shutil.copyfile(path, staged)
    write_json(folder / KERNEL_METADATA_FILE, meta)
    result = PushResult(folder=folder, metadata=meta)
    if not internet and not datasets:
        result.warnings.append("internet is off and no dataset is attached: the notebook cannot install "
                               "kagglekit_nb. Build the wheels with `kagglekit bundle`, upload them as a "
                               "dataset and pass it with --dataset OWNER/NAME.")
    for warning in result.warnings:
        log(f"WARNING: {warning}")
    where = f"{meta['id']} ({'public' if public else 'private'}, GPU {gpu}, internet {'on' if internet else 'off'})"
    if dry_run:
        log(f"dry run: staged {staged.name} and {KERNEL_METADATA_FILE} in {folder} for {where}; nothing pushed")
        return result
    response = _call(api, "pushing the notebook", "kernels_push", str(folder),
                     hints={403: f"accept the rules of {competition} on kaggle.com with this account first.",
                            404: "check the competition, dataset and kernel names."})
    error = getattr(response, "error", None)
    if error:
        raise KaggleError(f"Kaggle refused the notebook: {_scrub(str(error), api)}")
    for attr, kind in (("invalid_dataset_sources", "dataset"), ("invalid_competition_sources", "competition"),
                       ("invalid_kernel_sources", "kernel")):
        bad = getattr(response, attr, None)
        if bad:
            result.warnings.append(f"Kaggle did not attach these {kind} sources: {bad}")
            log(f"WARNING: {result.warnings[-1]}")
    result.pushed = True
    result.url = getattr(response, "url", None) or None
    result.version = getattr(response, "version_number", None) or None
    log(f"pushed {where}" + (f" as version {result.version}" if result.version else "")
        + (f": {result.url}" if result.url else ""))
    return result


# ----------------------------------------------------------------------------- download


def data_folder(folder: str | os.PathLike) -> Path:
    """The folder to pass as --data: `folder`, or its only subfolder when it holds nothing else."""
    folder = Path(folder)
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")] if folder.is_dir() else []
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def download(
    competition: str,
    out: str | os.PathLike | None = None,
    *,
    force: bool = False,
    api_factory: ApiFactory | None = None,
    log: Log = print,
) -> Path:
    """Download and unzip a competition's files; returns the folder to use as DATA_DIR / --data.

    The default `out` is `<input dir>/<competition>` (./input/<competition> off Kaggle), where a
    notebook with DATA_DIR=None finds it. A folder that already holds files is left alone unless
    `force` (then the download is unzipped over it).
    """
    from . import env

    competition = _check_competition(competition)
    folder = Path(out) if out is not None else env.input_dir() / competition
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: choose a folder for the competition's files.")
    existing = [e for e in folder.iterdir() if e.suffix != ".zip"] if folder.is_dir() else []
    if existing and not force:
        log(f"{folder} already holds the files of a download; nothing downloaded (--force downloads again "
            "and unzips over them)")
        return data_folder(folder)
    api = _api(api_factory)
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.glob("*.zip"))
    _call(api, f"downloading {competition}", "competition_download_files", competition, path=str(folder),
          force=force, quiet=False,
          hints={403: f"accept the competition's rules first: https://www.kaggle.com/competitions/{competition}"
                      "/rules (signed in as the account of these credentials).",
                 404: f"no competition named {competition!r}: use the name in its URL."})
    archives = sorted(set(folder.glob("*.zip")) - before) or sorted(folder.glob(f"{competition}.zip"))
    for archive in archives:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(folder)  # zipfile drops absolute paths and '..' parts
        except zipfile.BadZipFile:
            raise KaggleError(f"{archive} is not a complete zip file: delete it and download again.") from None
        archive.unlink()
    found = data_folder(folder)
    _save_info(api, competition, found, log)
    log(f"downloaded {competition} to {found}")
    return found


INFO_FILE = "competition.json"  # the competition's evaluation metric, read by the classification notebook


def _save_info(api: Any, competition: str, folder: Path, log: Log) -> None:
    """Write the competition's evaluation metric (Kaggle's `evaluationMetric` text) next to its data, so a
    notebook scores and picks epochs by it. Optional: an API without it leaves the default metric."""
    from ._atomic import write_json

    try:
        found = api.competitions_list(search=competition) or []
    except Exception as e:  # the listing is a nicety: a refused or changed call must not fail the download
        log(f"the competition's evaluation metric is unknown ({type(e).__name__}); set METRIC in the notebook")
        return
    for entry in found:
        ref = str(getattr(entry, "ref", "") or "")
        if ref.rstrip("/").rsplit("/", 1)[-1] != competition:
            continue
        metric = getattr(entry, "evaluation_metric", None) or getattr(entry, "evaluationMetric", None)
        if metric:
            write_json(folder / INFO_FILE, {"competition": competition, "evaluation_metric": str(metric)})
            log(f"evaluation metric of {competition}: {metric} (saved in {folder / INFO_FILE})")
        return


# ----------------------------------------------------------------------------- restore

# The download lands in <out>/.restore-XXXX: inside `out`, so moving the run out of it is a rename (one
# filesystem), and a writable place even when `out` is /kaggle/working (whose parent is read-only).
_STAGING_PREFIX = ".restore-"


def restore_output(
    kernel: str,
    out: str | os.PathLike,
    *,
    run_name: str | None = None,
    api_factory: ApiFactory | None = None,
    log: Log = print,
) -> Path:
    """Continue a run saved in a Kaggle notebook's output: download the output of `kernel`
    (OWNER/SLUG for its latest version, OWNER/SLUG/VERSION for one) and move the run folder in it into
    `out`; returns `out`.

    The run folder is the one holding run.json: the output's root, else its folder `run_name`
    (/kaggle/working/<RUN_NAME> is where a notebook with OUTPUT_DIR = None saves its run), else, with
    `run_name` None, the only run folder in it. A folder that already holds a run (run.json) is never
    touched: FileExistsError, before anything is downloaded. The download goes to a staging folder
    inside `out` and is moved into place file by file (renames), run.json last, so `out` holds a run
    only once all of it is there; a restore cut short leaves no run.json and is simply done again.
    Files already in `out` are kept, never replaced.

        kaggle_io.restore_output("alice/digits-resnet", "/kaggle/working/classification",
                                 run_name="classification")
    """
    from . import env
    from .lock import LOCK_FILE, acquire

    kernel = check_kernel(kernel)
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder: restore the run into a folder.")
    if (folder / env.RUN_FILE).exists():
        raise FileExistsError(f"{folder} already holds a run ({env.RUN_FILE}): nothing was restored from {kernel} "
                              "and nothing in it changed. Continue that run as it is, or restore into another "
                              "folder (another OUTPUT_DIR or --out).")
    api = _api(api_factory)  # no credentials: fail before anything is created
    folder.mkdir(parents=True, exist_ok=True)
    acquire(folder, log=log)  # one writer per run folder (the run that restores holds it already)
    for stale in folder.glob(_STAGING_PREFIX + "*"):  # left by a restore that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder))
    try:
        log(f"downloading the output of {kernel} ...")
        _call(api, f"downloading the output of {kernel}", "kernels_output", kernel, path=str(staging), force=True,
              quiet=True, hints={404: f"no notebook {kernel!r} that these credentials may read: use OWNER/SLUG "
                                      "from its URL, kaggle.com/code/OWNER/SLUG (a private notebook is readable "
                                      "only with its owner's key)."})
        found = _run_in_output(staging, kernel, run_name, log_name=f"{kernel.split('/')[1]}.log")
        files, size = _count(found)
        sessions = _sessions(found / env.RUN_FILE)
        kept = _move_into(found, folder, skip={LOCK_FILE, env.RUN_FILE, f"{kernel.split('/')[1]}.log"}
                          if found == staging else {LOCK_FILE, env.RUN_FILE})
        if (folder / env.RUN_FILE).exists():  # nobody else writes here (the lock), but never replace a run
            raise FileExistsError(f"{folder} gained a {env.RUN_FILE} while restoring: kept it, restored files "
                                  "stay next to it.")
        os.replace(found / env.RUN_FILE, folder / env.RUN_FILE)  # the run exists from here on
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    where = "the output's root" if found == staging else f"{found.relative_to(staging)}/"
    log(f"restored the run saved by {kernel} ({where}: {files} files, {size / 2**20:.1f} MiB"
        + (f", {sessions} session(s) so far" if sessions else "") + f") into {folder}"
        + (f"; kept {len(kept)} file(s) already there (e.g. {kept[0]})" if kept else ""))
    return folder


def _run_in_output(staging: Path, kernel: str, run_name: str | None, *, log_name: str) -> Path:
    """The run folder inside a downloaded notebook output (see `restore_output`)."""
    from . import env

    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    content = [f for f in files if f != log_name]  # kernels_output also saves the session's log as <slug>.log
    if not content:
        raise KaggleError(f"the notebook {kernel} has no output yet: its version saved no files. Run a version "
                          "to the end (Save Version > Save & Run All) so its run folder is saved, or name a "
                          "version that saved one as OWNER/SLUG/VERSION (a version still running has no output).")
    if (staging / env.RUN_FILE).is_file():
        return staging
    if run_name and (staging / run_name / env.RUN_FILE).is_file():
        return staging / run_name
    runs = sorted(p.parent.relative_to(staging).as_posix() for p in staging.rglob(env.RUN_FILE))
    if run_name is None and len(runs) == 1:
        return staging / runs[0]
    where = f"at its root or in {run_name}/" if run_name else "at its root"
    found = (f" It holds runs in {', '.join(r + '/' for r in runs)}: set RUN_NAME (kagglekit restore --run-name) "
             "to the one to continue." if runs else
             " Was that version run with a kagglekit notebook, and did it finish its first cell?")
    raise KaggleError(f"the output of {kernel} holds no run folder: no {env.RUN_FILE} {where} "
                      f"({len(content)} files, e.g. {', '.join(content[:3])}).{found}")


def _count(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _sessions(record: Path) -> int | None:
    try:
        value = json.loads(record.read_text()).get("sessions")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _move_into(src: Path, dst: Path, *, skip: set[str] = frozenset()) -> list[str]:
    """Move the entries of `src` into `dst` by renames, merging folders; an entry `dst` already has is
    kept (never replaced). Returns the kept paths, relative to `dst`."""
    kept: list[str] = []
    for entry in sorted(src.iterdir()):
        if entry.name in skip or entry.name.startswith(_STAGING_PREFIX):
            continue
        target = dst / entry.name
        if not target.exists() and not target.is_symlink():
            os.replace(entry, target)
        elif entry.is_dir() and target.is_dir() and not target.is_symlink():
            kept += [f"{entry.name}/{k}" for k in _move_into(entry, target)]
        else:
            kept.append(entry.name)
    return kept


# ----------------------------------------------------------------------------- submit


def find_sample(submission: str | os.PathLike, competition: str | None = None) -> Path | None:
    """The sample submission to check `submission` against: sample_submission.csv next to it, else
    in the downloaded competition folder (`<input dir>/<competition>`), else None."""
    from . import env

    here = Path(submission).parent / "sample_submission.csv"
    if here.is_file():
        return here
    if competition:
        root = env.input_dir() / competition
        if root.is_dir():
            found = sorted(root.glob("sample_submission.csv")) + sorted(root.glob("*/sample_submission.csv"))
            if found:
                return found[0]
    return None


def submit(
    file: str | os.PathLike,
    *,
    competition: str,
    message: str,
    sample: str | os.PathLike | None = None,
    api_factory: ApiFactory | None = None,
    log: Log = print,
) -> Any:
    """Verify `file` against the sample submission (when one is found) and submit it.

    An invalid file raises SubmissionRefused with the reasons and is not sent.
    """
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} does not exist: pass the CSV a run wrote "
                                "(e.g. runs/<name>/submission.csv).")
    competition = _check_competition(competition)
    if not isinstance(message, str) or not message.strip():
        raise ValueError("-m/--message must describe the submission, e.g. -m 'resnet18, 5 folds, TTA'.")
    if sample is not None and not Path(sample).is_file():
        raise FileNotFoundError(f"--sample {sample} does not exist: pass the competition's sample_submission.csv.")
    sample_path = Path(sample) if sample is not None else find_sample(path, competition)
    if sample_path is not None:
        from .verification import verify

        report = verify(path, sample_path)
        if not report.valid:
            raise SubmissionRefused(f"not submitted: {path} is invalid.\n{report.format()}")
        log(f"verified {path} against {sample_path}: valid")
    else:
        log(f"WARNING: {path} is not verified: no sample_submission.csv next to it or in the downloaded "
            f"competition folder (pass --sample to check it first)")
    api = _api(api_factory)
    response = _call(api, f"submitting to {competition}", "competition_submit", str(path), message, competition,
                     hints={403: f"accept the rules of {competition} with this account first (or the "
                                 "competition is closed to submissions).",
                            404: f"no competition named {competition!r}: use the name in its URL."})
    text = str(getattr(response, "message", "") or "")
    if text == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None):
        raise KaggleError(f"submitting to {competition} failed: {text} (the upload did not complete; try again).")
    log(f"submitted {path} to {competition}" + (f": {_scrub(text, api)}" if text else ""))
    return response
