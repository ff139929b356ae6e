"""A copy of the checkpoints on a second file system (Google Drive on Colab), kept up to date.

    mirror = Mirror(local="/content/kagglekit_local/run/checkpoints", remote="/content/drive/.../checkpoints")
    mirror.restore()                                   # a new runtime: copy back what Drive holds
    save_checkpoint(state, mirror.local / "fold0", step=step, mirror=mirror)   # saved, then copied

On Colab the run folder lives on Google Drive, a network file system where a write is slow and a
runtime that dies mid-write leaves a half-uploaded file. So checkpoints are saved on the local disk
first (atomically, by `checkpoint.save_checkpoint`) and then copied to Drive by `Mirror.sync`: a temp
name on Drive, fsync, `os.replace`, fsync of the folder (`_atomic.write_atomic`). A new runtime
starts with an empty local disk; `Mirror.restore` copies back what Drive holds before anything looks
for a checkpoint. `start_run` creates the mirror (`run.mirror`, None off Drive); whoever saves passes
it on.

The remote folder has one writer, the mirror of the run that owns it: a temp file found there is
left by an interrupted copy and is removed.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._atomic import write_atomic
from .checkpoint import _TRAILER, BEST_FILE, STEP_PATTERN, _remove, list_checkpoints

__all__ = ["Mirror", "copy_atomic"]

Log = Callable[[str], None]

_CHUNK = 8 << 20  # copy buffer
_COPY_TEMP = re.compile(r"^\.(?:step-\d+\.ckpt|best\.ckpt)\..+\.tmp$")  # a copy (or save) of a checkpoint, unfinished


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy `src` to `dst` so that `dst` is always either absent, the old file or the whole new one.

    Written under a temp name next to `dst`, flushed and fsynced, then `os.replace`d; the folder is
    fsynced after. A failed copy leaves no temp file behind and `dst` as it was.
    """
    with open(src, "rb") as fin:
        return write_atomic(dst, lambda fout: shutil.copyfileobj(fin, fout, _CHUNK), binary=True)


def _same_checkpoint(a: Path, b: Path) -> bool:
    """Same size and same trailer (payload length + CRC32 of everything before it): the same file."""
    try:
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            return False
        tails = []
        for path in (a, b):
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - _TRAILER.size))
                tails.append(f.read())
        return tails[0] == tails[1]
    except OSError:
        return False


def _remove_copy_temps(folder: Path, log: Log | None) -> None:
    """Temp files of checkpoint copies in `folder` (one writer: they were interrupted) are removed."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _COPY_TEMP.match(entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                if log is not None:
                    log(f"removed {entry.name} in {folder}, left by an interrupted copy")


@dataclass(frozen=True)
class Mirror:
    """Checkpoints saved under `local` are copied to the same place under `remote` (e.g. Google Drive)."""

    local: Path
    remote: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "local", Path(self.local).resolve())
        object.__setattr__(self, "remote", Path(self.remote))

    def remote_of(self, directory: str | os.PathLike) -> Path | None:
        """The remote folder `directory` is mirrored to, or None when it is not under `local`."""
        directory = Path(directory).resolve()
        if not directory.is_relative_to(self.local):
            return None
        return self.remote / directory.relative_to(self.local)

    def sync(self, directory: str | os.PathLike, *, log: Log | None = print) -> list[Path]:
        """Bring the mirror of `directory` up to date; returns the files copied ([] outside `local`).

        The newest step file goes first, then the older ones and `BEST_FILE`, each with `copy_atomic`
        and only when the mirror's copy differs; step files the local folder no longer has (pruned by
        `keep`) are removed from the mirror last, so it always holds a complete checkpoint.
        """
        directory = Path(directory)
        remote = self.remote_of(directory)
        if remote is None:
            return []
        remote.mkdir(parents=True, exist_ok=True)
        _remove_copy_temps(remote, log)
        local = [p for _, p in reversed(list_checkpoints(directory))]
        best = directory / BEST_FILE
        copied = []
        for src in local + ([best] if best.is_file() else []):
            dst = remote / src.name
            if not _same_checkpoint(src, dst):
                copied.append(copy_atomic(src, dst))
        names = {p.name for p in local}
        for _, p in list_checkpoints(remote):
            if p.name not in names:
                _remove(p, log)
        return copied

    def after_save(self, directory: str | os.PathLike, saved: Path, *, log: Log | None = print) -> None:
        """`sync(directory)` after `saved` was written: a failed copy is reported, never raised (the
        local save stands, and the next save copies what is missing)."""
        try:
            self.sync(directory, log=log)
        except OSError as e:
            if log is not None:
                log(f"WARNING: {saved.name} is saved in {directory} but could not be copied to "
                    f"{self.remote_of(directory)}: {e.strerror or e}. A lost runtime would lose it; "
                    "the next save tries the copy again.")

    def restore(self, *, log: Log | None = print) -> list[Path]:
        """Copy every checkpoint under `remote` that `local` lacks (a new runtime's empty disk) to the
        same place under `local`; returns the local files written. Files `local` has are kept."""
        restored: list[Path] = []
        if not self.remote.is_dir():
            return restored
        for folder, _, files in sorted(os.walk(self.remote)):
            target = self.local / Path(folder).relative_to(self.remote)
            for name in sorted(files):
                if not (STEP_PATTERN.match(name) or name == BEST_FILE):
                    continue
                dst = target / name
                if not dst.exists():
                    restored.append(copy_atomic(Path(folder) / name, dst))
        if restored and log is not None:
            log(f"copied {len(restored)} checkpoint file(s) from {self.remote} to {self.local}")
        return restored
