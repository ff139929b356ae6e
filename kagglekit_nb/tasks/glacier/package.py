"""GlacierHack code package: export the fold models with `solution.py`, verify it as the graders run it.

    package = export_code_package(OUTPUT_DIR / "submission", [fold0_state, fold1_state],
                                  encoder="resnet34", band_folders=list(HACK_BANDS),
                                  band_names=list(HACK_CHANNELS), stats=stats.to_dict(),
                                  window=512, overlap=64, tta=("none", "hflip"))
    report = verify_code_package(package, "comp/Train")     # a fresh interpreter runs maskgeration
    print(report, report.stats["mcc"])

The package is a folder holding `solution.py` (the self-contained template `solution_template.py`,
copied verbatim) and `model.pth` (at most 300 MB: fp32, else fp16, else fewer folds). A package
without models applies the NDSI rule: the emergency baseline that `submission.finalize` writes in
place of a broken package (kind "glacier_code_package").
"""
from __future__ import annotations

import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import submission as _submission
from ..._atomic import write_text
from . import solution_template as _solution
from .bands import (
    CLASS_NAMES,
    HACK_BANDS,
    HACK_CHANNELS,
    LABEL_VALUES,
    BandStats,
    find_band_dirs,
    list_tiles,
    physical_names,
    read_label,
)
from .metrics import StreamingConfusion

__all__ = ["KIND", "MAX_BYTES", "MODEL_FILE", "NDSI_THRESHOLD", "SOLUTION_FILE", "TTA_NAMES",
           "export_code_package", "solution_source", "verify_code_package", "write_ndsi_package"]

KIND = "glacier_code_package"  # the submission kind registered with kagglekit_nb.submission
MASKS_SUFFIX = "_masks"  # the registered verifier keeps the masks it checked in <package>_masks
SOLUTION_FILE = "solution.py"
MODEL_FILE = _solution.MODEL_FILE
MAX_BYTES = 300 * 2**20  # the hackathon's limit on model.pth
NDSI_THRESHOLD = 0.4  # NDSI above this is glacier in the baseline package
TTA_NAMES = tuple(_solution.TTA)
_MULTIPLE = _solution.PAD_MULTIPLE
_TAIL_CHARS = 3000  # how much of a crashed solution's stderr goes into the report
_N_EXAMPLES = 5

# Runs in a fresh interpreter: imports solution.py by path and calls maskgeration. kagglekit_nb is
# blocked because the graders' machine does not have it.
_RUNNER = """\
import importlib.util, json, os, sys
package, imagepath, out_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

class BlockKagglekit:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "kagglekit_nb":
            raise ModuleNotFoundError("solution.py imports kagglekit_nb, which the graders' machine does not "
                                      "have: keep solution.py self-contained", name=name)

sys.meta_path.insert(0, BlockKagglekit())
sys.path.insert(0, package)
spec = importlib.util.spec_from_file_location("solution", os.path.join(package, "solution.py"))
solution = importlib.util.module_from_spec(spec)
sys.modules["solution"] = solution
spec.loader.exec_module(solution)
solution.maskgeration(imagepath, out_dir)
"""


def _examples(items: Sequence[Any]) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_N_EXAMPLES])
    return shown + (f", … ({len(items)} in all)" if len(items) > _N_EXAMPLES else "")


def _mb(n_bytes: int) -> float:
    return round(n_bytes / 2**20, 2)


# ---------------------------------------------------------------------------------------- export

def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    return value


def _check_bands(band_folders: Sequence[str], band_names: Sequence[str]) -> tuple[list[str], list[str]]:
    for arg, value in (("band_folders", band_folders), ("band_names", band_names)):
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValueError(f"{arg}={value!r} must be a non-empty list of names, e.g. {list(HACK_BANDS)}.")
    folders = [str(b) for b in band_folders]
    if len(folders) != len(band_names):
        raise ValueError(f"band_folders has {len(folders)} names ({folders}) but band_names has "
                         f"{len(band_names)} ({list(band_names)}); give one physical name per band folder.")
    keys = [_solution._key(b) for b in folders]
    if "" in keys or len(set(keys)) != len(keys):
        raise ValueError(f"band_folders={folders} holds an empty or repeated name (compared ignoring case).")
    return folders, physical_names(band_names)


def _check_tta(tta: Sequence[str]) -> list[str]:
    if isinstance(tta, str) or not isinstance(tta, Sequence) or not tta:
        raise ValueError(f"tta={tta!r} must be a non-empty list of names from {', '.join(TTA_NAMES)}.")
    unknown = [t for t in tta if t not in TTA_NAMES]
    if unknown:
        raise ValueError(f"tta holds unknown names {unknown}; choose from {', '.join(TTA_NAMES)}.")
    if len(set(tta)) != len(tta):
        raise ValueError(f"tta={list(tta)} repeats a name; each augmentation counts once.")
    return list(tta)


def _check_stats(stats: Any, folders: list[str], names: list[str], required: bool) -> dict[str, Any] | None:
    if stats is None:
        if required:
            raise ValueError("stats is None but the package holds models: pass the training fold's "
                             "BandStats.to_dict(), the statistics the models were trained with.")
        return None
    if isinstance(stats, BandStats):
        stats = stats.to_dict()
    if not isinstance(stats, Mapping):
        raise ValueError(f"stats must be BandStats.to_dict() (a dict), got {type(stats).__name__}.")
    parsed = BandStats.from_dict(stats)
    if parsed.bands not in (folders, names):
        raise ValueError(f"stats are for bands {parsed.bands} but the package stacks {folders} "
                         f"({names}); fit the statistics on the same bands, in the same order.")
    if not (np.isfinite(parsed.mean).all() and np.isfinite(parsed.std).all()):
        raise ValueError(f"stats hold a NaN or inf mean/std (mean {parsed.mean.tolist()}, "
                         f"std {parsed.std.tolist()}); refit them on tiles with finite pixels.")
    return {"bands": list(parsed.bands), "mean": [float(v) for v in parsed.mean],
            "std": [float(v) for v in parsed.std], "count": [int(v) for v in parsed.count]}


def _check_states(states: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    if isinstance(states, Mapping) or not isinstance(states, Sequence):
        raise ValueError(f"states must be a list of model state_dicts (one per fold), got "
                         f"{type(states).__name__}; wrap a single one as [model.state_dict()].")
    out = []
    for i, state in enumerate(states):
        if not isinstance(state, Mapping):
            raise ValueError(f"states[{i}] is a {type(state).__name__}, not a state_dict; pass "
                             "model.state_dict() per fold.")
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad or not state:
            raise ValueError(f"states[{i}] is not a model state_dict (non-tensor entries: "
                             f"{_examples(bad) or 'none, it is empty'}); pass model.state_dict(), or the "
                             "model entry of a checkpoint.")
        out.append(dict(state))
    return out


def _check_model(states: list[dict[str, torch.Tensor]], arch: str, encoder: str | None, in_channels: int,
                 n_classes: int) -> None:
    """Every fold state must load strictly into the model solution.py builds."""
    import segmentation_models_pytorch as smp

    encoders = smp.encoders.get_encoder_names()
    if encoder not in encoders:
        close = difflib.get_close_matches(str(encoder), encoders, n=5)
        raise ValueError(f"encoder={encoder!r} is not an smp encoder; close names: {', '.join(close) or 'none'}.")
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                                 classes=n_classes)
    except KeyError as exc:
        raise ValueError(f"arch={arch!r} is not an smp architecture: {exc.args[0]}") from None
    for i, state in enumerate(states):
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:600]
            raise ValueError(f"states[{i}] does not fit smp.create_model({arch!r}, encoder_name={encoder!r}, "
                             f"in_channels={in_channels}, classes={n_classes}), the model solution.py builds: "
                             f"{detail}. Export with the arch, encoder, bands and classes it was trained with "
                             "(keys saved from a wrapper lose their 'module.' / '_orig_mod.' prefix first).") from None


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # clone: a view must not drag its whole base storage into the file
    return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).clone()
            for k, v in state.items()}


def _save_if_fits(package: dict[str, Any], path: Path, max_bytes: int) -> int:
    """Serialise to a temp file; replace `path` with it when it is at most max_bytes. Return its size."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(package, fh)
            fh.flush()
            size = fh.tell()
            if size <= max_bytes:
                os.fsync(fh.fileno())
        if size <= max_bytes:
            os.replace(tmp, path)
        return size
    finally:
        Path(tmp).unlink(missing_ok=True)


def _save_model_file(package: dict[str, Any], states: list[dict[str, torch.Tensor]], path: Path,
                     max_bytes: int, log: Callable[[str], Any]) -> None:
    """fp32 if it fits, else fp16, else fp16 with folds dropped from the end; ValueError if none fits."""
    n = len(states)
    all_stats = list(package.pop("model_stats", None) or [])
    tried = []
    attempts = [("float32", n)] + [("float16", k) for k in range(n, 0, -1)] if n else [("float32", 0)]
    cache: dict[str, list[dict[str, torch.Tensor]]] = {}
    for dtype, k in attempts:
        if dtype not in cache:
            cache[dtype] = [_cast(s, getattr(torch, dtype)) for s in states]
        package.update(models=cache[dtype][:k], dtype=dtype, dropped_folds=list(range(k, n)),
                       model_stats=all_stats[:k])
        size = _save_if_fits(package, path, max_bytes)
        tried.append(f"{k} fold(s) in {dtype}: {_mb(size)} MB")
        if size <= max_bytes:
            if k < n:
                log(f"WARNING: model.pth DROPPED fold(s) {', '.join(map(str, range(k, n)))} "
                    f"(states[{k}:]) to fit {_mb(max_bytes)} MB: it holds {k} of {n} folds in {dtype} "
                    f"({_mb(size)} MB).")
            return
        if (dtype, k) == ("float32", n) and n:
            log(f"model.pth: {n} fold(s) in float32 take {_mb(size)} MB > {_mb(max_bytes)} MB; "
                "storing float16 instead (cast back to float32 at load).")
    raise ValueError(f"model.pth does not fit max_bytes={max_bytes} ({_mb(max_bytes)} MB) even with one "
                     f"fold in float16 (tried {'; '.join(tried)}); use a smaller encoder.")


def solution_source() -> str:
    """The text of solution.py (the template solution_template.py shipped with kagglekit_nb)."""
    return resources.files(__package__).joinpath("solution_template.py").read_text(encoding="utf-8")


def export_code_package(
    out_dir: str | os.PathLike,
    states: Sequence[Mapping[str, torch.Tensor]],
    *,
    arch: str = "Unet",
    encoder: str | None,
    band_folders: Sequence[str],
    band_names: Sequence[str],
    stats: Mapping[str, Any] | BandStats | Sequence[Mapping[str, Any] | BandStats] | None,
    window: int,
    overlap: int,
    tta: Sequence[str] = ("none",),
    n_classes: int = 4,
    max_bytes: int = MAX_BYTES,
    log: Callable[[str], Any] = print,
) -> Path:
    """Write `solution.py` and `model.pth` into `out_dir` (created) and return it.

    `states` are the fold models' state_dicts (averaged at inference); none gives the NDSI package
    (then `encoder` and `stats` may be None). `band_folders` are the folder names in the order the
    models take them ("Band1", …), `band_names` their physical names ("blue", …), `stats` the
    training fold's BandStats.to_dict() — one for all models, or a list with each model's own.
    Files are replaced atomically.
    """
    out_dir = Path(out_dir)
    states = _check_states(states)
    folders, names = _check_bands(band_folders, band_names)
    _check_int("window", window, _MULTIPLE)
    if window % _MULTIPLE:
        raise ValueError(f"window={window} must be a multiple of {_MULTIPLE} (the U-Net's input size step).")
    _check_int("overlap", overlap, 0)
    if overlap >= window:
        raise ValueError(f"overlap={overlap} must be smaller than window={window}.")
    _check_int("n_classes", n_classes, 2)
    if n_classes > len(LABEL_VALUES):
        raise ValueError(f"n_classes={n_classes} but a mask encodes only {len(LABEL_VALUES)} classes "
                         f"({', '.join(CLASS_NAMES)}).")
    tta = _check_tta(tta)
    _check_int("max_bytes", max_bytes, 1)
    if not callable(log):
        raise ValueError(f"log must be callable (e.g. print), got {type(log).__name__}.")
    if isinstance(stats, Sequence) and not isinstance(stats, (str, Mapping)):
        if len(stats) != len(states):
            raise ValueError(f"stats holds {len(stats)} entries for {len(states)} models: pass one BandStats per "
                             "model (each model's own training-fold statistics) or a single one for all.")
        per_model = [_check_stats(st, folders, names, required=True) for st in stats]
    else:
        per_model = [_check_stats(stats, folders, names, required=bool(states))] * len(states)
    stats_dict = per_model[0] if per_model else _check_stats(stats, folders, names, required=False)
    ndsi = None
    if "green" in names and "swir1" in names:
        ndsi = {"threshold": NDSI_THRESHOLD, "green_band": folders[names.index("green")],
                "swir1_band": folders[names.index("swir1")]}
    elif not states:
        raise ValueError(f"band_names={names} lack green or swir1: the NDSI package (states=[]) needs both.")
    if states:
        _check_model(states, arch, encoder, len(folders), n_classes)
    import segmentation_models_pytorch as smp

    package: dict[str, Any] = {
        "format": _solution.FORMAT,
        "arch": str(arch),
        "encoder": encoder,
        "in_channels": len(folders),
        "n_classes": n_classes,
        "band_folders": folders,
        "band_names": names,
        "stats": stats_dict,              # the first model's (kept for readers of a single set)
        "model_stats": per_model,         # one per model: each fold's own training-fold statistics
        "label_values": list(LABEL_VALUES),
        "window": window,
        "overlap": overlap,
        "blend": "cosine",
        "tta": tta,
        "ndsi": ndsi,
        "versions": {"torch": str(torch.__version__), "segmentation_models_pytorch": str(smp.__version__)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model_file(package, states, out_dir / MODEL_FILE, max_bytes, log)
    write_text(out_dir / SOLUTION_FILE, solution_source())
    size = (out_dir / MODEL_FILE).stat().st_size
    what = (f"{len(package['models'])} fold(s) of {arch}/{encoder} in {package['dtype']}, TTA {', '.join(tta)}"
            if states else f"the NDSI rule (threshold {NDSI_THRESHOLD})")
    log(f"code package {out_dir}: {SOLUTION_FILE} + {MODEL_FILE} ({_mb(size)} MB), {what}")
    return out_dir


def write_ndsi_package(path: str | os.PathLike, sample: Any = None) -> str:
    """Write the NDSI emergency package at `path`; the baseline writer registered for KIND."""
    export_code_package(path, [], encoder=None, band_folders=list(HACK_BANDS), band_names=list(HACK_CHANNELS),
                        stats=None, window=512, overlap=64, log=lambda message: None)
    return f"NDSI package: glacier where (green - swir1) / (green + swir1) > {NDSI_THRESHOLD}, else background"


# ---------------------------------------------------------------------------------------- verify

def _check_structure(package: Path, report: _submission.VerificationReport) -> None:
    """solution.py defines maskgeration; model.pth is there and small enough."""
    solution, model = package / SOLUTION_FILE, package / MODEL_FILE
    if not solution.is_file():
        report.errors.append(f"{solution} is missing: the package needs {SOLUTION_FILE} defining "
                             "maskgeration(imagepath, out_dir) (export_code_package writes it).")
    else:
        try:
            tree = ast.parse(solution.read_text(encoding="utf-8"), filename=str(solution))
        except (SyntaxError, UnicodeDecodeError) as exc:
            report.errors.append(f"{solution} cannot be parsed: {exc}; fix the file.")
        else:
            names = set()
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
                elif isinstance(node, ast.ImportFrom):
                    names.update(a.asname or a.name for a in node.names)
            if "maskgeration" not in names:
                report.errors.append(f"{solution} does not define maskgeration(imagepath, out_dir) at top "
                                     "level (the graders call exactly that name, spelled 'maskgeration').")
    if not model.is_file():
        report.errors.append(f"{model} is missing: the package needs {MODEL_FILE} next to {SOLUTION_FILE} "
                             "(export_code_package writes it).")
        return
    size = model.stat().st_size
    report.stats["model_mb"] = _mb(size)
    if size > MAX_BYTES:
        report.errors.append(f"{model} is {_mb(size)} MB; the limit is {_mb(MAX_BYTES)} MB: export with "
                             "fewer folds, fp16 or a smaller encoder.")


def _describe_model_file(path: Path, report: _submission.VerificationReport) -> None:
    try:
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any format is allowed; this is only a note
        report.notes.append(f"{MODEL_FILE} was not inspected ({type(exc).__name__}); solution.py loads it.")
        return
    if isinstance(package, dict) and package.get("format") == _solution.FORMAT:
        models = package.get("models") or []
        report.stats["folds"] = len(models)
        what = (f"{len(models)} fold(s) of {package.get('arch')}/{package.get('encoder')} in "
                f"{package.get('dtype')}, TTA {', '.join(package.get('tta', []))}" if models else "the NDSI rule")
        report.notes.append(f"{MODEL_FILE}: {what}")


def _run_solution(package: Path, imagepath: dict[str, str], out_dir: Path, workdir: Path, timeout_s: float,
                  python: str) -> tuple[str | None, float]:
    """Run maskgeration in a fresh interpreter; return (problem or None, seconds)."""
    command = [python, "-B", "-c", _RUNNER, str(package.resolve()), json.dumps(imagepath), str(out_dir)]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout_s,
                              check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.stderr)
        return (f"maskgeration did not finish within timeout_s={timeout_s} s: make inference faster "
                f"(fewer folds or TTA, larger window) or raise the limit{tail}"), time.monotonic() - start
    seconds = time.monotonic() - start
    if done.returncode != 0:
        return (f"maskgeration crashed (exit code {done.returncode}); fix solution.py or model.pth"
                f"{_tail(done.stderr) or ' (no error output)'}"), seconds
    return None, seconds


def _tail(text: str | bytes | None) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return "; its error output ends:\n" + (text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:])


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _check_masks(tiles: list[str], band1: Path, out_dir: Path, label_dir: Path | None,
                 report: _submission.VerificationReport) -> None:
    """One uint8 mask per tile, named like it, values in LABEL_VALUES, the tile's shape; MCC on labels."""
    written = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    missing = sorted(set(tiles) - set(written))
    extra = sorted(set(written) - set(tiles))
    if missing:
        report.errors.append(f"{len(missing)} of {len(tiles)} masks are missing ({_examples(missing)}): write "
                             "one mask per file in Band1, under the same file name.")
    if extra:
        report.errors.append(f"{len(extra)} files in the output do not match an input tile ({_examples(extra)}): "
                             "name each mask exactly like its Band1 file.")
    problems: dict[str, list[str]] = {"unreadable": [], "dtype": [], "values": [], "shape": []}
    bad_values: set[int] = set()
    confusion = StreamingConfusion(len(LABEL_VALUES))
    counts = np.zeros(256, np.int64)
    lut = np.full(256, -1, np.int64)
    lut[list(LABEL_VALUES)] = np.arange(len(LABEL_VALUES))
    labelled = 0
    for name in sorted(set(tiles) & set(written)):
        try:
            mask = _read_tif(out_dir / name)
        except Exception as exc:  # noqa: BLE001 - whatever the reader says, the graders could not read it
            problems["unreadable"].append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        want = np.squeeze(_read_tif(band1 / name)).shape
        ok = True
        if mask.dtype != np.uint8:
            problems["dtype"].append(f"{name}: {mask.dtype}")
            ok = False
        if mask.shape != want:
            problems["shape"].append(f"{name}: {mask.shape} vs {want}")
            ok = False
        outside = np.setdiff1d(np.unique(mask), LABEL_VALUES)
        if outside.size:
            bad_values.update(outside[:20].tolist())
            problems["values"].append(f"{name}: {_examples(outside.tolist())}")
            ok = False
        if not ok:
            continue
        counts += np.bincount(mask.reshape(-1), minlength=256)
        if label_dir is not None and (label_dir / name).is_file():
            try:
                truth = read_label(label_dir / name)
            except ValueError as exc:  # a broken ground truth says nothing about the package
                report.warnings.append(f"label {name} not used for the MCC: {exc}")
                continue
            if truth.shape != mask.shape:
                report.warnings.append(f"label {name} is {truth.shape} but its tile is {mask.shape}; "
                                       "not used for the MCC.")
                continue
            confusion.update(lut[mask], truth)
            labelled += 1
    _report_problems(problems, bad_values, report)
    total = int(counts[list(LABEL_VALUES)].sum())
    if total:
        report.stats["predicted_fraction"] = {c: round(float(counts[v]) / total, 4)
                                              for c, v in zip(CLASS_NAMES, LABEL_VALUES)}
        only = [c for c, f in report.stats["predicted_fraction"].items() if f == 1.0]
        if only:
            report.warnings.append(f"every mask is entirely {only[0]}: the model predicts one class only.")
    if labelled:
        report.stats["mcc"] = round(confusion.mcc(), 6)
        report.stats["labelled_tiles"] = labelled
    elif label_dir is None:
        report.notes.append("no labels folder: MCC not computed (pass labels= a folder of ground-truth masks).")


def _report_problems(problems: dict[str, list[str]], bad_values: set[int],
                     report: _submission.VerificationReport) -> None:
    allowed = ", ".join(map(str, LABEL_VALUES))
    if problems["unreadable"]:
        report.errors.append(f"{len(problems['unreadable'])} masks cannot be read as TIFF "
                             f"({_examples(problems['unreadable'])}): write them with tifffile.imwrite.")
    if problems["dtype"]:
        report.errors.append(f"{len(problems['dtype'])} masks are not uint8 ({_examples(problems['dtype'])}): "
                             f"write mask.astype(np.uint8) with values {allowed}.")
    if problems["values"]:
        hint = (": they look like class indices; encode them as np.array([0, 85, 170, 255])[classes]"
                if bad_values <= {1, 2, 3} else "")
        report.errors.append(f"{len(problems['values'])} masks hold values outside {allowed} "
                             f"({_examples(problems['values'])}){hint}.")
    if problems["shape"]:
        report.errors.append(f"{len(problems['shape'])} masks differ in shape from their input tile "
                             f"({_examples(problems['shape'])}): write one HxW mask of the tile's own size.")


def verify_code_package(
    package_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    *,
    timeout_s: float = 600,
    python: str = sys.executable,
    keep_masks: str | os.PathLike | None = None,
) -> _submission.VerificationReport:
    """Run the package's maskgeration in a fresh interpreter on `data_dir`'s tiles and check every mask.

    `data_dir` holds Band1..Band5 (and optionally labels/); `labels` is another folder of
    ground-truth masks. Stats: tiles, seconds, model_mb, and mcc over the labelled tiles.
    `keep_masks` names a folder that receives the masks the package wrote (replaced on every check),
    for inspection and plots; by default they are deleted with the check's scratch folder.
    """
    package = Path(package_dir)
    report = _submission.VerificationReport(valid=False, kind=KIND, submission=str(package), sample=str(data_dir))
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds.")
    dirs = find_band_dirs(data_dir)
    if labels is None:
        label_dir = dirs.pop("labels", None)
    elif isinstance(labels, (str, os.PathLike)):
        dirs.pop("labels", None)
        label_dir = Path(labels)
        if not label_dir.is_dir():
            raise FileNotFoundError(f"labels={str(labels)!r} is not a folder; pass the folder of ground-truth "
                                    "masks, or None to use data_dir's labels folder.")
    else:
        raise ValueError(f"labels must be a folder of ground-truth masks or None, got {labels!r}.")
    tiles = list_tiles(dirs)
    report.stats["tiles"] = len(tiles)
    if not package.is_dir():
        report.errors.append(f"{package} is not a folder: the package is a folder holding {SOLUTION_FILE} "
                             f"and {MODEL_FILE} (export_code_package writes it).")
        return report
    _check_structure(package, report)
    if report.errors:
        return report
    _describe_model_file(package / MODEL_FILE, report)
    with tempfile.TemporaryDirectory(prefix="kagglekit_glacier_verify_") as tmp:
        out_dir, workdir = Path(tmp) / "masks", Path(tmp) / "cwd"
        workdir.mkdir()
        imagepath = {band: str(Path(path).resolve()) for band, path in dirs.items()}
        problem, seconds = _run_solution(package, imagepath, out_dir, workdir, timeout_s, python)
        report.stats["seconds"] = round(seconds, 2)
        report.stats["seconds_per_tile"] = round(seconds / len(tiles), 3)
        if problem:
            report.errors.append(problem)
            return report
        _check_masks(tiles, dirs[next(iter(dirs))], out_dir, label_dir, report)
        if keep_masks is not None:
            kept = Path(keep_masks)
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(out_dir, kept)
            report.stats["masks"] = str(kept)
    summary = f"maskgeration wrote {len(tiles)} tile(s) in {report.stats['seconds']} s"
    if "mcc" in report.stats:
        summary += f"; MCC {report.stats['mcc']:.4f} over {report.stats['labelled_tiles']} labelled tile(s)"
    report.notes.append(summary)
    report.valid = not report.errors
    return report


def _verifier(submission_path: Path, sample: Any, labels: Any) -> _submission.VerificationReport:
    if sample is None:
        raise ValueError(f"kind={KIND!r} needs sample= the folder holding Band1..Band5 (and optionally labels) "
                         "to run the package on.")
    # the masks of the check stay next to the package (`<package>_masks`), for a look and the overlays
    return verify_code_package(submission_path, sample, labels,
                               keep_masks=Path(submission_path).with_name(Path(submission_path).name + MASKS_SUFFIX))


_submission.register_verifier(KIND, _verifier, replace=True)
_submission.register_baseline(KIND, write_ndsi_package, replace=True)
