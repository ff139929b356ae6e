"""Checkpoint files that survive kills, disconnects and platform time limits.

    from kagglekit_nb.state import capture_state, restore_state

    state = capture_state({"model": model, "optimizer": opt, "scheduler": sched, "sampler": sampler},
                          epoch=epoch, step=step, history=history)
    save_checkpoint(state, ckpt_dir, step=step, keep=3, best=improved, meta={"model": MODEL, ...},
                    mirror=run.mirror)      # None, or the Google Drive copy (see `kagglekit_nb.mirror`)
    ...
    found = load_latest(ckpt_dir)              # newest valid file; torn or corrupt ones are skipped
    if found is not None:
        restore_state(found.state, {"model": model, "optimizer": opt, ...})

One file per save, `step-000001234.ckpt` (`STEP_FILE`), plus `best.ckpt` (`BEST_FILE`). The
newest is found by the step number parsed from the name, never by sorting names as text. A file is

    prefix   MAGIC (8 bytes) | format version (uint32) | header length H (uint32)
    header   H bytes of JSON: step, epoch, lineage, best_step, meta (model, classes, ... for
             `check_compatible`), checksum name
    payload  the state as torch.save writes it (a zip)
    trailer  payload length (uint64) | CRC32 of prefix + header + payload (uint32) | END_MAGIC

A torn write lacks the trailer or has the wrong length; a damaged byte anywhere fails the CRC. One
file holds both data and checksum, so a single `os.replace` publishes them together (a sidecar
checksum file could be torn apart from its data). CRC32 rather than SHA-256: it exists to detect
accidents (interrupted writes, bad blocks, broken transfers), as in zip, gzip and PNG, at twice
the speed; it is no defence against a malicious file and need not be: loading is always
`weights_only=True`, which refuses anything that would run code. torch.save's own per-record CRC32,
which torch.load never checks, is switched off while saving, so the file's checksum costs no more
than torch's default.

The commit protocol. The step files are the record; `best.ckpt` is derived from them. Each step
file's header names its timeline (`lineage`, one id per training run of a folder, carried over by
every resume) and `best_step`, the step file that holds the best state as of that save; `best.ckpt`
is a hard link to (or a copy of) that step file, so its header says which step, epoch and timeline
it holds. A save writes its step file first, then makes `best.ckpt` agree with the header just
written (`repair_best`), then prunes, and never prunes the step file `best.ckpt` should hold while
it does not. A kill between any two of these file operations leaves a step file that says what
`best.ckpt` must be and the means to make it so: `load_latest` repairs the pointer from the state it
resumes, and `check_best` tells a caller (a finished fold, a prediction) whether `best.ckpt` holds
the step, epoch and timeline it expects. Step files newer than the one just saved are deleted only
when their header proves they are of the same timeline (an abandoned future of this run); others
are kept and reported: another writer may be using the folder.

This module owns the file: its format, writing, verifying, finding the newest valid one, pruning,
safe loading and the meta checks (its two file-like adapters, the checksumming writer and the
payload window, are in `_streams`). What goes into the state is `kagglekit_nb.state`'s; the copy on
Google Drive is `kagglekit_nb.mirror`'s.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import struct
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._atomic import fsync_dir
from ._streams import CrcWriter, Window, without_record_crc

if TYPE_CHECKING:
    from .mirror import Mirror

__all__ = [
    "BEST_FILE", "COMPAT_KEYS", "FORMAT_VERSION", "STEP_FILE", "CheckpointError", "LoadedCheckpoint",
    "check_best", "check_compatible", "find_latest", "list_checkpoints", "load_checkpoint", "load_latest",
    "new_lineage", "read_header", "read_meta", "repair_best", "save_checkpoint",
]

FORMAT_VERSION = 1                          # of the file (prefix, header, trailer); the state has its own
STEP_FILE = "step-{step:09d}.ckpt"          # the step number decides which file is newest
STEP_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")
BEST_FILE = "best.ckpt"
MAGIC = b"KKNBCKPT"
END_MAGIC = b"KKNBEND\n"
CHECKSUM = "crc32"
# Meta keys that must agree between a checkpoint and the run resuming from it.
COMPAT_KEYS = ("model", "classes", "num_classes", "img_size", "in_chans", "fold", "batch_size", "seed")

_PREFIX = struct.Struct(">8sII")            # magic, format version, header length
_TRAILER = struct.Struct(">QI8s")           # payload length, CRC32, end magic
_MAX_HEADER = 16 << 20
_CHUNK = 8 << 20                            # read size when verifying
_TEMP = re.compile(r"^\.(.+)\.(\d+)\.tmp$")  # .step-000000100.ckpt.<pid>.tmp
_ZIP = b"PK\x03\x04"
_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.device, torch.dtype, torch.Size)

Log = Callable[[str], None]


class CheckpointError(OSError):
    """A checkpoint could not be written; the checkpoints saved before it are intact.

    `saved` is the step file when it was written and only a later part of the save failed (the
    update of `BEST_FILE`); None when the step file itself was not written.
    """

    saved: Path | None = None


class _Invalid(ValueError):
    """Why a file is not a usable checkpoint (the caller adds the file name)."""


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    state: Mapping[str, Any],
    directory: str | os.PathLike,
    *,
    step: int,
    keep: int = 3,
    best: bool = False,
    meta: Mapping[str, Any] | None = None,
    mirror: Mirror | None = None,
    log: Log | None = print,
    lineage: str | None = None,
    best_step: int | None = None,
    epoch: int | None = None,
) -> Path:
    """Write `state` atomically and durably as `STEP_FILE` in `directory`; returns its path.

    Temp file, fsync, `os.replace`, fsync of the directory; only then `BEST_FILE` is made to hold
    the best state (this file when `best`, else the step file `best_step` names, when it does not
    already), and the step files beyond the newest `keep` are deleted, as are those with a higher
    step whose header shows the same `lineage` (an abandoned future of this timeline); `BEST_FILE`,
    and the file it should hold while it does not, are kept besides those. `lineage` (from
    `new_lineage`, carried over by a resume), `best_step` and `epoch` go into the header: see the
    commit protocol in the module docstring. A failed write raises `CheckpointError` and leaves
    every earlier checkpoint as it was. `meta` (JSON values) goes into the header, for `read_meta`
    and `check_compatible` without loading the state. With a `mirror`, the folder is then copied
    there (`Mirror.after_save`: a failed copy is logged). One writer per folder: use a folder per
    fold (step numbers restart with each fold).
    """
    step = _check_count("step", step, low=0)
    keep = _check_count("keep", keep, low=1)
    best_step = step if best else (None if best_step is None else _check_count("best_step", best_step, low=0))
    if best_step is not None and best_step > step:
        raise ValueError(f"best_step={best_step} is after step={step}: the best state must be saved already.")
    if lineage is not None and (not isinstance(lineage, str) or not lineage):
        raise ValueError(f"lineage={lineage!r} must be a non-empty string (see new_lineage()).")
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a dict of state_dicts and values, not {type(state).__name__}.")
    _check_loadable(state, "state")
    header = _encode_header(step, meta, lineage=lineage, best_step=best_step,
                            epoch=None if epoch is None else _check_count("epoch", epoch, low=0))
    directory = Path(directory)
    path = directory / STEP_FILE.format(step=step)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _save_error(path, e) from e
    _remove_stale_temps(directory, log)
    _write_atomic(path, header, state)
    failed: CheckpointError | None = None
    problem = None
    try:
        if best:
            _publish_best(path)
        elif best_step is not None:
            problem = _sync_best(directory, best_step, lineage, log)
    except CheckpointError as e:  # raised for this save's own best; an earlier one's is retried next time
        failed, problem = (e if best else None), str(e)
    _prune(directory, keep, path, log, lineage=lineage,
           protect=STEP_FILE.format(step=best_step) if problem else None)
    if mirror is not None:
        mirror.after_save(directory, path, log=log)
    if failed is not None:
        raise failed
    if problem is not None:
        _say(log, f"WARNING: {problem}")
    return path


def new_lineage() -> str:
    """A fresh timeline id for a training run that starts from scratch (a resume keeps its own)."""
    return uuid.uuid4().hex[:16]


def _check_count(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    return int(value)


def _check_loadable(obj: Any, where: str) -> None:
    """Refuse, before writing, anything a weights_only load could not read back."""
    kind = type(obj)
    if kind in _LEAVES:
        return
    if isinstance(obj, torch.Tensor):
        if kind in (torch.Tensor, torch.nn.Parameter):
            return
    elif kind in (dict, OrderedDict):
        for key, value in obj.items():
            _check_loadable(key, f"a key of {where}")
            _check_loadable(value, f"{where}[{key!r}]")
        return
    elif kind in (list, tuple, set):
        for i, value in enumerate(obj):
            _check_loadable(value, f"{where}[{i}]")
        return
    raise ValueError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which a safe load (weights_only=True) cannot "
        "read back. Store tensors, numbers, strings, lists and dicts only: numpy arrays as "
        "torch.from_numpy(a), numpy numbers as float(x) or int(x), objects as their state_dict()."
    )


def _encode_header(step: int, meta: Mapping[str, Any] | None, *, lineage: str | None = None,
                   best_step: int | None = None, epoch: int | None = None) -> bytes:
    header = {"format": FORMAT_VERSION, "step": step, "checksum": CHECKSUM, "torch": torch.__version__,
              "saved_unix": round(time.time(), 3), "meta": dict(meta or {}), "lineage": lineage,
              "best_step": best_step, "epoch": epoch}
    try:
        return json.dumps(header, allow_nan=True, sort_keys=True).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must hold JSON values only (str, numbers, lists, dicts): {e}.") from None


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomic(path: Path, header: bytes, state: Mapping[str, Any]) -> None:
    tmp = _temp_path(path)
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = CrcWriter(f)
            writer.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)))
            writer.write(header)
            start = writer.size
            with without_record_crc():
                torch.save(dict(state), writer)
            f.write(_TRAILER.pack(writer.size - start, writer.crc, END_MAGIC))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        _unlink_quietly(tmp)
        cause = _os_error_in(e) or (writer.error if writer is not None else None)
        if isinstance(e, Exception) and cause is not None:
            raise _save_error(path, cause) from e
        raise


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch reports a failed write as a RuntimeError whose context is it."""
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _publish_best(path: Path) -> None:
    """Point `BEST_FILE` at `path`: a hard link (instant), or a copy where links are unsupported."""
    best = path.with_name(BEST_FILE)
    tmp = _temp_path(best)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, best)
        fsync_dir(best.parent)
    except OSError as e:
        _unlink_quietly(tmp)
        error = CheckpointError(e.errno, f"{path.name} is saved, but {best} could not be updated from it: "
                                         f"{e.strerror or e}. Free disk space; {path.name} is kept until "
                                         f"{BEST_FILE} holds it (the next save or resume tries again).")
        error.saved = path
        raise error from e


def _header_of(path: Path) -> dict[str, Any] | None:
    """The header of a checkpoint file (prefix and trailer checked, not the CRC), None if unreadable."""
    try:
        with open(path, "rb") as f:
            return _read_layout(f).header
    except (_Invalid, OSError):
        return None


def _prune(directory: Path, keep: int, saved: Path, log: Log | None, *, lineage: str | None = None,
           protect: str | None = None) -> None:
    """After `saved` is durable: drop the step files newer than it that are provably of its timeline
    (same `lineage` in their header), then all but the newest `keep`, never `protect`."""
    saved_step = _step_of(saved.name)
    files = list_checkpoints(directory)
    for s, p in files:
        if s <= saved_step:
            continue
        other = (_header_of(p) or {}).get("lineage")
        if lineage is not None and other == lineage:
            if _remove(p, log):
                _say(log, f"removed {p.name}: it is newer than the checkpoint just saved (step {saved_step}) "
                          "but of the same run, which has gone back to an earlier checkpoint")
        else:
            whose = f"another run (lineage {other})" if other else "an unknown run (no readable lineage)"
            _say(log, f"WARNING: kept {p.name} in {directory}: it is newer than the checkpoint just saved "
                      f"(step {saved_step}) and comes from {whose}. Is another session writing to this folder? "
                      "Use one OUTPUT_DIR (or RUN_NAME) per run.")
    older = [p for s, p in files if s <= saved_step]
    for p in older[:-keep]:
        if p != saved and p.name != protect:
            _remove(p, log)


def _remove(p: Path, log: Log | None) -> bool:
    """Delete an old checkpoint; a failure is logged, never raised (the new one is already durable)."""
    try:
        p.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        _say(log, f"could not delete the old checkpoint {p}: {e}")
        return False
    return True


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _save_error(path: Path, e: OSError) -> CheckpointError:
    intact = [p for _, p in list_checkpoints(path.parent)]  # the new file is never among them half-written
    kept = f"The previous checkpoints are intact (newest: {intact[-1].name})." if intact else \
        "No earlier checkpoint exists in that folder."
    hint = "Free disk space (old runs, large outputs) or use a bigger disk; " if e.errno == errno.ENOSPC else ""
    return CheckpointError(e.errno, f"could not save checkpoint {path}: {e.strerror or e}. {kept} "
                                    f"{hint}training can go on without this save.")


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe liveness check: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(directory: Path, log: Log | None) -> None:
    """Temp files left by a save that was killed (its process is gone) are removed."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            m = _TEMP.match(entry.name)
            if m and (int(m.group(2)) == os.getpid() or not _pid_alive(int(m.group(2)))):
                _unlink_quietly(Path(entry.path))
                _say(log, f"removed {entry.name}, left by an interrupted save")


def _say(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


# ----------------------------------------------------------------------------- finding


def _step_of(name: str) -> int:
    m = STEP_PATTERN.match(name)
    return int(m.group(1)) if m else -1


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """`(step, path)` of every step file in `directory`, oldest first, by step number (unverified)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(_step_of(p.name), p) for p in directory.iterdir() if STEP_PATTERN.match(p.name)]
    return sorted(found, key=lambda sp: sp[0])


def _candidates(directory: Path) -> list[Path]:
    """Step files newest first, with `BEST_FILE` placed by the step in its header."""
    ranked = [(step, 1, p) for step, p in list_checkpoints(directory)]
    best = directory / BEST_FILE
    if best.is_file():
        try:
            with open(best, "rb") as f:
                ranked.append((_read_layout(f).step, 0, best))
        except (_Invalid, OSError):
            ranked.append((-1, 0, best))
    return [p for _, _, p in sorted(ranked, key=lambda r: (r[0], r[1]), reverse=True)]


def find_latest(directory: str | os.PathLike, *, log: Log | None = print) -> Path | None:
    """The newest checkpoint whose checksum holds; torn or corrupt ones are skipped with a message."""
    for path in _candidates(Path(directory)):
        try:
            with open(path, "rb") as f:
                _verify(f, _read_layout(f))
        except (_Invalid, OSError) as e:
            _say(log, f"skipping {path.name}: {e}; trying the previous checkpoint")
            continue
        return path
    return None


@dataclass
class LoadedCheckpoint:
    """A checkpoint found by `load_latest`: where, which step, its meta, its state, what was skipped,
    its timeline (`lineage`, `best_step`) and, when `BEST_FILE` could not be made to agree with it,
    why (`best_problem`)."""

    path: Path
    step: int
    meta: dict[str, Any]
    state: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    lineage: str | None = None
    best_step: int | None = None
    best_problem: str | None = None


def load_latest(
    directory: str | os.PathLike, *, map_location: Any = "cpu", log: Log | None = print
) -> LoadedCheckpoint | None:
    """Load the newest valid checkpoint in `directory`, or None if there is none.

    A torn, corrupt or unsafe file is skipped with a message and the previous one is tried. Then
    `BEST_FILE` is made to agree with the state found (`repair_best`: a save killed between its
    step file and the pointer is completed); when it cannot, `best_problem` says why.
    """
    skipped: list[str] = []
    for path in _candidates(Path(directory)):
        try:
            with open(path, "rb") as f:
                layout = _read_layout(f)
                _verify(f, layout)
                state = _load_payload(f, layout, path, map_location)
        except (ValueError, OSError) as e:
            reason = f"skipping {path.name}: {e}"
            skipped.append(reason)
            _say(log, f"{reason}; trying the previous checkpoint")
            continue
        if skipped:
            _say(log, f"resuming from {path.name} (step {layout.step})")
        lineage, best_step = layout.header.get("lineage"), layout.header.get("best_step")
        problem = None
        if isinstance(best_step, int) and path.name != BEST_FILE:
            problem = repair_best(directory, step=best_step, lineage=lineage, log=log)
        return LoadedCheckpoint(path, layout.step, layout.meta, state, skipped, lineage,
                                best_step if isinstance(best_step, int) else None, problem)
    return None


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a checkpoint: step, epoch, lineage, best_step, meta, ... (without the state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: check the path.")
    with open(path, "rb") as f:
        try:
            return _read_layout(f).header
        except _Invalid as e:
            raise ValueError(f"{path} cannot be used: {e}.") from None


def check_best(directory: str | os.PathLike, *, step: int | None = None, lineage: str | None = None,
               epoch: int | None = None) -> str | None:
    """Why `BEST_FILE` in `directory` does not hold the state at `step` (and `epoch`) of `lineage`,
    as a sentence; None when it does. Arguments left None are not compared. Reads headers only:
    the weights are the step file's, byte for byte (a link or a verified copy)."""
    best = Path(directory) / BEST_FILE
    if not best.is_file():
        return f"{best} does not exist"
    header = _header_of(best)
    if header is None:
        return f"{best} is torn or corrupt"
    wrong = []
    for name, want in (("step", step), ("epoch", epoch), ("lineage", lineage)):
        if want is not None and header.get(name) != want:
            wrong.append(f"{name} {header.get(name)!r}, not {want!r}")
    return f"{best} holds {', '.join(wrong)}" if wrong else None


def repair_best(directory: str | os.PathLike, *, step: int, lineage: str | None = None,
                log: Log | None = print) -> str | None:
    """Make `BEST_FILE` hold step file `step` of `lineage`; returns None when it does (already, or
    after re-publishing it from that step file), else why it cannot (the step file is gone, of
    another timeline, corrupt, or the disk refused the update)."""
    try:
        return _sync_best(Path(directory), step, lineage, log)
    except CheckpointError as e:
        return str(e)


def _sync_best(directory: Path, step: int, lineage: str | None, log: Log | None) -> str | None:
    """`repair_best`, raising `CheckpointError` when the update itself fails (disk full)."""
    wrong = check_best(directory, step=step, lineage=lineage)
    if wrong is None:
        return None
    source = directory / STEP_FILE.format(step=step)
    try:
        with open(source, "rb") as f:
            layout = _read_layout(f)
            _verify(f, layout)
    except (_Invalid, OSError) as e:
        return f"{wrong}, and the step file that should be the best, {source.name}, is unusable ({e})"
    if layout.step != step:
        return f"{wrong}, and {source.name} holds step {layout.step}: it is not that step's file"
    if lineage is not None and layout.header.get("lineage") != lineage:
        return (f"{wrong}, and {source.name} belongs to another run (lineage {layout.header.get('lineage')}, "
                f"not {lineage})")
    _publish_best(source)
    _say(log, f"{BEST_FILE} repaired from {source.name}, the best state the checkpoint names ({wrong})")
    return None


# ----------------------------------------------------------------------------- reading


@dataclass
class _Layout:
    step: int
    meta: dict[str, Any]
    payload_start: int
    payload_len: int
    crc: int
    header: dict[str, Any] = field(default_factory=dict)


def _read_layout(f: Any) -> _Layout:
    """Check the prefix, header and trailer (not yet the checksum); raise `_Invalid` with the reason."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(_PREFIX.size)
    if size == 0:
        raise _Invalid("empty (0 bytes): the save was interrupted")
    if head[: len(MAGIC)] != MAGIC[: len(head)]:
        what = "a plain torch.save file" if head.startswith(_ZIP) else "not a kagglekit checkpoint"
        raise _Invalid(f"{what} (no checkpoint header), so it cannot be verified")
    if len(head) < _PREFIX.size:
        raise _Invalid(f"truncated at {size} bytes: the save was interrupted")
    _, version, hlen = _PREFIX.unpack(head)
    if version > FORMAT_VERSION:
        raise _Invalid(f"written in checkpoint format {version}, newer than this kagglekit_nb reads "
                       f"({FORMAT_VERSION}): upgrade kagglekit_nb")
    if version < 1 or hlen > _MAX_HEADER:
        raise _Invalid("the header is corrupt")
    if _PREFIX.size + hlen + _TRAILER.size > size:
        raise _Invalid(f"truncated at {size:,} bytes: the save was interrupted")
    header_bytes = f.read(hlen)
    f.seek(size - _TRAILER.size)
    payload_len, crc, end = _TRAILER.unpack(f.read(_TRAILER.size))
    if end != END_MAGIC:
        raise _Invalid(f"truncated or torn ({size:,} bytes, no end marker): the save did not finish")
    if _PREFIX.size + hlen + payload_len + _TRAILER.size != size:
        raise _Invalid(f"torn: {size:,} bytes where the trailer promises "
                       f"{_PREFIX.size + hlen + payload_len + _TRAILER.size:,}")
    try:
        header = json.loads(header_bytes)
        step = header["step"]
        meta = header["meta"]
        if header.get("checksum") != CHECKSUM or not isinstance(step, int) or not isinstance(meta, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise _Invalid("the header is corrupt") from None
    return _Layout(step, meta, _PREFIX.size + hlen, payload_len, crc, header)


def _verify(f: Any, layout: _Layout) -> None:
    """Recompute the CRC32 of everything before the trailer."""
    f.seek(0)
    left, crc = layout.payload_start + layout.payload_len, 0
    buf = bytearray(min(_CHUNK, max(left, 1)))
    view = memoryview(buf)
    while left > 0:
        n = f.readinto(view[: min(left, len(buf))])
        if not n:
            raise _Invalid("truncated while reading")
        crc = zlib.crc32(view[:n], crc)
        left -= n
    if crc != layout.crc:
        raise _Invalid("checksum mismatch: the file is corrupt (damaged on disk or in transfer)")


def _load_payload(f: Any, layout: _Layout, path: Path, map_location: Any) -> dict[str, Any]:
    state = _torch_load(Window(f, layout.payload_start, layout.payload_len), path, map_location)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def _torch_load(source: Any, path: Path, map_location: Any) -> Any:
    """torch.load with weights_only=True, its failures turned into messages naming the file."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(e), re.DOTALL)
            detail = reason.group(1) if reason else str(e).splitlines()[0]
            raise ValueError(f"{path} cannot be loaded safely ({detail}): it is corrupt or not a torch file.") from None
        raise ValueError(
            f"refusing to load {path}: it holds Python objects ({found.group(1)}) that would run code when loaded. "
            "Checkpoints may hold only tensors, numbers, strings, lists and dicts; if you made this file, "
            "save plain state_dicts instead. Never load a file from a source you do not trust with "
            "weights_only=False."
        ) from None
    except (RuntimeError, EOFError, KeyError, AttributeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is not a readable torch file ({first}); it may be truncated or corrupt.") from None


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint (verified), a plain torch file or `.safetensors` weights; never runs code.

    Files from `save_checkpoint` are checked against their CRC first. Plain `torch.save` files
    (e.g. pretrained weights from a Kaggle dataset) load with `weights_only=True`; anything that
    would execute code on load is refused with a ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: check the path, or use "
                                "find_latest(folder) to find the newest valid checkpoint.")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        if head == MAGIC:
            try:
                layout = _read_layout(f)
                _verify(f, layout)
            except _Invalid as e:
                raise ValueError(f"{path} cannot be used: {e}. Use an earlier checkpoint "
                                 "(load_latest(folder) falls back by itself) or start fresh.") from None
            return _load_payload(f, layout, path, map_location)
    if not (head.startswith(_ZIP) or head[:1] == b"\x80"):
        raise ValueError(f"{path} is not a checkpoint or a torch/safetensors weights file "
                         "(unrecognised content): check that the path points at the right file.")
    return _torch_load(path, path, map_location)


def _load_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"{path} is a .safetensors file: install the safetensors package to read it.") from None
    try:
        return load_file(path, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .safetensors file ({e}).") from None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The `meta` a checkpoint was saved with (read from its header, without loading the state)."""
    return read_header(path)["meta"]


# ----------------------------------------------------------------------------- compatibility


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} items [{', '.join(map(repr, value[:5]))}, ...]"
    return repr(value)


def check_compatible(
    saved_meta: Mapping[str, Any], current_meta: Mapping[str, Any], keys: Sequence[str] = COMPAT_KEYS
) -> list[str]:
    """Differences between a checkpoint's meta and this run's, as sentences ([] = compatible).

    Only `keys` present in `current_meta` are compared; values are compared as JSON (a tuple
    equals a list). The caller decides between a fresh start and an error.
    """
    differences = []
    for key in keys:
        if key not in current_meta:
            continue
        current = json.loads(json.dumps(current_meta[key], default=str))
        if key not in saved_meta:
            differences.append(f"{key}: the checkpoint does not record it (this run: {_short(current)})")
        elif saved_meta[key] != current:
            differences.append(f"{key}: the checkpoint has {_short(saved_meta[key])}, this run has {_short(current)}")
    return differences
