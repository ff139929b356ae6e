"""The offline wheels bundle (`kagglekit bundle`): the kit's wheel and the few packages Kaggle's image
lacks, in a folder to upload as a Kaggle dataset, so internet-off notebooks install from it alone.

    kagglekit bundle --out wheels                  # upload with `kaggle datasets create -p wheels`

The notebooks' setup cell (`setup_cell`) finds the folder under /kaggle/input and installs from it.
Kaggle is asked only for the user name that owns the dataset (through `kaggle_io`, which keeps
`import kaggle` lazy); without credentials the metadata says where to put it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import sha256_file, write_json
from .kaggle_io import _OWNER, _SLUG_SYNTAX, ApiFactory, KaggleError, Log, _api, username
from .setup_cell import WHEEL_GLOB

__all__ = ["BUNDLE_MANIFEST", "DEFAULT_BUNDLE_DATASET", "KAGGLE_MISSING", "Bundle", "BundleError", "build_bundle"]

DATASET_METADATA_FILE = "dataset-metadata.json"
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_README = "README.txt"
DEFAULT_BUNDLE_DATASET = "kagglekit-nb-wheels"

# Packages the kit needs that Kaggle's Python image does not ship; `kagglekit bundle` builds their
# wheels (without their dependencies: those are on the image) next to the kit's own. Keep it short:
# each entry is a download for every user of an internet-off competition.
KAGGLE_MISSING: dict[str, str] = {
    # The glacier notebooks' U-Net. Not in Kaggle's image. From 0.4 on it needs only timm,
    # huggingface-hub, safetensors, torch, torchvision, pillow, numpy and tqdm, all on the image;
    # 0.3.x pinned an old timm and pulled pretrainedmodels and efficientnet-pytorch.
    "segmentation-models-pytorch>=0.4": "smp U-Net for the glacier notebooks",
}


class BundleError(RuntimeError):
    """Building the wheels bundle failed; an earlier bundle in the folder is left as it was."""


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
    for folder in ("kagglekit_nb", "notebooks"):  # the wheel carries the notebooks as kagglekit_nb/notebooks
        shutil.copytree(root / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".ipynb_checkpoints"))
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
            "wheels": [{"file": w.name, "bytes": w.stat().st_size, "sha256": sha256_file(w)} for w in wheels],
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
    """Whether this environment can build the kit's wheel without pip's isolated build env (offline):
    setuptools 70.1+ builds wheels itself; an older one needs the `wheel` package beside it."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or ((major, minor) >= (68, 0) and importlib.util.find_spec("wheel") is not None)


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
