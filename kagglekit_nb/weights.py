"""Pretrained weights: which file a model starts from, and where it came from.

    w = resolve_weights("resnet18", "auto", repo=timm_repo("resnet18"))
    model = timm.create_model("resnet18", **timm_kwargs(w), in_chans=1, num_classes=10)
    run.record["weights"] = w.record()

``WEIGHTS = "auto"`` (every notebook's default) resolves in this order:

1. weights attached to the session, found by model name (`env.find_weights`: Kaggle Models and
   datasets under /kaggle/input, ``./weights``, the Hugging Face hub cache): source ``"attached"``;
2. else the hub download, when the session has internet (`has_internet`: no ``HF_HUB_OFFLINE``, a
   TCP connect to the hub within ``CONNECT_TIMEOUT_S``): the same file ``timm.create_model(...,
   pretrained=True)`` fetches, into the same cache; source ``"hub"``;
3. else random initialisation, with one warning saying how to attach weights: source ``"random"``.

``WEIGHTS = None`` is random initialisation on purpose (no warning); a path is that file (or the
weights of the model in that folder): source ``"file"``. Every resolved file is loaded from disk
(timm's ``pretrained_cfg_overlay=dict(file=...)``), so timm adapts the first layer to ``in_chans`` and
replaces the head, and the model's ``pretrained_cfg`` (mean/std) is that of the weights.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env
from ._atomic import sha256_file, write_json

__all__ = ["AUTO", "CONNECT_TIMEOUT_S", "SOURCES", "Repo", "Weights", "WeightsError", "has_internet", "missing_tensors", "read_state_dict",
           "resolve_weights", "save_weights", "smp_repo", "timm_kwargs", "timm_repo"]

AUTO = "auto"
SOURCES = ("attached", "hub", "random", "file")
HUB_HOST = "huggingface.co"
# An offline session must not hang: one TCP connect (name lookup included) gets this long, once per process.
CONNECT_TIMEOUT_S = 2.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_CONFIG_FILE = "config.json"               # timm's hub config: {"architecture", "pretrained_cfg": {mean, std, ...}}
_NORMALISATION_KEYS = ("mean", "std")
DATASET_METADATA_FILE = "dataset-metadata.json"
DEFAULT_WEIGHTS_DATASET = "kagglekit-weights"


class WeightsError(RuntimeError):
    """`save_weights` could not get a model's weights (no internet, a failed download)."""


@dataclass(frozen=True)
class Repo:
    """A Hugging Face hub repository holding a model's weights (``timm/resnet18.a1_in1k``)."""

    repo_id: str
    revision: str | None = None
    filenames: tuple[str, ...] = _HUB_FILES

    @property
    def name(self) -> str:
        """The repository's name, e.g. ``resnet18.a1_in1k``: the folder the weights are saved in."""
        return self.repo_id.rsplit("/", 1)[-1]


def timm_repo(model_name: str) -> Repo | None:
    """The hub repository timm's ``pretrained=True`` downloads for ``model_name`` (its default tag
    when none is given); None for an unknown name or one without hub weights."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id or cfg.hf_hub_id.endswith("/"):
        return None
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
    return Repo(cfg.hf_hub_id, filenames=files)


def smp_repo(encoder: str) -> Repo | None:
    """The hub repository of an smp encoder's ImageNet weights: timm's for ``tu-<timm name>``,
    ``smp-hub/<encoder>.imagenet`` (pinned revision) for smp's own encoders; None when it has none."""
    if encoder.startswith("tu-"):
        return timm_repo(encoder[3:])
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    chosen = settings.get("imagenet") or next(iter(settings.values()), None)
    if not chosen or "repo_id" not in chosen:
        return None
    return Repo(chosen["repo_id"], revision=chosen.get("revision"), filenames=("model.safetensors",))


@dataclass(frozen=True)
class Weights:
    """Where a model's starting weights come from: ``source`` is one of `SOURCES`; ``path`` and
    ``sha256`` name the file (None for random weights); ``warning`` is set when random weights were
    not asked for."""

    model: str
    source: str
    path: Path | None = None
    sha256: str | None = None
    warning: str | None = None
    reason: str | None = None      # why random weights nobody asked for (the warning's cause)

    @property
    def pretrained(self) -> bool:
        return self.path is not None

    def record(self) -> dict[str, Any]:
        """What run.json keeps: source, model, path and the file's sha256."""
        return {"source": self.source, "model": self.model, "path": None if self.path is None else str(self.path),
                "sha256": self.sha256}

    def describe(self) -> str:
        """One log line: which weights, from where."""
        if self.path is None:
            return f"{self.model}: random initialisation ({'WEIGHTS=None' if self.warning is None else 'no weights'})"
        how = {"attached": "attached to the session", "hub": "downloaded from the hub",
               "file": "the WEIGHTS file"}[self.source]
        return f"{self.model}: pretrained weights {how}: {self.path} (sha256 {self.sha256[:12]})"


# --------------------------------------------------------------------------- internet


_PROBED: dict[tuple[str, int], bool] = {}


def _connects(host: str, port: int, timeout: float) -> bool:
    """A TCP connect to host:port within `timeout` seconds in all (the name lookup runs in a thread,
    since `socket.create_connection`'s timeout does not bound it)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="kagglekit-internet-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def has_internet(environ: Mapping[str, str] | None = None, *, host: str = HUB_HOST, port: int = 443,
                 timeout: float = CONNECT_TIMEOUT_S,
                 connect: Callable[[str, int, float], bool] | None = None) -> bool:
    """Whether the hub can be reached: False at once when ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set; else one TCP connect to ``host`` within ``timeout`` seconds, its
    answer kept for the rest of the process (Kaggle's internet switch does not change mid-session)."""
    environ = os.environ if environ is None else environ
    if any(env._is_true(environ.get(name)) for name in _OFFLINE_VARS):
        return False
    if connect is not None:
        return connect(host, port, timeout)
    key = (host, port)
    if key not in _PROBED:
        _PROBED[key] = _connects(host, port, timeout)
    return _PROBED[key]


# --------------------------------------------------------------------------- resolving


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's SHA-256, computed once per (path, size, mtime) in a process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _random_warning(model_name: str, reason: str) -> str:
    return (f"{model_name} starts from random weights: {reason}. Pretrained weights score far higher. To use "
            f"them, turn the session's internet on (Kaggle: Settings > Internet) so they download, or attach "
            f"them: on a machine with internet run `kagglekit weights {model_name} --out DIR`, upload DIR once as "
            "a Kaggle dataset (`kaggle datasets create -p DIR`) and add it to the notebook (Add Input), or put "
            "the file in ./weights/. WEIGHTS = None starts from random weights without this warning.")


def _download(repo: Repo, cache_dir: Path) -> Path:
    """The repository's weights file (and its config.json when it has one) into the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    path, missing = None, []
    for filename in repo.filenames:
        try:
            path = Path(hf_hub_download(repo.repo_id, filename, revision=repo.revision, cache_dir=cache_dir))
            break
        except EntryNotFoundError:
            missing.append(filename)
    if path is None:
        raise FileNotFoundError(f"the hub repository {repo.repo_id} holds none of {', '.join(missing)}.")
    try:
        hf_hub_download(repo.repo_id, _CONFIG_FILE, revision=repo.revision, cache_dir=cache_dir)
    except EntryNotFoundError:
        pass
    return path


def resolve_weights(
    model_name: str,
    weights: str | os.PathLike | None = AUTO,
    *,
    repo: Repo | None = None,
    environ: Mapping[str, str] | None = None,
    input_root: str | Path = env.KAGGLE_INPUT,
    local_dir: str | Path = env.LOCAL_WEIGHTS_DIR,
    hub_cache: str | Path | None = None,
    online: bool | None = None,
    download: Callable[[Repo, Path], Path] | None = None,
) -> Weights:
    """The weights ``model_name`` starts from (see the module docstring for the order).

    ``repo`` is where the hub keeps them (`timm_repo`, `smp_repo`); without one, "auto" never
    downloads. ``online`` None asks `has_internet`; ``download`` replaces the hub download (tests).
    """
    if weights is None:
        return Weights(model_name, "random")
    if not isinstance(weights, (str, os.PathLike)) or not str(weights).strip():
        raise ValueError(f"WEIGHTS={weights!r} must be 'auto', None (random weights) or the path of a weights "
                         "file (.safetensors/.pth) or of a folder holding it.")
    hub = Path(hub_cache) if hub_cache is not None else env.hub_cache_dir(environ)
    prefer = (repo.name,) if repo is not None else ()
    if str(weights) != AUTO:
        path = env.find_weights(model_name, weights, prefer=prefer, hub_cache=hub)
        return Weights(model_name, "file", path, _sha256(path))
    found = env.find_weights(model_name, input_root=input_root, local_dir=local_dir, hub_cache=hub, prefer=prefer,
                             required=False)
    if found is not None:
        return Weights(model_name, "attached", found, _sha256(found))
    looked = f"nothing attached (looked in {input_root}, ./{Path(local_dir)}, {hub})"

    def random(reason: str) -> Weights:
        return Weights(model_name, "random", warning=_random_warning(model_name, reason), reason=reason)

    if repo is None:
        return random(f"{looked}, and it has no hub weights to download")
    if not (has_internet(environ) if online is None else online):
        return random(f"{looked}, and no internet to download {repo.repo_id}")
    try:
        path = (download or _download)(repo, hub)
    except Exception as e:  # any failed download means the same here: no weights this session, said aloud
        return random(f"{looked}, and the download of {repo.repo_id} failed ({type(e).__name__}: {e})")
    return Weights(model_name, "hub", path, _sha256(path))


# --------------------------------------------------------------------------- loading


def _file_config(path: Path) -> dict[str, Any]:
    """The preprocessing timm saved next to the weights (config.json's pretrained_cfg), if any."""
    config = path.parent / _CONFIG_FILE
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return {}
    pretrained_cfg = data.get("pretrained_cfg", {}) if isinstance(data, dict) else {}
    return {k: tuple(pretrained_cfg[k]) for k in _NORMALISATION_KEYS if isinstance(pretrained_cfg.get(k), list)}


def timm_kwargs(weights: Weights) -> dict[str, Any]:
    """Keyword arguments of ``timm.create_model`` that start the model from ``weights``: the local file
    through ``pretrained_cfg_overlay`` (timm adapts ``in_chans`` and the head), with the mean/std
    saved next to it; ``pretrained=False`` for random weights."""
    if weights.path is None:
        return {"pretrained": False}
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights.path), **_file_config(weights.path)}}


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A weights file's tensors (safetensors, or a torch state dict read with ``weights_only``);
    a checkpoint that wraps it (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors: save the weights "
                         "with torch.save(model.state_dict(), path) or safetensors.")
    return state


def _file_keys(path: Path) -> set[str]:
    if path.suffix == ".safetensors":  # the header only: no tensor is read
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    return set(read_state_dict(path))


def missing_tensors(model: Any, path: str | Path) -> tuple[list[str], int]:
    """The model's tensors the weights file lacks (its head, which timm replaces, aside), and how many
    were looked for: timm loads a file non-strictly once the head changes, so weights of another model
    would otherwise leave it silently random."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    wanted = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")
              and not any(k.startswith(h + ".") for h in heads)]
    keys = _file_keys(Path(path))
    return [k for k in wanted if k not in keys], len(wanted)


# --------------------------------------------------------------------------- a weights dataset


def save_weights(
    models: Sequence[str],
    out: str | os.PathLike,
    *,
    dataset: str | None = None,
    environ: Mapping[str, str] | None = None,
    hub_cache: str | Path | None = None,
    online: bool | None = None,
    download: Callable[[Repo, Path], Path] | None = None,
    log: Callable[[str], Any] = print,
) -> list[Path]:
    """Save each model's pretrained weights in ``out/<repo name>/`` (``model.safetensors`` +
    ``config.json``), the layout the notebooks find when ``out`` is attached as a Kaggle dataset, with
    ``dataset-metadata.json`` (id ``dataset``, default ``<owner>/kagglekit-weights``) for
    ``kaggle datasets create -p OUT``. Taken from the local hub cache when there, else downloaded.
    ``models`` are timm names (``resnet18``, ``convnext_tiny.fb_in22k``) or smp encoders (``resnet34``,
    ``tu-efficientnet_b0``). Returns the folders written."""
    if not models:
        raise ValueError("name at least one model, e.g. `kagglekit weights resnet18 --out weights-dataset`.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: choose a folder for the weights dataset.")
    hub = Path(hub_cache) if hub_cache is not None else env.hub_cache_dir(environ)
    written = []
    for name in models:
        repo = timm_repo(name) if not _is_smp_only(name) else smp_repo(name)
        if repo is None:
            raise ValueError(f"{name!r} has no pretrained weights on the hub (neither a timm model with "
                             "weights nor an smp encoder with ImageNet weights); check the name with "
                             "timm.list_models(pretrained=True).")
        search = name[3:] if name.startswith("tu-") else name
        w = resolve_weights(search, AUTO, repo=repo, environ=environ, input_root=out / ".none",
                            local_dir=out / ".none", hub_cache=hub, online=online, download=download)
        if w.path is None:
            raise WeightsError(f"could not get the weights of {name}: {w.reason}. Run `kagglekit weights` where "
                               "the Hugging Face hub can be reached (HF_HUB_OFFLINE unset).")
        folder = out / repo.name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / w.path.name
        shutil.copyfile(w.path, target.with_name(target.name + ".tmp"))
        os.replace(target.with_name(target.name + ".tmp"), target)
        config = w.path.parent / _CONFIG_FILE
        if config.is_file():
            shutil.copyfile(config, folder / _CONFIG_FILE)
        log(f"{name}: {repo.repo_id} ({'the local hub cache' if w.source == 'attached' else 'downloaded'}) "
            f"-> {target} ({target.stat().st_size / 2**20:.1f} MiB)")
        written.append(folder)
    owner, slug = dataset.split("/", 1) if dataset else ("INSERT_YOUR_KAGGLE_USERNAME", DEFAULT_WEIGHTS_DATASET)
    write_json(out / DATASET_METADATA_FILE, {
        "title": slug.replace("-", " "), "id": f"{owner}/{slug}", "licenses": [{"name": "other"}],
        "description": "Pretrained weights for kagglekit_nb notebooks with internet off (made by `kagglekit "
                       f"weights`): {', '.join(models)}. Each folder is named after the hub repository."})
    log(f"upload once with `kaggle datasets create -p {out}` and add the dataset to the notebook"
        + ("" if dataset else f" (set the owner in {out / DATASET_METADATA_FILE} first, or pass --dataset OWNER/NAME)"))
    return written


def _is_smp_only(name: str) -> bool:
    """An smp encoder name timm does not know (``resnet34`` is both: timm's weights fit smp's encoder)."""
    if name.startswith("tu-"):
        return True
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(name) is None
