"""Atomic, durable file writes: every file the kit keeps (run record, fold registry, labels, reports,
submissions, out-of-fold files, the code package, plots) goes through `write_atomic`.

The protocol: a temp file in the same folder, flush + fsync, `os.replace`, fsync of the folder. A
crash at any point leaves either the old file or the new one, never a mix, and no temp file that a
later run would mistake for data.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], Any], *, newline: str | None = None,
                 binary: bool = False) -> Path:
    """Call `write(fh)` on a temp file in the same folder (text, or bytes with `binary`), fsync,
    `os.replace`, fsync of the folder: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline=newline)) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable; file systems that cannot sync a folder (some FUSE
    mounts, Windows) skip it, a real I/O error is raised."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR):
            raise
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically (see `write_atomic`)."""
    return write_atomic(path, lambda fh: fh.write(text))


def write_json(path: str | os.PathLike, data: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """Write `data` as indented JSON atomically (see `write_atomic`)."""
    def dump(fh: IO[str]) -> None:
        json.dump(data, fh, indent=2, default=default)
        fh.write("\n")
    return write_atomic(path, dump)
