"""The files of an image competition as Kaggle publishes them: CSV cells as text, the sample submission
under its published names, archives extracted into the scratch folder, one index of every image file,
image paths by id, and the detectors of where the training labels are (a labels CSV, pixel rows, one
folder per class, labels in file names). `tasks.competition` turns what they find into the one
`Competition` record. No torch; images are listed, never decoded (pixel rows are written as PNGs)."""
from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .competition import Overrides

__all__ = ["CSV_ENCODINGS", "DICOM_HINT", "IMAGE_EXTENSIONS", "find_sample", "read_csv", "read_sample",
           "resolve_images", "scratch_for"]

# In order of preference when one image exists in several formats (SIIM-ISIC ships every image as .jpg
# and as .dcm): formats PIL decodes first, DICOM (pydicom, an optional package) last.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".dcm")
DICOM_HINT = "pip install pydicom (or kagglekit_nb[formats])"
CSV_ENCODINGS = ("utf-8", "utf-8-sig", "cp1252", "latin-1")  # tried in this order; latin-1 reads any bytes
SAMPLE_PATTERN = "[sS]ample*[sS]ubmission*"        # sample_submission.csv, sampleSubmission.csv, ..._v2.csv(.zip)
LABEL_FILE_NAMES = ("train.csv", "train_labels.csv", "labels.csv", "trainlabels.csv", "train_v2.csv")
PIXEL_COLUMN = re.compile(r"pixel_?\d+", re.IGNORECASE)
MIN_PIXEL_COLUMNS = 64           # a CSV with this many pixelN columns holds images, one per row
_INDEX_CACHE: dict[tuple[str, ...], tuple[tuple, "_Index"]] = {}  # one walk per set of folders per process


def read_csv(path: Path, log: Callable[[str], Any] | None = None, *, nrows: int | None = None) -> pd.DataFrame:
    """A CSV as text cells; a file that is not UTF-8 is read in the first of CSV_ENCODINGS that
    decodes it (said in the log, kept in `df.attrs["encoding"]`)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the classification notebook needs {path.name} "
                                f"in DATA_DIR ({path.parent}).")
    for encoding in CSV_ENCODINGS:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, nrows=nrows)
            break
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ValueError(f"{path} is not a readable CSV file ({e}).") from e
    if df.empty and nrows is None:
        raise ValueError(f"{path} has no rows.")
    if encoding != CSV_ENCODINGS[0]:
        df.columns = [c.lstrip("\ufeff") for c in df.columns]
        if log is not None and nrows is None:
            log(f"{path.name} is not UTF-8: read it as {encoding}")
    df.attrs["encoding"] = encoding
    return df


def _column(df: pd.DataFrame, name: str) -> str | None:
    """The column of `df` called `name`, ignoring case and surrounding spaces."""
    if name in df.columns:
        return name
    folded = {str(c).strip().lower(): c for c in df.columns}
    return folded.get(str(name).strip().lower())


def _unnamed(name: str) -> bool:
    """A header cell pandas made up for an empty name (a saved pandas index: `,label`)."""
    return not str(name).strip() or bool(re.fullmatch(r"Unnamed: \d+", str(name)))




def scratch_for(data_dir: Path, scratch: Path) -> Path:
    """This competition's folder inside the scratch dir (extracted archives, images built from pixels)."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return scratch / f"{data_dir.resolve().name}-{digest}"


def _roots(data_dir: Path, scratch: Path | None, log: Callable[[str], Any]) -> list[Path]:
    """The folders to read: the data dir, and the extraction of each archive in it."""
    from .. import archives

    if not archives.find_archives(data_dir):
        return [data_dir]
    if scratch is None:
        raise ValueError(f"{data_dir} holds archives ({', '.join(p.name for p in archives.find_archives(data_dir))}) "
                         "and no scratch folder was given to extract them into.")
    dest = scratch_for(data_dir, scratch)
    dest.mkdir(parents=True, exist_ok=True)
    extracted = archives.extract_all(data_dir, dest, log=log)
    return [data_dir, dest] if extracted else [data_dir]


def find_sample(roots: list[Path], sample_file: str | None = None) -> Path:
    """The sample submission: SAMPLE_FILE, else `sample_submission.csv`, else the one file named like it."""
    data_dir = roots[0]
    if sample_file:
        path = Path(sample_file)
        path = path if path.is_absolute() else data_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"SAMPLE_FILE={sample_file!r}: {path} is not a file.")
        return path
    found: list[Path] = []
    for root in roots:
        for pattern in (SAMPLE_PATTERN + ".csv", "*/" + SAMPLE_PATTERN + ".csv"):
            found.extend(p for p in sorted(root.glob(pattern)) if p.is_file())
    exact = [p for p in found if p.name == "sample_submission.csv"]
    if len(exact) == 1:
        return exact[0]
    if len(found) == 1:
        return found[0]
    if not found:
        csvs = sorted(p.name for root in roots for p in root.glob("*.csv"))
        raise FileNotFoundError(
            f"no sample submission in {data_dir} (looked for sample_submission.csv and names like it; CSV files "
            f"there: {csvs or 'none'}). Attach the competition's data, or set SAMPLE_FILE.")
    raise ValueError(f"several sample submissions in {data_dir}: {[str(p.relative_to(p.parents[1])) for p in found]}; "
                     "set SAMPLE_FILE to the one the competition scores.")


def read_sample(data_dir: Path, sample_file: str | None = None, *, scratch: Path | None = None,
                log: Callable[[str], Any] = print) -> tuple[Path, pd.DataFrame, list[Path]]:
    """The sample submission's path and text cells, and the folders the competition's files are in."""
    roots = _roots(data_dir, scratch, log)
    path = find_sample(roots, sample_file)
    sample = read_csv(path, log)
    if len(sample.columns) < 2:
        raise ValueError(f"{path} has only the column {sample.columns[0]!r}: a sample submission needs the "
                         "id column and at least one target column.")
    return path, sample, roots


class _Index:
    """Every image file under some folders, by file name and by stem (one walk, reused)."""

    def __init__(self, roots: list[Path]):
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        self.dirs: Counter[Path] = Counter()       # folder -> images directly in it
        self.other: dict[str, Path] = {}           # files in other formats, by name and stem (for errors)
        self.files: dict[Path, list[Path]] = {}    # folder -> the images directly in it
        self.roots = roots
        for root in roots:
            for dirpath, dirnames, files in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                here = Path(dirpath)
                for name in sorted(files):
                    ext = os.path.splitext(name)[1].lower()
                    if ext not in IMAGE_EXTENSIONS:
                        self.other.setdefault(name, here / name)
                        self.other.setdefault(name[: -len(ext)] if ext else name, here / name)
                        continue
                    p = here / name
                    self.by_name.setdefault(name, []).append(p)
                    self.by_stem.setdefault(name[: -len(ext)], []).append(p)
                    self.dirs[here] += 1
                    self.files.setdefault(here, []).append(p)

    @classmethod
    def of(cls, roots: list[Path]) -> "_Index":
        """The index of `roots`, walked once per process and walked again only when a folder within two
        levels of a root changed (a file added or removed there, e.g. a fixed image before a rerun)."""
        key = tuple(str(r.resolve()) for r in roots)
        stamp = _stamp(roots)
        cached = _INDEX_CACHE.get(key)
        if cached is None or cached[0] != stamp:
            _INDEX_CACHE[key] = (stamp, cls(roots))
        return _INDEX_CACHE[key][1]

    def rel(self, p: Path) -> str:
        for root in self.roots:
            if p.is_relative_to(root):
                return p.relative_to(root).as_posix()
        return p.as_posix()


def _stamp(roots: list[Path]) -> tuple[tuple[str, int], ...]:
    """The modification times of the roots and the folders one and two levels inside them."""
    def subdirs(folder: str) -> list[str]:
        try:  # scandir's entry types need no stat per file: cheap even next to 300k images
            with os.scandir(folder) as entries:
                return sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
        except OSError:
            return []

    out = []
    for root in map(str, roots):
        level1 = subdirs(root)
        for d in [root, *level1, *(d2 for d1 in level1 for d2 in subdirs(d1))]:
            try:
                out.append((d, os.stat(d).st_mtime_ns))
            except OSError:
                continue
    return tuple(out)


def _split_folder(rel: str, split: str) -> bool:
    """Whether a file's folders (not its name) name the split: train/, train_images/, jpeg/test/, test-jpg/."""
    return any(split in part.lower() for part in rel.split("/")[:-1])


def _under(p: Path, folder: Path | None) -> bool:
    return folder is None or p.is_relative_to(folder)


def resolve_images(ids: pd.Series, index: _Index, split: str, source: str, data_dir: Path,
                   folder: Path | None = None, parameter: str = "IMAGE_DIR") -> list[str]:
    """The image file of every id (a file name, or a stem without extension). Of several files for one
    id: those in a folder named for this split, then the preferred format; two left in different folders
    is an ambiguity error naming them and `parameter`."""
    rank = {e: i for i, e in enumerate(IMAGE_EXTENSIONS)}
    paths, missing, clashes = [], [], []
    for i in ids.astype(str):
        cands = [p for p in (index.by_name.get(i) or index.by_stem.get(i) or []) if _under(p, folder)]
        if not cands:
            missing.append(i)
            paths.append("")
            continue
        if len(cands) > 1:
            cands = [p for p in cands if _split_folder(index.rel(p), split)] or cands
            best = min(rank[p.suffix.lower()] for p in cands)
            cands = [p for p in cands if rank[p.suffix.lower()] == best]
            if len(cands) > 1:
                clashes.append(cands)
        paths.append(str(cands[0]))
    unknown = [index.other[m].name for m in missing if m in index.other]
    if unknown:
        raise ValueError(
            f"{len(unknown)} {split} images have an unknown format (e.g. {', '.join(unknown[:5])}); "
            f"supported: {', '.join(IMAGE_EXTENSIONS)}. Convert them, e.g. with PIL, to PNG.")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ids)} images listed in {source} were not found under {data_dir} "
            f"(e.g. {', '.join(repr(m) for m in missing[:5])}; looked for '<id>' and '<id>.<ext>' with ext one of "
            f"{', '.join(IMAGE_EXTENSIONS)}). Check DATA_DIR, that the image folder of this split is attached, "
            f"or set {parameter}.")
    if clashes:
        folders = sorted({str(p.parent) for c in clashes for p in c})
        raise ValueError(
            f"{len(clashes)} {split} images exist in several folders in the same format (e.g. "
            f"{', '.join(index.rel(p) for p in clashes[0][:3])}): the kit cannot tell which folder holds the "
            f"{split} images among {folders[:6]}. Set {parameter} to one of them.")
    return paths




@dataclass
class _Labels:
    """Where the training labels come from, before encoding."""

    source: str                         # csv, pixels, folders, filename
    ids: pd.Series                      # training ids (as the images are found)
    how: str
    file: Path | None = None
    column: str | None = None           # the label column, or None for one-hot columns
    values: pd.Series | None = None     # one text label (or space-separated labels) per row
    onehot: pd.DataFrame | None = None  # one column per sample target column
    paths: list[str] | None = None      # when the source already knows each image (folders, file names, pixels)
    frame: pd.DataFrame | None = None   # the whole labels CSV (pixels: the rows)


def _label_column(df: pd.DataFrame, id_col: str | None, target_cols: list[str], name: str,
                  label_column: str | None) -> tuple[str | None, str]:
    """(the label column of a labels CSV, how it was found); (None, "onehot") when the CSV holds the
    sample's class columns; raises ValueError naming the candidates when it cannot tell."""
    if label_column:
        col = _column(df, label_column)
        if col is None:
            raise ValueError(f"LABEL_COLUMN={label_column!r} is not a column of {name}; its columns are "
                             f"{list(df.columns)[:30]}.")
        return col, "LABEL_COLUMN"
    others = [c for c in df.columns if c != id_col]
    if len(target_cols) > 1:
        if all(_column(df, t) is not None for t in target_cols):
            return None, "the sample's class columns, one per class"
        classes = set(target_cols)
        named = [c for c in others if (vals := df[c].str.strip())[vals != ""].isin(classes).all() and (vals != "").any()]
        if len(named) == 1:
            return named[0], "its values are the sample's class columns"
        raise ValueError(f"{name}: no single column holds the sample's class names ({target_cols[:5]}...) "
                         f"(candidates {named or others[:10]}); set LABEL_COLUMN.")
    col = _column(df, target_cols[0])
    if col is not None and col != id_col:
        return col, f"named like the sample's target {target_cols[0]!r}"
    small = [c for c in others if 2 <= df[c].nunique() <= max(2, len(df) // 2)
             and not PIXEL_COLUMN.fullmatch(str(c)) and not _numeric_feature(df[c])]
    if len(small) == 1:
        return small[0], "the only column with repeated values"
    raise ValueError(f"{name} has no column named like the sample's target {target_cols[0]!r}; candidates: "
                     f"{small or others[:10]}. Set LABEL_COLUMN to the label column.")


def _numeric_feature(cells: pd.Series) -> bool:
    """Continuous numbers (a metadata or feature column, not a label)."""
    numbers = pd.to_numeric(cells, errors="coerce")
    return bool(numbers.notna().all() and (numbers != numbers.round()).any())


def _id_column(df: pd.DataFrame, id_col: str) -> str | None:
    col = _column(df, id_col)
    if col is None and _unnamed(id_col) and len(df.columns) and _unnamed(df.columns[0]):
        col = df.columns[0]
    return col


def _label_files(roots: list[Path], sample_path: Path) -> list[Path]:
    out = []
    for root in roots:
        for p in sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv")):
            if p == sample_path or p.name.lower().startswith(("test", "sample")):
                continue
            out.append(p)
    return out


def _file_rank(p: Path) -> int:
    low = p.name.lower()
    if low in LABEL_FILE_NAMES:
        return 0
    return 1 if low.startswith("train") or "label" in low else 2


def _labels_from_csv(roots: list[Path], sample_path: Path, id_col: str, target_cols: list[str],
                     ov: Overrides, log: Callable[[str], Any], test_ids: set[str] = frozenset()
                     ) -> tuple[_Labels | None, dict[str, str]]:
    """The labels CSV: LABELS_FILE, else the one best-named CSV with the id column and a label column;
    None when no CSV is one, and why each CSV is not. A CSV with the id column whose label column is
    unclear is an error naming the candidates (the best-named such CSV's). A CSV whose ids are mostly the
    sample's (`test_ids`: an answer key, a solution file) is not the training labels."""
    data_dir = roots[0]
    if ov.labels_file:
        path = Path(ov.labels_file)
        path = path if path.is_absolute() else data_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"LABELS_FILE={ov.labels_file!r}: {path} is not a file; CSV files there: "
                                    f"{[p.name for p in _label_files(roots, sample_path)]}.")
        candidates = [path]
    else:
        candidates = _label_files(roots, sample_path)
    usable: list[tuple[int, Path, str | None, str]] = []
    why_not: dict[str, str] = {}
    unclear: list[tuple[int, ValueError]] = []  # CSVs with the id column whose label column is unclear
    for path in candidates:
        head = read_csv(path, nrows=2000)
        pixels = sum(bool(PIXEL_COLUMN.fullmatch(str(c))) for c in head.columns)
        if pixels >= MIN_PIXEL_COLUMNS:
            usable.append((_file_rank(path), path, None, "pixels"))
            continue
        ic = _id_column(head, id_col)
        if ic is None:
            why_not[path.name] = f"no column {id_col!r} (the sample's id column; its columns are {list(head.columns)[:12]})"
            continue
        if not ov.labels_file and test_ids and head[ic].str.strip().isin(test_ids).mean() > 0.5:
            why_not[path.name] = "its ids are the sample's (test) ids"
            continue
        try:
            col, how = _label_column(head, ic, target_cols, path.name, ov.label_column)
        except ValueError as e:
            if ov.labels_file:
                raise
            why_not[path.name] = str(e)
            unclear.append((_file_rank(path), e))
            continue
        usable.append((_file_rank(path), path, col, how))
    if not usable:
        if ov.labels_file:
            raise ValueError(f"LABELS_FILE={ov.labels_file!r} has no id column {id_col!r}.")
        if unclear:  # a CSV with the id column whose label column is unclear: say which to set
            raise min(unclear, key=lambda r: r[0])[1]
        return None, why_not
    usable.sort(key=lambda u: (u[0], str(u[1])))
    best = [u for u in usable if u[0] == usable[0][0]]
    if len(best) > 1:
        raise ValueError(f"several CSV files could be the training labels: {[str(u[1].name) for u in best]}; "
                         "set LABELS_FILE to the right one (and LABEL_COLUMN if needed).")
    _, path, col, how = usable[0]
    df = read_csv(path, log)
    if how == "pixels":
        return _Labels(source="pixels", ids=pd.Series(dtype=str), how="pixel columns, one image per row", file=path,
                       frame=df), why_not
    ic = _id_column(df, id_col)
    ids = df[ic].str.strip()
    if ids.duplicated().any():
        raise ValueError(f"{path.name} repeats ids (e.g. {ids[ids.duplicated()].head(3).tolist()}); each id must "
                         "appear once.")
    if col is None:
        onehot = df[[_column(df, t) for t in target_cols]]
        onehot.columns = target_cols
        return _Labels(source="csv", ids=ids, how=how, file=path, onehot=onehot, frame=df), why_not
    return _Labels(source="csv", ids=ids, how=how, file=path, column=col, values=df[col].str.strip(), frame=df), why_not


def _train_folder(index: _Index, image_dir: Path | None) -> tuple[Path | None, str]:
    """(the folder of the training images, "folders" or "filename") for layouts without a labels CSV."""
    dirs = [d for d in {*index.dirs} if _under(d, image_dir)]
    parents: Counter[Path] = Counter(d.parent for d in dirs)
    per_class = sorted(p for p, n in parents.items() if n >= 2 and index.dirs.get(p, 0) == 0
                       and (image_dir is not None and p == image_dir or "train" in p.name.lower()))
    if per_class:
        return per_class[0], "folders"
    flat = sorted(d for d in dirs if image_dir is not None and d == image_dir or "train" in d.name.lower())
    return (flat[0], "filename") if flat else (None, "")


def _labels_from_files(index: _Index, data_dir: Path, ov: Overrides) -> _Labels | None:
    image_dir = _dir(data_dir, ov.image_dir, index)
    folder, source = _train_folder(index, image_dir)
    if folder is None:
        return None
    if source == "folders":
        files = sorted(p for d in index.dirs if d.parent == folder for p in _images_in(index, d))
        labels = pd.Series([p.parent.name for p in files])
        names = pd.Series([p.name for p in files])
        ids = names if not names.duplicated().any() else pd.Series([f"{p.parent.name}/{p.name}" for p in files])
        return _Labels(source="folders", ids=ids, values=labels, paths=[str(p) for p in files],
                       how=f"one folder per class in {index.rel(folder / 'x')[:-2] or folder.name}")
    files = sorted(_images_in(index, folder))
    stems = [p.name[: -len(p.suffix)] for p in files]
    labels = pd.Series([re.split(r"[._-]", s, maxsplit=1)[0] for s in stems])
    counts = labels.value_counts()
    if not (2 <= len(counts) <= max(2, len(files) // 5) and counts.min() >= 2) or labels.str.isdigit().all():
        return None
    return _Labels(source="filename", ids=pd.Series(stems), values=labels, paths=[str(p) for p in files],
                   how=f"the file names in {folder.name}/ ('<label>.<n>')")


def _images_in(index: _Index, folder: Path) -> list[Path]:
    return index.files.get(folder, [])


def _dir(data_dir: Path, value: str | None, index: _Index | None = None) -> Path | None:
    """IMAGE_DIR / TEST_IMAGE_DIR as a folder: absolute, relative to DATA_DIR, or to an extracted archive."""
    if not value:
        return None
    p = Path(value)
    for base in ([Path("/")] if p.is_absolute() else [data_dir, *(index.roots[1:] if index else [])]):
        if (base / p).is_dir():
            return base / p
    raise FileNotFoundError(f"IMAGE_DIR/TEST_IMAGE_DIR {value!r} is not a folder under {data_dir}.")




def _pixel_images(frame: pd.DataFrame, out: Path, log: Callable[[str], Any]) -> list[str]:
    """One PNG per row of pixel columns (square, grey), written once into `out` (marker file last)."""
    from PIL import Image

    cols = [c for c in frame.columns if PIXEL_COLUMN.fullmatch(str(c))]
    side = int(math.isqrt(len(cols)))
    if side * side != len(cols):
        raise ValueError(f"{len(cols)} pixel columns do not make a square image; the kit reads square grey "
                         "images from pixel columns.")
    paths = [str(out / f"{i}.png") for i in range(len(frame))]
    marker = out / ".complete"
    if marker.is_file() and marker.read_text() == str(len(frame)):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    pixels = frame[cols].apply(pd.to_numeric, errors="coerce").fillna(0).clip(0, 255).to_numpy(np.uint8)
    for p, row in zip(paths, pixels):
        Image.fromarray(row.reshape(side, side)).save(p)
    marker.write_text(str(len(frame)))
    log(f"built {len(paths)} {side}x{side} images from the pixel columns in {out}")
    return paths
