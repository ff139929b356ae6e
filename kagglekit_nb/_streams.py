"""File-like adapters for the checkpoint file (`kagglekit_nb.checkpoint`): a writer that checksums
what passes through it, and a read-only window onto one region of an open file (for torch.load).
"""
from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import Any

import torch

_SLICE = 256 << 10  # write size when saving: fits in the CPU's L2 cache


class CrcWriter:
    """A write-only file wrapper keeping a running CRC32 and byte count of what went through it.

    Large writes go through in `_SLICE` pieces, each checksummed just before it is copied to the
    file, so the copy reads it from the CPU cache: the CRC then costs compute only, not a second
    pass over memory. (A helper thread would hide it on an idle machine, but each hand-off waits
    for a free core while DataLoader workers keep the cores busy.)
    """

    def __init__(self, f: Any) -> None:
        self._f, self.crc, self.size, self.error = f, 0, 0, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, _SLICE):
            piece = view[start : start + _SLICE]
            self.crc = zlib.crc32(piece, self.crc)
            try:
                self._f.write(piece)
            except OSError as e:
                self.error = self.error or e  # kept: torch may replace it by its own RuntimeError
                raise
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._f.flush()


@contextlib.contextmanager
def without_record_crc() -> Iterator[None]:
    """torch.save computes a CRC32 per zip record that torch.load never checks; the file's own
    checksum replaces it, so it is switched off while writing."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    set_ = getattr(torch.serialization, "set_crc32_options", None)
    if get is None or set_ is None:
        yield
        return
    before = get()
    set_(False)
    try:
        yield
    finally:
        set_(before)


class Window:
    """The payload region of an open file, seen as a file of its own (for torch.load)."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        self._f, self._start, self._len, self._pos = f, start, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        n = self._len - self._pos if n is None or n < 0 else min(n, self._len - self._pos)
        if n <= 0:
            return b""
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self._len - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(view[:n])
        self._pos += got
        return got
