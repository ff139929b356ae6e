"""Competition archives (`train.zip`, cifar-10's `train.7z`, `test.tar.gz`, `sample_submission.csv.zip`):
found in the data folder and extracted once into a scratch folder, since the competition input is
read-only.

    dest = kk.env.make_scratch_dir()                # /kaggle/temp on Kaggle (see env.scratch_dir)
    data = kk.archives.extract_all(DATA_DIR, dest)  # {"train": dest/"train", "test": dest/"test", ...}

`train.zip` holding `train/a.jpg` and `train.zip` holding `a.jpg` both give `dest/train/a.jpg`. An
extraction is written into `dest/.<stem>.partial/`, gets a marker file naming the archive (name, size,
modification time), and is renamed into place in one step; a later call that finds the marker of the
same archive skips it, so a notebook can call `extract_all` at every start. Zip and tar are read with
the standard library, 7z with py7zr, imported only when a 7z archive is extracted.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import inspect
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import ui
from ._atomic import fsync_dir, write_json
from .env import SCRATCH_VAR

__all__ = ["ARCHIVE_SUFFIXES", "MARKER", "archive_stem", "extract", "extract_all", "find_archives"]

# Longest first, so that train.tar.gz is read as a .tar.gz (stem "train"), not as a .gz.
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip", ".7z")
_FORMATS = {".zip": "zip", ".7z": "7z"}  # every other suffix is a tar
# Written inside a finished extraction (beside it, as .<stem><MARKER>, when the result is one file).
MARKER = ".kagglekit_extracted.json"
_MARKER_KEYS = ("archive", "size", "mtime_ns")  # what must match for a later call to skip
# An archive named <name>.csv.zip (or .tsv, .json, ...) that holds one file is that file.
_SINGLE_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
# The folder of resource forks that zip tools on macOS add beside the data; never extracted.
_MACOS_JUNK = "__MACOSX"
_PY7ZR_MISSING = "is a 7z archive: pip install py7zr (or kagglekit_nb[formats]) to read it"
# Errors that mean the archive's bytes are bad (truncated download, flipped bits), not the disk.
_DAMAGED: tuple[type[BaseException], ...] = (zipfile.BadZipFile, tarfile.ReadError, gzip.BadGzipFile,
                                             EOFError, zlib.error, lzma.LZMAError)


def _suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if lower.endswith(s) and len(lower) > len(s)), None)


def archive_stem(path: str | os.PathLike) -> str:
    """The name an archive is extracted under: `train.zip` -> `train`, `train.tar.gz` -> `train`,
    `sample_submission.csv.zip` -> `sample_submission.csv`."""
    name = Path(path).name
    suffix = _suffix(name)
    if suffix is None:
        raise ValueError(f"{str(path)!r} is not an archive the kit reads; the names it reads end in "
                         f"{', '.join(ARCHIVE_SUFFIXES)}.")
    return name[:-len(suffix)]


def find_archives(data_dir: str | os.PathLike) -> list[Path]:
    """The archives directly in `data_dir` and in its folders one level down (hidden names left out),
    sorted by their path below `data_dir`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r} is not a folder: point it at the competition "
                                "data (e.g. /kaggle/input/<competition>).")
    found = []
    for entry in _visible(root):
        inside = _visible(entry) if entry.is_dir() else [entry]
        found += [p for p in inside if p.is_file() and _suffix(p.name)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


# --------------------------------------------------------------------------- reading archives


@dataclass
class _Member:
    name: str  # as stored in the archive
    kind: str  # "file", "dir", or "other" (a link or a device: never extracted)
    size: int
    ref: Any = None  # the reader's own handle (ZipInfo, TarInfo)
    parts: tuple[str, ...] = ()


class _Reader:
    """Lists an archive's members and writes the chosen files; `close` may be called twice."""

    _f: Any = None

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            f.close()


class _ZipReader(_Reader):
    def __init__(self, path: Path):
        self._f = zipfile.ZipFile(path)

    def members(self) -> list[_Member]:
        def kind(info: zipfile.ZipInfo) -> str:
            if info.is_dir():
                return "dir"
            return "other" if stat.S_ISLNK(info.external_attr >> 16) else "file"
        return [_Member(i.filename, kind(i), i.file_size, i) for i in self._f.infolist()]

    def extract(self, files: list[_Member], dest: Path, done: Callable[[int], Any]) -> None:
        for m in files:
            self._f.extract(m.ref, dest)
            done(1)


# tarfile's "data" filter (Python 3.11.4+) also drops set-uid bits and refuses paths that leave dest.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class _TarReader(_Reader):
    def __init__(self, path: Path):
        self._f = tarfile.open(path)  # any compression tarfile knows (gz, bz2, xz)

    def members(self) -> list[_Member]:
        def kind(info: tarfile.TarInfo) -> str:
            return "file" if info.isreg() else "dir" if info.isdir() else "other"
        return [_Member(i.name, kind(i), i.size, i) for i in self._f.getmembers()]

    def extract(self, files: list[_Member], dest: Path, done: Callable[[int], Any]) -> None:
        for m in files:
            self._f.extract(m.ref, dest, **_TAR_FILTER)
            done(1)


class _SevenZipReader(_Reader):
    def __init__(self, path: Path, py7zr: Any):
        self._py7zr = py7zr
        self._f = py7zr.SevenZipFile(path, mode="r")

    def members(self) -> list[_Member]:
        def kind(f: Any) -> str:
            if f.is_directory:
                return "dir"
            special = f.is_symlink or getattr(f, "is_junction", False) or getattr(f, "is_socket", False)
            return "other" if special else "file"
        return [_Member(f.filename, kind(f), f.uncompressed or 0) for f in self._f.files]

    def extract(self, files: list[_Member], dest: Path, done: Callable[[int], Any]) -> None:
        # py7zr reports each file from a thread of its own; it is joined when the archive is closed.
        # Versions before 1.0 take no callback on extract: the count then moves once, at the end.
        reported = "callback" in inspect.signature(self._f.extract).parameters
        kwargs = {"callback": _seven_zip_callback(self._py7zr, done)} if reported else {}
        self._f.extract(path=dest, targets=[m.name for m in files], **kwargs)
        if not reported:
            done(len(files))


def _seven_zip_callback(py7zr: Any, done: Callable[[int], Any]) -> Any:
    from py7zr.callbacks import ExtractCallback

    class Counter(ExtractCallback):
        def report_start_preparation(self) -> None: ...
        def report_start(self, processing_file_path: str, processing_bytes: str) -> None: ...
        def report_update(self, decompressed_bytes: str) -> None: ...
        def report_end(self, processing_file_path: str, wrote_bytes: str) -> None:
            done(1)
        def report_warning(self, message: str) -> None: ...
        def report_postprocess(self) -> None: ...

    return Counter()


def _open(archive: Path) -> tuple[Any, tuple[type[BaseException], ...]]:
    """The reader for `archive` and the errors that mean its bytes are damaged."""
    fmt = _FORMATS.get(_suffix(archive.name) or "", "tar")
    if fmt != "7z":
        return (_ZipReader if fmt == "zip" else _TarReader), _DAMAGED
    try:
        import py7zr
    except ImportError:
        raise RuntimeError(f"{archive} {_PY7ZR_MISSING}.") from None
    return (lambda path: _SevenZipReader(path, py7zr)), (*_DAMAGED, py7zr.exceptions.ArchiveError)


# --------------------------------------------------------------------------- what goes where


@dataclass
class _Plan:
    files: list[_Member]  # regular files to write
    dirs: list[tuple[str, ...]]  # folders to create (parents of files included)
    skipped: int  # links and devices left out
    size: int  # bytes the files take once extracted
    strip: bool  # every member lies under one folder named like the stem: that level is dropped
    single: _Member | None  # <name>.csv.zip holding one file: the result is that file


def _parts(name: str, archive: Path) -> tuple[str, ...]:
    """A member's path parts; an absolute path or a '..' would write outside the folder: refused."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        raise ValueError(f"{archive} holds a member with an absolute path, {name!r}: refusing to extract "
                         "it, since it would write outside the extraction folder. Check where the archive "
                         "came from; extract the files you need by hand.")
    parts = PurePosixPath(posix).parts  # "./train/a.jpg" -> ("train", "a.jpg")
    if ".." in parts:
        raise ValueError(f"{archive} holds a member whose path climbs out with '..', {name!r}: refusing to "
                         "extract it, since it would write outside the extraction folder. Check where the "
                         "archive came from; extract the files you need by hand.")
    return parts


def _plan(members: list[_Member], archive: Path, stem: str) -> _Plan:
    kept = []
    for m in members:
        m.parts = _parts(m.name, archive)
        if m.parts and m.parts[0] != _MACOS_JUNK:
            kept.append(m)
    files = [m for m in kept if m.kind == "file"]
    folders = [m.parts for m in kept if m.kind == "dir"]
    single = files[0] if len(files) == 1 and Path(stem).suffix.lower() in _SINGLE_FILE_SUFFIXES else None
    strip = single is None and bool(files) and all(p[0] == stem for p in folders) and \
        all(len(m.parts) > 1 and m.parts[0] == stem for m in files)
    dirs = sorted({*folders, *(m.parts[:-1] for m in files if len(m.parts) > 1)})
    return _Plan(files, dirs, sum(m.kind == "other" for m in kept), sum(m.size for m in files), strip, single)


# --------------------------------------------------------------------------- extraction


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _check_space(needed: int, dest_root: Path, archive: Path) -> None:
    free = shutil.disk_usage(dest_root).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"extracting {archive.name} needs {_size(needed)} but {dest_root} has "
                                    f"{_size(free)} free: delete files you no longer need there, or set "
                                    f"{SCRATCH_VAR} to a folder on a disk with more room.")


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _quiet(_line: str) -> None:
    return None


def extract(archive: str | os.PathLike, dest_root: str | os.PathLike, *, log: Callable[[str], Any] = print,
            progress: bool = True) -> Path:
    """Extract `archive` into `dest_root/<stem>` once; return the folder holding its contents.

    A single top folder named like the stem is dropped (`train.zip` holding `train/a.jpg` gives
    `dest_root/train/a.jpg`); otherwise members keep their paths. `<name>.csv.zip` (or .tsv, .json,
    .jsonl, .parquet) holding one file puts that file at `dest_root/<name>.csv` and returns the file.
    A finished extraction of the same archive (name, size, mtime) is skipped; a folder left by another
    archive, or without a marker, is removed and redone. Members with an absolute path or '..' are
    refused (ValueError); links and devices are left out; `__MACOSX/` is never extracted. A damaged
    archive raises ValueError and leaves nothing behind; not enough free space raises OSError first.
    `dest_root` belongs to the kit: give a scratch folder (`kk.env.make_scratch_dir()`).

        train_dir = kk.archives.extract(DATA_DIR / "train.zip", kk.env.make_scratch_dir())
    """
    archive, dest_root = Path(archive), Path(dest_root)
    if not archive.is_file():
        raise FileNotFoundError(f"archive={str(archive)!r} is not a file: give the path of a "
                                f"{'/'.join(ARCHIVE_SUFFIXES)} file (kk.archives.find_archives lists them).")
    stem = archive_stem(archive)
    if dest_root.resolve() == archive.parent.resolve():
        raise ValueError(f"dest_root={str(dest_root)!r} is the folder that holds {archive.name}; extract into "
                         "a scratch folder instead (kk.env.make_scratch_dir()), which the kit may clear.")
    st = archive.stat()
    expected = {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    target, partial = dest_root / stem, dest_root / f".{stem}.partial"
    sidecar = dest_root / f".{stem}{MARKER}"
    recorded = _read_marker(target / MARKER if target.is_dir() else sidecar) if target.exists() else None
    if recorded is not None and all(recorded.get(k) == expected[k] for k in _MARKER_KEYS):
        log(f"{archive.name}: already extracted in {target} ({_files(recorded.get('members', 0))})")
        return target

    start = time.monotonic()
    opener, damaged = _open(archive)
    with _reported_as_damaged(archive, damaged):
        reader = opener(archive)
        try:
            plan = _plan(reader.members(), archive, stem)
            dest_root.mkdir(parents=True, exist_ok=True)
            _clear(archive, target, partial, sidecar, recorded, log)
            _check_space(plan.size, dest_root, archive)
            log(f"{archive.name}: extracting {_files(len(plan.files))} ({_size(plan.size)}) into {target}")
            bar = ui.progress(len(plan.files), f"extract {archive.name}", unit="file",
                              echo=log if progress else _quiet, live=None if progress else False)
            _write(reader, plan, partial, bar)
            try:
                _place(plan, partial, target, sidecar, {**expected, "members": len(plan.files)})
            finally:
                _remove(partial)  # an empty shell once placed; a failed move leaves nothing either
        finally:
            reader.close()
    note = f"; left out {plan.skipped} links or special files" if plan.skipped else ""
    log(f"{archive.name}: extracted {_files(len(plan.files))} ({_size(plan.size)}) into {target} "
        f"in {time.monotonic() - start:.1f}s{note}")
    return target


@contextlib.contextmanager
def _reported_as_damaged(archive: Path, damaged: tuple[type[BaseException], ...]) -> Iterator[None]:
    try:
        yield
    except damaged as e:
        raise ValueError(f"{archive} is damaged or incomplete ({type(e).__name__}: {e}): re-download it "
                         "(or re-attach the competition data) and run again.") from e


def _clear(archive: Path, target: Path, partial: Path, sidecar: Path, recorded: dict[str, Any] | None,
           log: Callable[[str], Any]) -> None:
    """Remove what an earlier extraction left that does not match `archive`."""
    if target.exists() or sidecar.exists():
        why = "it holds no marker of a finished extraction" if recorded is None else \
            f"it was extracted from another {recorded.get('archive')} (size or modification time differ)"
        log(f"{archive.name}: removing {target}, {why}; extracting again")
        _remove(target)
        sidecar.unlink(missing_ok=True)
    if partial.exists():
        log(f"{archive.name}: removing {partial}, left by an extraction that did not finish")
        _remove(partial)


def _write(reader: _Reader, plan: _Plan, partial: Path, bar: Any) -> None:
    """Write the planned folders and files into `partial`; on any failure, remove `partial`."""
    partial.mkdir()
    try:
        for parts in plan.dirs:
            partial.joinpath(*parts).mkdir(parents=True, exist_ok=True)
        with bar:
            try:
                reader.extract(plan.files, partial, bar.update)
            finally:
                reader.close()  # joins py7zr's reporting thread before the bar closes
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _place(plan: _Plan, partial: Path, target: Path, sidecar: Path, marker: dict[str, Any]) -> None:
    """Move the finished extraction from `partial` to `target` in one rename, marker included.

    The extracted files are not synced one by one (the archive can be extracted again); the marker
    and the rename are."""
    if plan.single is not None:
        os.replace(partial.joinpath(*plan.single.parts), target)
        write_json(sidecar, marker)  # after the file: a file without its marker is redone
    else:
        result = partial / target.name if plan.strip else partial
        write_json(result / MARKER, marker)
        os.replace(result, target)
    fsync_dir(target.parent)


def extract_all(data_dir: str | os.PathLike, dest_root: str | os.PathLike, *,
                log: Callable[[str], Any] = print) -> dict[str, Path]:
    """Extract every archive `find_archives(data_dir)` lists into `dest_root`; return
    {stem: extracted folder (or file)}. Archives extracted before cost one marker read each.

        data = kk.archives.extract_all(DATA_DIR, kk.env.make_scratch_dir())
        train_dir = data["train"]
    """
    by_stem: dict[str, list[Path]] = {}
    for path in find_archives(data_dir):
        by_stem.setdefault(archive_stem(path), []).append(path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(f"{stem}: {', '.join(str(p) for p in paths)}" for stem, paths in clashes.items())
        raise ValueError(f"several archives under {data_dir} would extract to the same folder ({listed}): "
                         "call kk.archives.extract on the one you mean.")
    return {stem: extract(paths[0], dest_root, log=log) for stem, paths in by_stem.items()}
