"""Kaggle from the command line: push a notebook, download a competition, submit a file, bundle wheels.

    kagglekit push classification --competition digit-recognizer --dataset me/kagglekit-nb-wheels
    kagglekit download digit-recognizer            # -> ./input/digit-recognizer, found by the notebooks
    kagglekit submit runs/a/submission.csv --competition digit-recognizer -m "resnet18, 5 folds"
    kagglekit bundle --out wheels                  # upload with `kaggle datasets create -p wheels`

Everything that talks to Kaggle goes through the `kaggle` package's `KaggleApi`, made by one
factory (`connect`, or the `api_factory` a caller passes, e.g. a fake in tests). The package is
imported only there: `import kaggle` authenticates on import and, in some versions, exits the
process when no credentials exist. Credentials come from the environment (KAGGLE_USERNAME and
KAGGLE_KEY) or kaggle.json, as the kaggle package reads them; this module never prints, logs or
writes them anywhere (only the user name goes into kernel-metadata.json, as the kernel's owner).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import write_json
from .setup_cell import WHEEL_GLOB

__all__ = [
    "ACCELERATORS", "KAGGLE_MISSING", "KERNEL_METADATA_FILE", "Bundle", "BundleError", "KaggleCredentialsError",
    "KaggleError", "PushResult", "SubmissionRefused", "build_bundle", "check_kernel_metadata", "check_kernelspec",
    "connect", "credentials_help", "data_folder", "download", "find_sample", "kernel_metadata", "kernel_slug",
    "push", "submit", "username",
]

ApiFactory = Callable[[], Any]
Log = Callable[[str], None]

KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_README = "README.txt"
DEFAULT_STAGING = Path("build") / "kaggle_push"   # push copies the notebook here, next to its metadata
DEFAULT_BUNDLE_DATASET = "kagglekit-nb-wheels"

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

# Packages the kit needs that Kaggle's Python image does not ship; `kagglekit bundle` builds their
# wheels (without their dependencies: those are on the image) next to the kit's own. Keep it short:
# each entry is a download for every user of an internet-off competition.
KAGGLE_MISSING: dict[str, str] = {
    # The glacier notebooks' U-Net. Not in Kaggle's image. From 0.4 on it needs only timm,
    # huggingface-hub, safetensors, torch, torchvision, pillow, numpy and tqdm, all on the image;
    # 0.3.x pinned an old timm and pulled pretrainedmodels and efficientnet-pytorch.
    "segmentation-models-pytorch>=0.4": "smp U-Net for the glacier notebooks",
}


class KaggleError(RuntimeError):
    """A call to Kaggle failed; the message says why and what to do."""


class KaggleCredentialsError(KaggleError):
    """No usable Kaggle credentials: the message says where to put them."""


class SubmissionRefused(ValueError):
    """The submission file failed verification against the sample submission; nothing was sent."""


class BundleError(RuntimeError):
    """Building the wheels bundle failed; an earlier bundle in the folder is left as it was."""


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
        "(then `chmod 600` it), or set the environment variables KAGGLE_USERNAME and KAGGLE_KEY "
        "(on Colab or Kaggle: as secrets). kagglekit never prints or saves the key."
    )


def connect() -> Any:
    """An authenticated `kaggle.KaggleApi`; KaggleCredentialsError (not an exit) without credentials.

    The kaggle package is imported here, not when this module is imported. What it prints while
    authenticating (its own login help) is dropped; a warning about a readable kaggle.json is kept.
    """
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
        raise KaggleError(f"{what} failed: {detail}" + (f". {hint}" if hint else "")) from None


# ----------------------------------------------------------------------------- checks


def _check_competition(competition: str) -> str:
    if not isinstance(competition, str) or not _COMPETITION.match(competition.strip()):
        raise ValueError(f"--competition {competition!r} is not a competition name: use the name in the "
                         "competition's URL, e.g. digit-recognizer for kaggle.com/competitions/digit-recognizer.")
    return competition.strip()


def _check_source(kind: str, value: str, *, min_slug: int = 1) -> str:
    parts = value.split("/") if isinstance(value, str) else []
    ok = len(parts) in (2, 3) and all(parts) and _OWNER.match(parts[0]) and len(parts[1]) >= min_slug
    if len(parts) == 3 and not parts[2].isdigit():
        ok = False
    if not ok:
        extra = f" (the slug has at least {min_slug} characters)" if min_slug > 1 else ""
        raise ValueError(f"--{kind} {value!r} must be OWNER/NAME or OWNER/NAME/VERSION as in its URL{extra}, "
                         f"e.g. alice/my-{kind}.")
    return value


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
    log(f"downloaded {competition} to {found}")
    return found


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


# ----------------------------------------------------------------------------- offline wheels bundle


@dataclass
class Bundle:
    """A folder of wheels to upload as a Kaggle dataset for internet-off notebooks."""

    folder: Path
    wheels: list[Path]
    manifest: dict[str, Any]


def _run_pip(args: Sequence[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BundleError(f"`pip {' '.join(args)}` failed:\n{tail}")


def _source_root() -> Path:
    root = Path(__file__).resolve().parent.parent
    project = root / "pyproject.toml"
    if not project.is_file() or not re.search(r'^name\s*=\s*"kagglekit_nb"', project.read_text(), re.MULTILINE):
        raise BundleError("`kagglekit bundle` builds the kit's wheel from its source: run it from a checkout "
                          "of kagglekit_nb installed with `pip install -e .`.")
    return root


def _copy_source(root: Path, dest: Path) -> Path:
    """The files a wheel is built from, copied so that stale build/ output never gets in."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt", "MANIFEST.in", "setup.cfg", "setup.py"):
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    shutil.copytree(root / "kagglekit_nb", dest / "kagglekit_nb",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dest


def _check_dataset(dataset: str) -> tuple[str, str]:
    parts = dataset.split("/") if isinstance(dataset, str) else []
    if len(parts) != 2 or not _OWNER.match(parts[0] or "-") or not _SLUG_SYNTAX.match(parts[1]) \
            or not 6 <= len(parts[1]) <= 50:
        raise ValueError(f"--dataset {dataset!r} must be OWNER/NAME with a NAME of 6 to 50 lowercase letters, "
                         f"digits and dashes, e.g. alice/{DEFAULT_BUNDLE_DATASET}.")
    return parts[0], parts[1]


def _bundle_owner(api_factory: ApiFactory | None, log: Log) -> str:
    try:
        return username(_api(api_factory))
    except KaggleError:
        log("WARNING: no Kaggle credentials here, so dataset-metadata.json names no owner: edit its \"id\" "
            "or build again with --dataset OWNER/NAME before `kaggle datasets create`.")
        return "INSERT_YOUR_KAGGLE_USERNAME"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _readme(wheels: Iterable[Path], dataset: str, all_dependencies: bool) -> str:
    listed = "\n".join(f"  {w.name}" for w in wheels)
    scope = "the kit and every dependency" if all_dependencies else \
        "the kit and the packages Kaggle's image lacks (everything else comes from the image)"
    return f"""kagglekit_nb wheels for internet-off Kaggle notebooks: {scope}.

{listed}

Upload this folder as a Kaggle dataset (the first time; then `kaggle datasets version -p DIR -m ...`):
  kaggle datasets create -p DIR
Attach the dataset ({dataset}) to the notebook. The notebook's setup cell finds the
{WHEEL_GLOB} file under /kaggle/input and installs from this folder only:
  pip install --no-index --find-links /kaggle/input/<this dataset> kagglekit_nb
manifest.json lists each wheel with its size and SHA-256.
"""


def build_bundle(
    out: str | os.PathLike,
    *,
    all_dependencies: bool = False,
    packages: Sequence[str] = (),
    defaults: bool = True,
    dataset: str | None = None,
    api_factory: ApiFactory | None = None,
    pip: Callable[[Sequence[str]], None] = _run_pip,
    log: Log = print,
) -> Bundle:
    """Build the wheels an internet-off notebook installs from, ready to upload as a Kaggle dataset.

    Always the kit's own wheel (built from the source checkout, without dependencies); then either
    every dependency (`all_dependencies`: for an image without the scientific stack, large) or only
    the packages Kaggle's image lacks (`KAGGLE_MISSING` when `defaults`, plus `packages`), each
    without its dependencies. Writes manifest.json, README.txt and dataset-metadata.json. `out` must
    be new, empty, or an earlier bundle (which is replaced only once the new one is complete).
    """
    from . import __version__

    folder = Path(out)
    owner, slug = _check_dataset(dataset) if dataset is not None else (None, DEFAULT_BUNDLE_DATASET)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: choose a folder for the wheels.")
    old = [e for e in folder.iterdir() if not e.name.startswith(".")] if folder.is_dir() else []
    if old and not (folder / BUNDLE_MANIFEST).is_file():
        raise ValueError(f"--out {folder} already holds other files: choose a new or empty folder "
                         "(an earlier bundle there would be replaced).")
    specs = [] if all_dependencies else [*(KAGGLE_MISSING if defaults else ()), *packages]
    if owner is None:
        owner = _bundle_owner(api_factory, log)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        wheels_dir = work / "wheels"
        source = _copy_source(_source_root(), work / "src")
        build = ["wheel", "--no-deps", "--wheel-dir", str(wheels_dir)]
        # Build with the setuptools already here when there is one: an isolated build would fetch it.
        local_backend = ["--no-build-isolation"] if _has_setuptools() else []
        log(f"building the kagglekit_nb {__version__} wheel")
        pip([*build, *local_backend, str(source)])
        kit = sorted(wheels_dir.glob(WHEEL_GLOB))
        if len(kit) != 1:
            raise BundleError(f"building the kit's wheel gave {[p.name for p in kit]}, not one {WHEEL_GLOB}.")
        if all_dependencies:
            log("building wheels of every dependency (this downloads torch and the rest: large)")
            pip(["wheel", "--wheel-dir", str(wheels_dir), "--find-links", str(wheels_dir), str(kit[0])])
        elif specs:
            log(f"building wheels of {', '.join(specs)} (without their dependencies: Kaggle's image has them)")
            pip([*build, *specs])
        wheels = sorted(wheels_dir.glob("*.whl"))
        manifest = {
            "kagglekit_nb": __version__,
            "scope": "all dependencies" if all_dependencies else "kit + packages Kaggle's image lacks",
            "requested": ["kagglekit_nb", *specs],
            "built_with_python": sys.version.split()[0],
            "wheels": [{"file": w.name, "bytes": w.stat().st_size, "sha256": _sha256(w)} for w in wheels],
            "install": "pip install --no-index --find-links <this folder> kagglekit_nb",
        }
        write_json(wheels_dir / BUNDLE_MANIFEST, manifest)
        write_json(wheels_dir / DATASET_METADATA_FILE, {
            "title": slug.replace("-", " "),
            "id": f"{owner}/{slug}",
            "licenses": [{"name": "other"}],
            "description": "Wheels of kagglekit_nb and the packages it needs that Kaggle's image lacks, "
                           "for notebooks with internet off. Built by `kagglekit bundle`; see README.txt.",
        })
        (wheels_dir / BUNDLE_README).write_text(_readme(wheels, f"{owner}/{slug}", all_dependencies))
        _replace_bundle(folder, wheels_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wheels = sorted(folder.glob("*.whl"))
    log(f"wrote {len(wheels)} wheel(s) to {folder}; upload with `kaggle datasets create -p {folder}`")
    return Bundle(folder=folder, wheels=wheels, manifest=manifest)


def _has_setuptools() -> bool:
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


def _replace_bundle(folder: Path, new: Path) -> None:
    """Swap the finished bundle in: the earlier bundle's files go only after the new ones are in place."""
    previous: set[str] = set()
    if (folder / BUNDLE_MANIFEST).is_file():
        with contextlib.suppress(OSError, ValueError):
            previous = {w["file"] for w in json.loads((folder / BUNDLE_MANIFEST).read_text())["wheels"]}
    folder.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in new.iterdir()}
    for item in new.iterdir():
        os.replace(item, folder / item.name)
    for name in previous - names:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
