"""Tests for kagglekit_nb.archives: finding competition archives and extracting each once, safely, into
a scratch folder (real zip, tar and 7z files written here)."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from kagglekit_nb import archives
from kagglekit_nb.archives import MARKER, archive_stem, extract, extract_all, find_archives

try:
    import py7zr
except ImportError:  # the test extra installs it
    py7zr = None
needs_py7zr = pytest.mark.skipif(py7zr is None, reason="py7zr is not installed: pip install -e '.[test]'")


def make_zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def make_7z(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with py7zr.SevenZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(data, name)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (the marker left out) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MARKER}


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


IMAGES = {"a.jpg": b"jpeg a", "sub/b.jpg": b"jpeg b"}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "stem"), [
    ("train.zip", "train"), ("train.tar.gz", "train"), ("test.tgz", "test"), ("x.tar", "x"),
    ("train.7z", "train"), ("sample_submission.csv.zip", "sample_submission.csv"), ("TRAIN.ZIP", "TRAIN"),
    ("images.tar.xz", "images"),
])
def test_archive_stem(name, stem):
    assert archive_stem(Path("/data") / name) == stem


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz", ".zip", "notes"])
def test_archive_stem_refuses_other_files(name):
    with pytest.raises(ValueError, match=r"not an archive.*\.tar\.gz.*\.zip.*\.7z"):
        archive_stem(name)


def test_find_archives_top_and_one_level_down_sorted(tmp_path):
    for rel in ["train.zip", "test.7z", "sample_submission.csv.zip", "extra/more.tar.gz", "a/b/deep.zip",
                ".hidden.zip", ".cache/inside.zip", "train.csv", "labels.csv.gz"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_archives(tmp_path)]
    assert found == ["extra/more.tar.gz", "sample_submission.csv.zip", "test.7z", "train.zip"]


def test_find_archives_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir=.*is not a folder"):
        find_archives(tmp_path / "nope")


# --------------------------------------------------------------------------- layouts


def test_zip_with_top_folder_named_like_the_stem_drops_that_level(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", {"train/": b"", "train/a.jpg": b"jpeg a",
                                                    "train/sub/b.jpg": b"jpeg b",
                                                    "__MACOSX/train/._a.jpg": b"resource fork"})
    out = extract(src, tmp_path / "out", log=Log())
    assert out == tmp_path / "out" / "train"
    assert tree(out) == IMAGES
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"archive": "train.zip", "size": src.stat().st_size, "mtime_ns": src.stat().st_mtime_ns,
                      "members": 2}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train"]  # no partial folder left


def test_zip_without_top_folder_keeps_paths(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", IMAGES)
    assert tree(extract(src, tmp_path / "out", log=Log())) == IMAGES


def test_top_folder_named_otherwise_is_kept(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", {"images/a.jpg": b"A", "images/b.jpg": b"B"})
    out = extract(src, tmp_path / "out", log=Log())
    assert tree(out) == {"images/a.jpg": b"A", "images/b.jpg": b"B"}


def test_tar_gz_with_dot_prefix_leaves_out_links_and_devices(tmp_path):
    src = tmp_path / "in" / "test.tar.gz"
    src.parent.mkdir()
    with tarfile.open(src, "w:gz") as t:
        for name, data in {"./test/a.jpg": b"jpeg a", "./test/sub/b.jpg": b"jpeg b"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        t.addfile(_tar_link("./test/passwd", "/etc/passwd"))
        t.addfile(_tar_link("./test/again.jpg", "./test/a.jpg", tarfile.LNKTYPE))
        device = tarfile.TarInfo("./test/null")
        device.type = tarfile.CHRTYPE
        t.addfile(device)
    log = Log()
    out = extract(src, tmp_path / "out", log=log)
    assert out == tmp_path / "out" / "test"
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} == {"a.jpg", "sub", "sub/b.jpg", MARKER}
    assert tree(out) == IMAGES
    assert log.has("left out 3 links or special files")


def _tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_zip_symlink_member_is_left_out(tmp_path):
    src = tmp_path / "in" / "train.zip"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("a.jpg", b"A")
        link = zipfile.ZipInfo("escape")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    out = extract(src, tmp_path / "out", log=Log())
    assert tree(out) == {"a.jpg": b"A"}
    assert not (out / "escape").exists()


@needs_py7zr
def test_7z_with_top_folder(tmp_path):
    src = make_7z(tmp_path / "in" / "train.7z", {"train/1.png": b"png 1", "train/2.png": b"png 2"})
    out = extract(src, tmp_path / "out", log=Log())
    assert out == tmp_path / "out" / "train"
    assert tree(out) == {"1.png": b"png 1", "2.png": b"png 2"}


@needs_py7zr
def test_7z_extracted_before_needs_no_py7zr(tmp_path, monkeypatch):
    src = make_7z(tmp_path / "in" / "train.7z", {"train/1.png": b"png 1"})
    out = extract(src, tmp_path / "out", log=Log())
    monkeypatch.setitem(sys.modules, "py7zr", None)
    log = Log()
    assert extract(src, tmp_path / "out", log=log) == out
    assert log.has("already extracted") and tree(out) == {"1.png": b"png 1"}


def test_csv_zip_holding_one_file_is_that_file(tmp_path):
    src = make_zip(tmp_path / "in" / "sample_submission.csv.zip", {"sample_submission.csv": b"id,label\n1,0\n"})
    log = Log()
    out = extract(src, tmp_path / "out", log=log)
    assert out == tmp_path / "out" / "sample_submission.csv"
    assert out.is_file() and out.read_bytes() == b"id,label\n1,0\n"
    again = Log()
    assert extract(src, tmp_path / "out", log=again) == out
    assert again.has("already extracted")


def test_csv_zip_holding_several_files_is_a_folder(tmp_path):
    src = make_zip(tmp_path / "in" / "train.csv.zip", {"train.csv": b"a\n", "readme.txt": b"r"})
    out = extract(src, tmp_path / "out", log=Log())
    assert out.is_dir() and tree(out) == {"train.csv": b"a\n", "readme.txt": b"r"}


# --------------------------------------------------------------------------- once, and redone when needed


def test_second_call_skips(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", IMAGES)
    out = extract(src, tmp_path / "out", log=Log())
    (out / "a.jpg").write_bytes(b"changed after extraction")  # a re-extraction would restore it
    log = Log()
    assert extract(src, tmp_path / "out", log=log) == out
    assert (out / "a.jpg").read_bytes() == b"changed after extraction"
    assert log == [f"train.zip: already extracted in {out} (2 files)"]


def test_leftover_partial_and_unmarked_folder_are_redone(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", IMAGES)
    dest = tmp_path / "out"
    (dest / ".train.partial").mkdir(parents=True)
    (dest / ".train.partial" / "half.jpg").write_bytes(b"half")
    (dest / "train").mkdir()
    (dest / "train" / "stale.jpg").write_bytes(b"stale")
    log = Log()
    out = extract(src, dest, log=log)
    assert tree(out) == IMAGES
    assert not (dest / ".train.partial").exists()
    assert log.has("removing") and log.has("no marker of a finished extraction")
    assert log.has("left by an extraction that did not finish")


def test_changed_archive_is_redone(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", IMAGES)
    out = extract(src, tmp_path / "out", log=Log())
    make_zip(src, {"a.jpg": b"a new, longer version of the image"})
    log = Log()
    assert extract(src, tmp_path / "out", log=log) == out
    assert tree(out) == {"a.jpg": b"a new, longer version of the image"}
    assert log.has("extracted from another train.zip")
    assert json.loads((out / MARKER).read_text())["size"] == src.stat().st_size


@needs_py7zr
def test_extract_all_keys_by_stem_and_skips_what_is_done(tmp_path):
    data = tmp_path / "in"
    make_zip(data / "train.zip", {"train/a.jpg": b"A"})
    make_7z(data / "test.7z", {"test/b.png": b"B"})
    make_tar(data / "extra" / "more.tgz", {"c.txt": b"C"})
    make_zip(data / "sample_submission.csv.zip", {"sample_submission.csv": b"id\n"})
    dest = tmp_path / "out"
    found = extract_all(data, dest, log=Log())
    assert found == {"more": dest / "more", "sample_submission.csv": dest / "sample_submission.csv",
                     "test": dest / "test", "train": dest / "train"}
    assert tree(found["train"]) == {"a.jpg": b"A"} and tree(found["test"]) == {"b.png": b"B"}
    assert tree(found["more"]) == {"c.txt": b"C"}
    log = Log()
    assert extract_all(data, dest, log=log) == found
    assert len(log) == 4 and all("already extracted" in line for line in log)


def test_extract_all_refuses_two_archives_with_one_stem(tmp_path):
    make_zip(tmp_path / "in" / "train.zip", {"a": b"a"})
    make_tar(tmp_path / "in" / "train.tar.gz", {"a": b"a"})
    with pytest.raises(ValueError, match=r"same folder \(train: .*train.tar.gz, .*train.zip\)"):
        extract_all(tmp_path / "in", tmp_path / "out", log=Log())


# --------------------------------------------------------------------------- refusals and damage


@pytest.mark.parametrize(("member", "needle"), [("../evil.txt", "climbs out"), ("train/../../evil.txt", "climbs out"),
                                                ("/tmp/evil.txt", "absolute path")])
def test_unsafe_member_is_refused(tmp_path, member, needle):
    src = make_zip(tmp_path / "in" / "train.zip", {"ok.jpg": b"ok", member: b"evil"})
    with pytest.raises(ValueError, match=rf"train.zip holds a member .*{needle}.*{member!r}"):
        extract(src, tmp_path / "out" / "x", log=Log())
    assert not (tmp_path / "out" / "x").exists() or not any((tmp_path / "out" / "x").iterdir())
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_unsafe_tar_member_is_refused(tmp_path):
    src = make_tar(tmp_path / "in" / "train.tar", {"a.jpg": b"a", "../../evil.txt": b"evil"}, mode="w")
    with pytest.raises(ValueError, match=r"train.tar holds a member .*'\.\./\.\./evil.txt'"):
        extract(src, tmp_path / "out", log=Log())
    assert not (tmp_path / "evil.txt").exists()


def test_not_a_zip_says_re_download_and_leaves_nothing(tmp_path):
    src = tmp_path / "in" / "train.zip"
    src.parent.mkdir()
    src.write_bytes(b"<html>download interrupted</html>")
    with pytest.raises(ValueError, match=r"train.zip is damaged or incomplete .*re-download it"):
        extract(src, tmp_path / "out", log=Log())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_bytes_inside_a_zip_leave_nothing_half_done(tmp_path):
    src = make_zip(tmp_path / "in" / "train.zip", {"a.jpg": b"A" * 1000, "b.jpg": b"B" * 1000},
                   compression=zipfile.ZIP_STORED)
    data = bytearray(src.read_bytes())
    at = data.index(b"B" * 1000)
    data[at + 500] ^= 0xFF  # the listing still reads; b.jpg fails its CRC
    src.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match="damaged or incomplete.*re-download"):
        extract(src, dest, log=Log())
    assert list(dest.iterdir()) == []  # neither the partial folder nor a target


def test_truncated_tar_gz_is_damaged(tmp_path):
    src = make_tar(tmp_path / "in" / "train.tar.gz", {f"{i}.bin": os.urandom(20_000) for i in range(5)})
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="train.tar.gz is damaged or incomplete"):
        extract(src, tmp_path / "out", log=Log())
    assert not (tmp_path / "out" / "train").exists() and not (tmp_path / "out" / ".train.partial").exists()


@needs_py7zr
def test_bad_bytes_inside_a_7z_are_damaged(tmp_path):
    src = make_7z(tmp_path / "in" / "train.7z", {f"train/{i}.bin": os.urandom(5000) for i in range(3)})
    data = bytearray(src.read_bytes())
    data[2000] ^= 0xFF
    src.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train.7z is damaged or incomplete.*re-download"):
        extract(src, tmp_path / "out", log=Log())
    assert list((tmp_path / "out").iterdir()) == []


def test_7z_without_py7zr_says_how_to_install_it(tmp_path, monkeypatch):
    src = tmp_path / "train.7z"
    src.write_bytes(b"7z\xbc\xaf\x27\x1c")  # never read: the missing reader is found first
    monkeypatch.setitem(sys.modules, "py7zr", None)  # `import py7zr` now fails as if not installed
    needle = r"train.7z is a 7z archive: pip install py7zr \(or kagglekit_nb\[formats\]\) to read it"
    with pytest.raises(RuntimeError, match=needle):
        extract(src, tmp_path / "out", log=Log())
    assert not (tmp_path / "out").exists()


def test_not_enough_disk_space_says_needed_and_free(tmp_path, monkeypatch):
    src = make_zip(tmp_path / "in" / "train.zip", {"big.bin": b"\0" * 3 * 1024 * 1024})
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10 << 30, used=10 << 30, free=1 << 20))
    with pytest.raises(OSError, match=r"train.zip needs 3.0 MiB but .*out has 1.0 MiB free.*KAGGLEKIT_SCRATCH"):
        extract(src, tmp_path / "out", log=Log())
    assert list((tmp_path / "out").iterdir()) == []


def test_dest_root_next_to_the_archive_is_refused(tmp_path):
    src = make_zip(tmp_path / "train.zip", IMAGES)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.jpg").write_bytes(b"the competitor's own file")
    with pytest.raises(ValueError, match="dest_root=.*holds train.zip.*scratch folder"):
        extract(src, tmp_path, log=Log())
    assert (tmp_path / "train" / "mine.jpg").read_bytes() == b"the competitor's own file"


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive=.*train.zip.*is not a file"):
        extract(tmp_path / "train.zip", tmp_path / "out", log=Log())


# --------------------------------------------------------------------------- progress and imports


class RecordingProgress:
    def __init__(self, total, desc, **kwargs):
        self.total, self.desc, self.kwargs, self.n = total, desc, kwargs, 0

    def update(self, n=1):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.mark.parametrize("make", [make_zip, pytest.param(make_7z, marks=needs_py7zr)])
def test_progress_counts_the_files(tmp_path, monkeypatch, make):
    bars = []

    def recording(*args, **kwargs):
        bars.append(RecordingProgress(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(archives.ui, "progress", recording)
    suffix = ".zip" if make is make_zip else ".7z"
    src = make(tmp_path / "in" / f"train{suffix}", {f"{i}.png": b"p" * i for i in range(7)})
    log = Log()
    extract(src, tmp_path / "out", log=log)
    assert [(b.total, b.n, b.kwargs["unit"]) for b in bars] == [(7, 7, "file")]
    assert bars[0].desc == f"extract train{suffix}"
    assert log[-1].startswith(f"train{suffix}: extracted 7 files (21 B) into ") and log[-1].endswith("s")


def test_import_is_light():
    code = ("import sys, kagglekit_nb.archives; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'py7zr') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
