"""Submission checks before upload: verify against the sample, explicit repairs, emergency baseline.

A submission with the wrong ids, a NaN or a saved index column scores zero or is rejected after
hours of work. `verify` catches what the graders catch (ids, row count, columns, ranges, NaN/inf,
CSV dialect) and says how to fix each problem; `repair` applies only the fixes asked for;
`finalize` is the closing step of a run and never leaves it without a valid file.

    report = verify("submission.csv", "sample_submission.csv")
    print(report)                      # one line per problem, each with what to do
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from ._atomic import write_atomic, write_json

__all__ = [
    "KINDS",
    "VERIFICATION_FILE",
    "SubmissionError",
    "VerificationReport",
    "baseline",
    "finalize",
    "infer_kind",
    "register_baseline",
    "register_verifier",
    "repair",
    "verify",
    "write_csv",
]

PathLike = Union[str, "os.PathLike[str]"]
SampleLike = Union[str, "os.PathLike[str]", pd.DataFrame]

VERIFICATION_FILE = "verification.json"  # written by `finalize` into the output dir
KINDS = ("label", "class_proba", "binary_proba", "numeric")  # the CSV formats built in
ROW_SUM_ATOL = 1e-3  # per-class rows further than this from 1 get a warning
_RENORM_ATOL = 1e-9  # `repair(renormalize=True)` leaves rows this close to 1 untouched
_N_EXAMPLES = 5  # examples quoted per problem
# Cells pandas reads as NaN by default; we read raw text, so we recognise them ourselves.
_NA_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
# A single integer column with one of these names holds class labels even if the sample is all 0/1.
_LABEL_COLUMN_NAMES = frozenset({"label", "labels", "class", "classes", "category", "categories"})
_INT_RE = r"^[+-]?\d+$"
_FLOAT_INT_RE = r"^[+-]?\d+\.0*$"  # "1.0", "17.", "3.000": an integer written as a float
_REPAIR_FLAGS = ("drop_index", "cast_ids", "fill_nan", "clip", "renormalize", "reorder")
_REPAIR_OPTIONS = _REPAIR_FLAGS + ("prior",)
_PROBA_KINDS = ("class_proba", "binary_proba")


class SubmissionError(ValueError):
    """The submission stayed invalid; an emergency baseline was written in its place."""

    def __init__(self, message: str, report: VerificationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class VerificationReport:
    """The verdict on one submission: errors make it invalid, warnings do not."""

    valid: bool
    kind: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    submission: str = ""
    sample: str = ""
    notes: list[str] = field(default_factory=list)  # how the format was decided, checks skipped

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of every field."""
        return _jsonable(asdict(self))

    def to_json(self, path: PathLike) -> Path:
        """Write the report as JSON atomically (temp file, then `os.replace`)."""
        return write_json(Path(path), self.to_dict())

    def format(self) -> str:
        """Return a human-readable multi-line report."""
        verdict = "VALID" if self.valid else "INVALID"
        lines = [
            f"{self.submission}: {verdict} ({self.kind} format, {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s))",
            f"  checked against: {self.sample}",
        ]
        if "rows" in self.stats:
            sample_rows = self.stats.get("sample_rows", "?")
            lines.append(f"  rows: {self.stats['rows']} (sample: {sample_rows})")
        for title, items in (("errors", self.errors), ("warnings", self.warnings),
                             ("repairs", self.repairs), ("notes", self.notes)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# --------------------------------------------------------------------------------------------
# Reading: every cell as raw text, so "1.0" vs "1" and " 7" stay visible.


class _Unreadable(Exception):
    """The file cannot be read as a CSV table; the message says why and what to do."""


@dataclass
class _Table:
    """A CSV read as text: header cells as written, data cells as strings."""

    header: list[str]
    data: pd.DataFrame  # columns are positions 0..k-1; `header` names them
    name: str

    def frame(self) -> pd.DataFrame:
        """Return the data with named columns (first occurrence of a duplicated name kept)."""
        keep = ~pd.Index(self.header).duplicated()
        out = self.data.loc[:, keep].copy()
        out.columns = [h for h, k in zip(self.header, keep) if k]
        return out


def _sniff_delimiter(first_line: str) -> str:
    """Return a header line's delimiter: comma, unless it has none and another is present."""
    if "," in first_line:
        return ","
    counts = {d: first_line.count(d) for d in (";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


_DELIMITER_NAMES = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _read_table(path: Path, name: str) -> _Table:
    """Read a CSV file as text; raise `_Unreadable` with a competitor-facing message on failure."""
    if not path.exists():
        raise _Unreadable(f"{name} does not exist: write the predictions there "
                          f"(kk.write_csv(df, path)) before verifying")
    if not path.is_file():
        raise _Unreadable(f"{name} is not a file (is it a folder?): pass the path of the CSV")
    if path.stat().st_size == 0:
        raise _Unreadable(f"{name} is empty (0 bytes): the write failed or nothing was predicted; "
                          f"write one row per id of the sample")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first_line = fh.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise _Unreadable(f"{name} is not UTF-8 text: write it with df.to_csv(path, index=False)")
    delimiter = _sniff_delimiter(first_line)
    if delimiter != ",":
        raise _Unreadable(
            f"{name} is {_DELIMITER_NAMES[delimiter]}-separated (first line {first_line!r}); "
            f"submissions must be comma-separated: write it with df.to_csv(path, index=False) "
            f"without sep=")
    return _parse_csv(path, name)


def _parse_csv(source: Path | io.StringIO, name: str) -> _Table:
    """Parse comma-separated text with pandas, every cell as a string ('' for an empty cell)."""
    try:
        raw = pd.read_csv(source, header=None, dtype=str, keep_default_na=False,
                          skip_blank_lines=True, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise _Unreadable(f"{name} contains no CSV data (only blank lines): write the header and "
                          f"one row per id of the sample")
    except pd.errors.ParserError as exc:
        raise _Unreadable(f"{name} is not a well-formed CSV ({str(exc).strip()}): every row needs "
                          f"as many fields as the header; quote values that contain commas")
    raw = raw.fillna("")  # a short row leaves missing trailing fields: count them as empty cells
    header = [str(h) for h in raw.iloc[0].tolist()]
    data = raw.iloc[1:].reset_index(drop=True)
    data.columns = range(len(header))
    return _Table(header=header, data=data, name=name)


def _load_sample(sample: SampleLike) -> _Table:
    """Read the sample submission (path or DataFrame); raise on a missing or unusable one."""
    if isinstance(sample, pd.DataFrame):
        text = sample.to_csv(index=False, lineterminator="\n")
        try:
            table = _parse_csv(io.StringIO(text), "the sample")
        except _Unreadable as exc:
            raise ValueError(f"sample DataFrame cannot be used: {exc}") from None
    else:
        if not isinstance(sample, (str, os.PathLike)):
            raise ValueError(f"sample must be a path or a pandas DataFrame, got "
                             f"{type(sample).__name__}")
        path = Path(sample)
        if not path.is_file():
            raise FileNotFoundError(f"sample={str(sample)!r} does not exist: pass the "
                                    f"competition's sample_submission.csv")
        try:
            table = _read_table(path, path.name)
        except _Unreadable as exc:
            raise ValueError(f"sample={str(sample)!r} cannot be used: {exc}") from None
    if len(table.header) < 2:
        raise ValueError(f"sample has columns {table.header}: expected an id column and at least "
                         f"one prediction column")
    if table.data.empty:
        raise ValueError(f"sample {table.name} has no rows: it must list every id to predict")
    return table


def _sample_name(sample: SampleLike) -> str:
    return "the sample (DataFrame)" if isinstance(sample, pd.DataFrame) else str(sample)


# --------------------------------------------------------------------------------------------
# Small helpers on text columns.


def _examples(values: Sequence[Any] | pd.Series | pd.Index, quote: bool = False) -> str:
    """Format up to five examples: '17, 42, 99'."""
    items = list(values)[:_N_EXAMPLES]
    return ", ".join(repr(str(v)) if quote else str(v) for v in items)


def _is_na(cells: pd.Series) -> pd.Series:
    return cells.str.strip().isin(_NA_TOKENS)


def _to_number(cells: pd.Series) -> pd.Series:
    """Parse text cells as floats; unparseable and NA cells become NaN."""
    return pd.to_numeric(cells.str.strip(), errors="coerce").astype(float)


def _non_numeric(cells: pd.Series) -> pd.Series:
    """Mask of cells that are neither NA nor parseable as a number."""
    return _to_number(cells).isna() & ~_is_na(cells)


def _all_int(cells: pd.Series) -> bool:
    return bool(cells.str.strip().str.fullmatch(_INT_RE).all())


def _normalize_ids(ids: pd.Series, int_ids: bool) -> pd.Series:
    """Strip spaces and, for integer ids, write '1.0' as '1'; leave everything else unchanged."""
    out = ids.str.strip()
    if int_ids:
        floaty = out.str.fullmatch(_FLOAT_INT_RE)
        out = out.where(~floaty, out.str.split(".").str[0])
    return out


# --------------------------------------------------------------------------------------------
# Format inference.


def infer_kind(sample: SampleLike, labels: Sequence[Any] | None = None) -> str:
    """Infer the submission format from the sample submission.

    The first column is the id; the rest decide:
    - one column: ``label`` if `labels` is given, or its values are not numbers, or they are
      integers and either some value is outside {0, 1} or the column is named like a label
      (``label``, ``class``, ``category``); else ``binary_proba`` if all values lie in [0, 1];
      else ``numeric``.
    - two or more columns, all numeric: ``class_proba`` if all values lie in [0, 1],
      else ``numeric``.
    Pass ``kind=`` to `verify` where this guesses wrong (e.g. a regression target inside [0, 1]).
    """
    return _infer_kind(_load_sample(sample), _check_labels(labels))


def _infer_kind(table: _Table, labels: list[str] | None) -> str:
    frame = table.frame()
    values = frame.columns[1:]
    numbers = {c: _to_number(frame[c]) for c in values}
    numeric = {c: not _non_numeric(frame[c]).any() for c in values}
    in_unit = {c: bool(numbers[c].dropna().between(0, 1).all()) for c in values}
    if len(values) == 1:
        col = values[0]
        if labels is not None or not numeric[col]:
            return "label"
        if _all_int(frame[col]):
            outside_01 = not numbers[col].isin([0, 1]).all()
            if outside_01 or col.strip().lower() in _LABEL_COLUMN_NAMES:
                return "label"
        return "binary_proba" if in_unit[col] else "numeric"
    if all(numeric.values()):
        return "class_proba" if all(in_unit.values()) else "numeric"
    text_cols = [c for c in values if not numeric[c]]
    raise ValueError(f"cannot infer the submission format: the sample has {len(values)} prediction "
                     f"columns and {text_cols} are not numeric; pass kind= one of {list(KINDS)}")


def _check_labels(labels: Sequence[Any] | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise ValueError(f"labels must be a list like ['cat', 'dog'], got the string {labels!r}")
    out = [str(v) for v in labels]
    if not out:
        raise ValueError("labels is empty: pass the legal class labels, e.g. ['cat', 'dog'], "
                         "or None")
    return out


# --------------------------------------------------------------------------------------------
# The CSV verifier.


def _index_like(cells: pd.Series) -> bool:
    """True when a column holds 0..n-1 or 1..n in order: a saved DataFrame index."""
    stripped = cells.str.strip()
    if stripped.empty or not stripped.str.fullmatch(_INT_RE).all():
        return False
    values = stripped.astype(int).to_numpy()
    start = np.arange(len(values))
    return bool(np.array_equal(values, start) or np.array_equal(values, start + 1))


def _is_unnamed(name: str) -> bool:
    return name.strip() == "" or name.startswith("Unnamed:") or name in ("index", "level_0")


def _looks_like_data(header: list[str], sample: _Table) -> bool:
    """True when a header line shares nothing with the sample's and reads like a data row."""
    if set(header) & set(sample.header):
        return False
    sample_ids = set(sample.frame()[sample.header[0]].str.strip())
    if header[0].strip() in sample_ids:
        return True
    cells = pd.Series(header[1:], dtype=str)
    return bool(len(cells)) and not _non_numeric(cells).any() and not _is_na(cells).all()


def _check_columns(sub: _Table, sample: _Table, errors: list[str]) -> list[str]:
    """Check the header against the sample's; return the columns to drop as index columns."""
    sample_cols = sample.header
    counts = Counter(sub.header)
    for name, n in counts.items():
        if n > 1:
            errors.append(f"column {name!r} appears {n} times: keep one")
    index_cols: list[str] = []
    frame = sub.frame()
    for pos, name in enumerate(frame.columns):
        if name in sample_cols or not _is_unnamed(name):
            continue
        index_cols.append(name)
        if _index_like(frame[name]):
            errors.append(f"column {pos + 1} ({name!r}) is a saved DataFrame index (values "
                          f"{frame[name].iloc[0]}..{frame[name].iloc[-1]}): write the file with "
                          f"df.to_csv(path, index=False), or repair with drop_index=True")
        else:
            errors.append(f"column {pos + 1} ({name!r}) has no name and is not in the sample: "
                          f"drop it (the sample's columns are {','.join(sample_cols)})")
    present = [c for c in frame.columns if c not in index_cols]
    missing = [c for c in sample_cols if c not in present]
    extra = [c for c in present if c not in sample_cols]
    for got in list(extra):
        want = next((m for m in missing if m.strip().lower() == got.strip().lower()), None)
        if want is not None:
            errors.append(f"column {got!r} should be named {want!r}: rename it (column names "
                          f"must match the sample exactly, including case and spaces)")
            extra.remove(got)
            missing.remove(want)
    if missing:
        errors.append(f"{len(missing)} column(s) missing: {missing}: the sample's columns are "
                      f"{sample_cols}; add a prediction column for each")
    if extra:
        errors.append(f"{len(extra)} extra column(s) not in the sample: {extra}: drop them (only "
                      f"{sample_cols} are allowed)")
    return index_cols


def _check_ids(sub_ids: pd.Series, sample_ids: pd.Series, id_col: str, sample_name: str,
               errors: list[str], warnings: list[str], stats: dict[str, Any]) -> None:
    int_ids = _all_int(sample_ids)
    spaced = sub_ids[sub_ids != sub_ids.str.strip()]
    if len(spaced):
        errors.append(f"{len(spaced)} ids have leading or trailing spaces (e.g. "
                      f"{_examples(spaced, quote=True)}): strip them "
                      f"(df[{id_col!r}] = df[{id_col!r}].str.strip()), or repair with "
                      f"cast_ids=True")
    stripped = sub_ids.str.strip()
    if int_ids:
        floaty = stripped[stripped.str.fullmatch(_FLOAT_INT_RE)]
        if len(floaty):
            errors.append(f"{len(floaty)} ids are written as floats (e.g. {_examples(floaty)}) but "
                          f"the sample writes integers (e.g. {sample_ids.iloc[0]}): write "
                          f"df[{id_col!r}].astype(int), or repair with cast_ids=True")
        text = stripped[~stripped.str.fullmatch(_INT_RE) & ~stripped.str.fullmatch(_FLOAT_INT_RE)]
        if len(text) > len(stripped) / 2:
            errors.append(f"the sample's ids are integers (e.g. {sample_ids.iloc[0]}) but the "
                          f"submission's are text (e.g. {_examples(text, quote=True)}): write the "
                          f"sample's id column unchanged")
    elif len(stripped) and stripped.str.fullmatch(_INT_RE).all():
        errors.append(f"the sample's ids are strings (e.g. {sample_ids.iloc[0]!r}) but the "
                      f"submission's are all integers (e.g. {_examples(stripped)}): a row number "
                      f"was probably written instead of the id column")
    ids = _normalize_ids(sub_ids, int_ids)
    want = sample_ids.str.strip()
    want_set, got_set = set(want), set(ids)
    missing = [i for i in want if i not in got_set]
    extra = list(dict.fromkeys(i for i in ids if i not in want_set))
    dup_mask = ids.duplicated(keep=False)
    duplicated = list(dict.fromkeys(ids[dup_mask]))
    surplus = int(ids.duplicated().sum())
    stats.update(missing_ids=len(missing), extra_ids=len(extra), duplicate_ids=len(duplicated),
                 examples={"missing_ids": missing[:_N_EXAMPLES], "extra_ids": extra[:_N_EXAMPLES],
                           "duplicate_ids": duplicated[:_N_EXAMPLES]})
    if missing:
        errors.append(f"{len(missing)} ids missing from the submission (e.g. "
                      f"{_examples(missing)}): predict every id in {sample_name}")
    if extra:
        errors.append(f"{len(extra)} ids not in the sample (e.g. {_examples(extra)}): drop them; "
                      f"only the ids in {sample_name} are scored")
    if duplicated:
        errors.append(f"{len(duplicated)} ids appear more than once ({surplus} surplus rows, e.g. "
                      f"{_examples(duplicated)}): keep one row per id "
                      f"(df.drop_duplicates({id_col!r}))")
    if len(ids) != len(want):
        errors.append(f"the submission has {len(ids)} rows but the sample has {len(want)}: write "
                      f"exactly one row per sample id")
    elif not (missing or extra or duplicated) and ids.tolist() != want.tolist():
        warnings.append("rows are in a different order than the sample: Kaggle matches rows by "
                        "id, but some graders compare positions; repair with reorder=True to match")


def _check_values(frame: pd.DataFrame, sample: pd.DataFrame, kind: str, id_col: str,
                  labels: list[str] | None, errors: list[str], warnings: list[str],
                  notes: list[str], stats: dict[str, Any]) -> None:
    cols = [c for c in sample.columns[1:] if c in frame.columns]
    if id_col in frame.columns:
        ids, where = frame[id_col].str.strip(), "id"
    else:  # examples name row numbers instead
        ids, where = pd.Series([str(i + 1) for i in range(len(frame))], dtype=str), "row"
    nan_cells = 0
    for col in cols:
        cells = frame[col]
        na = _is_na(cells)
        if kind == "label" and labels is not None:
            na &= ~cells.str.strip().isin(labels)  # "None" may be a legal label
        nan_cells += int(na.sum())
        if len(cells) and na.all():
            errors.append(f"column {col!r} is entirely empty ({len(cells)} rows): the predictions "
                          f"were never written into it")
            continue
        if na.any():
            errors.append(f"{int(na.sum())} missing values (NaN or empty cells) in column {col!r} "
                          f"(e.g. {where}s {_examples(ids[na])}): predict every cell, or repair "
                          f"with fill_nan=True")
        if kind == "label":
            _check_labels_column(cells[~na], sample[col], col, labels, errors, notes)
        else:
            _check_numeric_column(cells, ids, where, col, kind, errors)
    stats["nan_cells"] = nan_cells
    if kind == "class_proba" and len(cols) == len(sample.columns) - 1:
        _check_row_sums(frame[cols], ids, where, warnings)


def _check_numeric_column(cells: pd.Series, ids: pd.Series, where: str, col: str, kind: str,
                          errors: list[str]) -> None:
    """Numbers only, finite, and inside [0, 1] for probability formats."""
    bad = _non_numeric(cells)
    if bad.any():
        errors.append(f"{int(bad.sum())} non-numeric values in column {col!r} (e.g. "
                      f"{_examples(cells[bad], quote=True)}): this column must hold numbers")
    numbers = _to_number(cells)
    inf = np.isinf(numbers)
    if inf.any():
        errors.append(f"{int(inf.sum())} infinite values in column {col!r} (e.g. {where}s "
                      f"{_examples(ids[inf])}): replace them with finite numbers"
                      + (", or repair with clip=True" if kind in _PROBA_KINDS else ""))
    if kind not in _PROBA_KINDS:
        return
    finite = numbers.where(~inf)
    for mask, side, limit, extreme in ((finite > 1, "above 1", "max", finite.max()),
                                       (finite < 0, "below 0", "min", finite.min())):
        if mask.any():
            errors.append(f"{int(mask.sum())} probabilities {side} in column {col!r} "
                          f"({limit} {extreme:g}, e.g. {where}s {_examples(ids[mask])}): "
                          f"probabilities must lie in [0, 1]; apply sigmoid/softmax to "
                          f"logits, or repair with clip=True")


def _check_row_sums(probs_text: pd.DataFrame, ids: pd.Series, where: str,
                    warnings: list[str]) -> None:
    """Warn about per-class rows whose probabilities do not sum to 1 (within ROW_SUM_ATOL)."""
    sums = probs_text.apply(_to_number).sum(axis=1, skipna=False)
    off = np.isfinite(sums) & ((sums - 1).abs() > ROW_SUM_ATOL)
    if off.any():
        first = int(np.flatnonzero(off.to_numpy())[0])
        warnings.append(f"{int(off.sum())} rows' probabilities do not sum to 1 (e.g. {where} "
                        f"{ids.iloc[first]} sums to {sums.iloc[first]:.4g}): most metrics "
                        f"renormalise, but repair with renormalize=True to make it explicit")


def _check_labels_column(cells: pd.Series, sample_cells: pd.Series, col: str,
                         labels: list[str] | None, errors: list[str], notes: list[str]) -> None:
    stripped = cells.str.strip()
    if labels is not None:
        illegal = cells[~cells.isin(labels)]
        if len(illegal):
            hint = ""
            if stripped[~cells.isin(labels)].isin(labels).all():
                hint = "; strip the spaces around them"
            elif illegal.str.strip().str.fullmatch(_INT_RE).all() and not any(
                    re.fullmatch(_INT_RE, lab) for lab in labels):
                hint = ("; they look like class indices: map them to names "
                        "(e.g. labels[i])")
            legal = labels if len(labels) <= 10 else labels[:10] + ["..."]
            errors.append(f"{len(illegal)} values in column {col!r} are not legal labels (e.g. "
                          f"{_examples(pd.unique(illegal), quote=True)}): use one of {legal}{hint}")
        return
    if _all_int(sample_cells):
        not_int = cells[~stripped.str.fullmatch(_INT_RE)]
        if len(not_int):
            errors.append(f"{len(not_int)} values in column {col!r} are not integer class labels "
                          f"(e.g. {_examples(pd.unique(not_int), quote=True)}): the sample's "
                          f"labels are integers; write the predicted class, not a probability")
    notes.append(f"legal labels unknown for column {col!r}: pass labels=[...] to check them")


def _verify_csv(submission: Path, sample: SampleLike, labels: Sequence[Any] | None,
                kind: str) -> VerificationReport:
    """Verify a CSV submission of a given `kind` against the sample submission."""
    labels = _check_labels(labels)
    sample_table = _load_sample(sample)
    sample_frame = sample_table.frame()
    sample_name = sample_table.name
    report = VerificationReport(valid=False, kind=kind, submission=str(submission),
                                sample=_sample_name(sample))
    report.stats.update(sample_rows=len(sample_frame))
    errors, warnings = report.errors, report.warnings
    try:
        sub = _read_table(submission, submission.name)
    except _Unreadable as exc:
        errors.append(str(exc))
        return report
    report.stats.update(rows=len(sub.data), columns=list(sub.header))
    if _looks_like_data(sub.header, sample_table):
        first, want = ",".join(sub.header), ",".join(sample_table.header)
        errors.append(f"{sub.name} has no header row (its first line {first!r} looks like data): "
                      f"write the header {want!r} first (df.to_csv(path, index=False))")
        return report
    if sub.data.empty:
        errors.append(f"{sub.name} has a header but no data rows: predict every id in "
                      f"{sample_name}")
        return report
    _check_columns(sub, sample_table, errors)
    frame = sub.frame()
    id_col = sample_table.header[0]
    if id_col in frame.columns:
        _check_ids(frame[id_col], sample_frame[id_col], id_col, sample_name, errors, warnings,
                   report.stats)
    _check_values(frame, sample_frame, kind, id_col, labels, errors, warnings, report.notes,
                  report.stats)
    report.valid = not errors
    return report


# --------------------------------------------------------------------------------------------
# The registry: one verifier per submission kind.

Verifier = Callable[[Path, Any, Sequence[Any] | None], VerificationReport]


def _csv_verifier(kind: str) -> Verifier:
    def verifier(submission: Path, sample: Any, labels: Sequence[Any] | None) -> VerificationReport:
        return _verify_csv(submission, sample, labels, kind)
    verifier.__doc__ = f"Verify a {kind} CSV submission against the sample submission."
    return verifier


_VERIFIERS: dict[str, Verifier] = {kind: _csv_verifier(kind) for kind in KINDS}


def register_verifier(kind: str, fn: Verifier, *, replace: bool = False) -> None:
    """Register `fn(submission_path, sample, labels) -> VerificationReport` for a kind."""
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not callable(fn):
        raise ValueError(f"fn for kind {kind!r} must be callable, got {type(fn).__name__}")
    if kind in _VERIFIERS and not replace:
        raise ValueError(f"a verifier for kind {kind!r} is already registered; pass replace=True "
                         f"to override it")
    _VERIFIERS[kind] = fn


BaselineWriter = Callable[[Path, Any], str | None]
_BASELINES: dict[str, BaselineWriter] = {}


def register_baseline(kind: str, writer: BaselineWriter, *, replace: bool = False) -> None:
    """Register `writer(path, sample) -> note` that writes an emergency stand-in for a non-CSV kind.

    `finalize` calls it when a submission of that kind stays invalid: the broken one is moved
    aside to ``<name>.invalid`` and the writer fills `path` anew (the note says what it wrote).
    """
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if kind in KINDS:
        raise ValueError(f"kind {kind!r} is a CSV kind: its baseline is built in (see `baseline`)")
    if not callable(writer):
        raise ValueError(f"writer for kind {kind!r} must be callable, got {type(writer).__name__}")
    if kind in _BASELINES and not replace:
        raise ValueError(f"a baseline writer for kind {kind!r} is already registered; pass "
                         f"replace=True to override it")
    _BASELINES[kind] = writer


def _verifier(kind: str) -> Verifier:
    if kind not in _VERIFIERS:
        raise ValueError(f"kind={kind!r} is not a known submission kind; valid kinds: "
                         f"{sorted(_VERIFIERS)}")
    return _VERIFIERS[kind]


def verify(submission: PathLike, sample: SampleLike | None, labels: Sequence[Any] | None = None,
           *, kind: str | None = None) -> VerificationReport:
    """Check a submission against the sample submission; a missing or broken file is invalid.

    >>> verify("submission.csv", "sample_submission.csv", labels=["cat", "dog"]).valid
    """
    if not isinstance(submission, (str, os.PathLike)):
        raise ValueError(f"submission must be a path, got {type(submission).__name__}")
    notes: list[str] = []
    if kind is None:
        if sample is None:
            raise ValueError("sample is None: pass the sample submission, or kind= for a "
                             "submission kind that needs none")
        kind = _infer_kind(_load_sample(sample), _check_labels(labels))
        notes.append(f"format {kind!r} inferred from the sample (pass kind= to override)")
    report = _verifier(kind)(Path(submission), sample, labels)
    report.notes[:0] = notes
    return report


# --------------------------------------------------------------------------------------------
# Repairs: each only on request, each reported.


def _check_prior(prior: Any, value_cols: list[str], arg: str = "prior") -> dict[str, Any] | None:
    """Turn `prior` into {column: value}; a scalar is allowed when there is one value column."""
    if prior is None:
        return None
    if isinstance(prior, Mapping):
        unknown = [k for k in prior if k not in value_cols]
        if unknown:
            raise ValueError(f"{arg} has columns {unknown} that are not prediction columns of the "
                             f"sample; valid: {value_cols}")
        return dict(prior)
    if len(value_cols) != 1:
        raise ValueError(f"{arg}={prior!r} is a single value but the sample has {len(value_cols)} "
                         f"prediction columns; pass a dict {{column: value}} for {value_cols}")
    return {value_cols[0]: prior}


def _format_number(x: float) -> str:
    """Shortest text that round-trips the float (what pandas writes too)."""
    return repr(float(x))


def repair(submission: PathLike, sample: SampleLike, *, reorder: bool = False,
           cast_ids: bool = False, clip: bool = False, renormalize: bool = False,
           fill_nan: bool = False, prior: Mapping[str, Any] | float | str | None = None,
           labels: Sequence[Any] | None = None, drop_index: bool = False,
           kind: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Apply the requested repairs; return the repaired table (cells as text) and one note each.

    Cells a repair does not touch keep their exact text, so writing the result back with
    `write_csv` changes only what the notes say.
    """
    labels_ = _check_labels(labels)
    sample_table = _load_sample(sample)
    kind = kind or _infer_kind(sample_table, labels_)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} cannot be repaired as a CSV; valid kinds: {list(KINDS)}")
    if clip and kind not in _PROBA_KINDS:
        raise ValueError(f"clip=True applies to probability formats {list(_PROBA_KINDS)}, but this "
                         f"submission is {kind!r}")
    if renormalize and kind != "class_proba":
        raise ValueError(f"renormalize=True applies to the 'class_proba' format, but this "
                         f"submission is {kind!r}")
    sample_frame = sample_table.frame()
    id_col, value_cols = sample_table.header[0], sample_table.header[1:]
    priors = _check_prior(prior, value_cols)
    if priors and kind == "label" and labels_ is not None:
        bad = {c: v for c, v in priors.items() if str(v) not in labels_}
        if bad:
            raise ValueError(f"prior={bad} is not among the legal labels {labels_}")
    try:
        table = _read_table(Path(submission), Path(submission).name)
    except _Unreadable as exc:
        raise ValueError(f"cannot repair submission={str(submission)!r}: {exc}") from None
    df = table.frame()
    notes: list[str] = []
    if drop_index:
        cols = [c for c in df.columns if c not in sample_table.header and _is_unnamed(c)]
        if cols:
            df = df.drop(columns=cols)
            notes.append(f"dropped {len(cols)} saved index column(s) {cols}")
    if cast_ids and id_col in df.columns:
        new = _normalize_ids(df[id_col], _all_int(sample_frame[id_col]))
        changed = int((new != df[id_col]).sum())
        df[id_col] = new
        notes.append(f"cast {changed} ids to the sample's format (stripped spaces"
                     + (", wrote '1.0' as '1')" if _all_int(sample_frame[id_col]) else ")"))
    present = [c for c in value_cols if c in df.columns]
    if fill_nan:
        notes.append(_fill_nan(df, sample_frame, kind, id_col, present, priors, labels_))
    if clip:
        notes.append(_clip(df, present))
    if renormalize:
        notes.append(_renormalize(df, present))
    if reorder:
        df, note = _reorder(df, sample_frame, id_col)
        notes.append(note)
    return df.reset_index(drop=True), notes


def _fill_nan(df: pd.DataFrame, sample: pd.DataFrame, kind: str, id_col: str, cols: list[str],
              priors: dict[str, Any] | None, labels: list[str] | None) -> str:
    """Fill NaN/empty cells in place with the prior; return what was done."""
    filled, sources = 0, []
    sample_by_id = sample.set_index(sample[id_col].str.strip())
    sample_by_id = sample_by_id[~sample_by_id.index.duplicated()]
    ids = df[id_col].str.strip() if id_col in df.columns else None
    for col in cols:
        na = _is_na(df[col])
        if kind == "label" and labels is not None:
            na &= ~df[col].str.strip().isin(labels)
        if not na.any():
            continue
        if priors and col in priors:
            fill = pd.Series(str(priors[col]), index=df.index)
            sources.append(f"{col}: prior {priors[col]}")
        elif kind == "class_proba":
            fill = pd.Series(_format_number(1 / len(sample.columns[1:])), index=df.index)
            sources.append(f"{col}: 1/{len(sample.columns) - 1} (no prior given)")
        else:
            default = Counter(sample[col].str.strip()).most_common(1)[0][0]
            if ids is not None:
                fill = ids.map(sample_by_id[col]).fillna(default)
            else:
                fill = pd.Series(default, index=df.index)
            sources.append(f"{col}: the sample's value for the same id (no prior given)")
        df.loc[na, col] = fill[na].astype(str)
        filled += int(na.sum())
    if not filled:
        return "filled 0 missing cells (none found)"
    return f"filled {filled} missing cells ({'; '.join(sources)})"


def _clip(df: pd.DataFrame, cols: list[str]) -> str:
    """Clip probabilities to [0, 1] in place, touching only cells outside the range."""
    changed = 0
    for col in cols:
        numbers = _to_number(df[col])
        high, low = numbers > 1, numbers < 0  # +inf counts as high, -inf as low
        df.loc[high, col] = "1.0"
        df.loc[low, col] = "0.0"
        changed += int(high.sum() + low.sum())
    return f"clipped {changed} probabilities to [0, 1]"


def _renormalize(df: pd.DataFrame, cols: list[str]) -> str:
    """Rescale per-class rows to sum to 1, touching only rows that do not already."""
    probs = df[cols].apply(_to_number)
    sums = probs.sum(axis=1, skipna=False)
    finite = np.isfinite(sums)
    off = finite & ((sums - 1).abs() > _RENORM_ATOL) & (sums > 0)
    zero = finite & (sums == 0) & (probs >= 0).all(axis=1)
    scaled = probs[off].div(sums[off], axis=0)
    for col in cols:
        df.loc[off, col] = scaled[col].map(_format_number)
        df.loc[zero, col] = _format_number(1 / len(cols))
    note = f"renormalised {int(off.sum())} rows to sum to 1"
    if zero.any():
        note += f"; {int(zero.sum())} all-zero rows set to uniform 1/{len(cols)}"
    skipped = int((~finite).sum())
    if skipped:
        note += f"; {skipped} rows with NaN/inf left as they are (fill_nan/clip first)"
    return note


def _reorder(df: pd.DataFrame, sample: pd.DataFrame, id_col: str) -> tuple[pd.DataFrame, str]:
    """Order rows by the sample's ids and columns as the sample's; values are not touched."""
    cols = [c for c in sample.columns if c in df.columns] + [
        c for c in df.columns if c not in sample.columns]
    if id_col not in df.columns:
        return df[cols], (f"reordered columns to {cols}; rows left as they are "
                          f"(no {id_col!r} column)")
    position = {i: n for n, i in enumerate(sample[id_col].str.strip())}
    key = df[id_col].str.strip().map(position).astype(float)  # unknown ids sort last, in order
    order = np.argsort(key.fillna(np.inf).to_numpy(), kind="stable")
    out = df.iloc[order][cols]
    moved = int((order != np.arange(len(order))).sum())
    unknown = int(key.isna().sum())
    note = f"reordered rows to the sample's id order ({moved} rows moved) and columns to {cols}"
    if unknown:
        note += f"; {unknown} rows with ids not in the sample kept at the end"
    return out, note


# --------------------------------------------------------------------------------------------
# Emergency baseline and writing.


def baseline(sample: SampleLike, train_labels: Sequence[Any] | None = None, *,
             kind: str | None = None, prior: Mapping[str, Any] | float | str | None = None,
             labels: Sequence[Any] | None = None) -> pd.DataFrame:
    """Fill the sample submission from the training prior; `df.attrs['note']` says what was used.

    label → majority class; class_proba → class frequencies (train labels matched to column
    names as text); binary_proba → positive rate; numeric → mean. Without train labels: uniform
    probabilities for class_proba, the sample's own values otherwise. `prior` overrides both.

    >>> baseline("sample_submission.csv", train["label"]).attrs["note"]
    "label baseline: majority class 'dog' of 1797 train labels"
    """
    labels_ = _check_labels(labels)
    table = _load_sample(sample)
    kind = kind or _infer_kind(table, labels_)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} has no CSV baseline; valid kinds: {list(KINDS)}")
    frame = table.frame()
    id_col, value_cols = table.header[0], table.header[1:]
    priors = _check_prior(prior, value_cols)
    if priors is not None:
        missing = [c for c in value_cols if c not in priors]
        if missing:
            raise ValueError(f"prior has no value for columns {missing}; give one per column of "
                             f"{value_cols}")
        note = f"the given prior {priors}"
    elif train_labels is None:
        priors, note = None, "no train labels: " + (
            "uniform probabilities" if kind == "class_proba" else "kept the sample's own values")
        if kind == "class_proba":
            priors = {c: 1 / len(value_cols) for c in value_cols}
    else:
        priors, note = _train_prior(kind, pd.Series(list(train_labels), dtype=object), value_cols)
    out = pd.DataFrame({id_col: frame[id_col]})
    for col in value_cols:
        out[col] = frame[col] if priors is None else priors[col]
    out.attrs["note"] = f"{kind} baseline: {note}"
    return out


def _train_prior(kind: str, train: pd.Series, value_cols: list[str]
                 ) -> tuple[dict[str, Any], str]:
    """Return {column: value} from the training targets, and a sentence saying how."""
    if train.empty:
        raise ValueError("train_labels is empty: pass the training targets, or None")
    if kind == "label":
        majority = Counter(train.map(_label_text)).most_common(1)[0][0]
        note = f"majority class {majority!r} of {len(train)} train labels"
        return {c: majority for c in value_cols}, note
    if kind == "class_proba":
        counts = Counter(train.map(_label_text))
        matched = sum(counts[c] for c in value_cols)
        if not matched:
            note = (f"no train label matches a column of {value_cols} (e.g. "
                    f"{_examples(train.map(_label_text).unique(), quote=True)}): uniform "
                    f"probabilities")
            return {c: 1 / len(value_cols) for c in value_cols}, note
        note = f"class frequencies of {matched} train labels"
        if matched < len(train):
            note += f" ({len(train) - matched} labels matching no column were ignored)"
        return {c: counts[c] / matched for c in value_cols}, note
    numbers = pd.to_numeric(train, errors="coerce")
    if numbers.isna().any():
        raise ValueError(f"train_labels must be numbers for a {kind!r} submission, got "
                         f"{_examples(train[numbers.isna()], quote=True)}")
    mean = float(numbers.mean())
    what = "positive rate" if kind == "binary_proba" else "mean"
    return {c: mean for c in value_cols}, f"{what} {mean:g} of {len(train)} train labels"


def _label_text(value: Any) -> str:
    """Text of a label as it appears in a CSV: 3.0 (a float class from pandas) becomes '3'."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def write_csv(df: pd.DataFrame, path: PathLike) -> Path:
    """Write a submission atomically (temp file, fsync, `os.replace`): no index, '\\n' line ends."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    return write_atomic(path, lambda fh: df.to_csv(fh, index=False, lineterminator="\n"), newline="")


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars and containers to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# The closing step of every run.


def _check_repair_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"repair_options must be a dict like {{'clip': True}}, got {options!r}")
    unknown = [k for k in options if k not in _REPAIR_OPTIONS]
    if unknown:
        raise ValueError(f"repair_options has unknown keys {unknown}; valid: "
                         f"{list(_REPAIR_OPTIONS)}")
    for key in _REPAIR_FLAGS:
        if key in options and not isinstance(options[key], bool):
            raise ValueError(f"repair_options[{key!r}] must be True or False, got {options[key]!r}")
    return dict(options)


def finalize(submission_path: PathLike, sample: SampleLike, out_dir: PathLike, *,
             labels: Sequence[Any] | None = None, train_labels: Sequence[Any] | None = None,
             repair_options: Mapping[str, Any] | None = None,
             kind: str | None = None) -> VerificationReport:
    """Verify, repair if asked, write verification.json; on failure write a baseline and raise.

    A run never ends without a valid file: when the submission stays invalid it is kept as
    ``<name>.invalid.csv``, the emergency baseline takes its place, and `SubmissionError` lists why.
    Other kinds get the same treatment when a baseline writer is registered for them
    (`register_baseline`); the broken submission is then kept as ``<name>.invalid``.

    >>> report = finalize(OUTPUT_DIR / "submission.csv", "sample_submission.csv", OUTPUT_DIR)
    """
    options = _check_repair_options(repair_options)
    path, json_path = Path(submission_path), Path(out_dir) / VERIFICATION_FILE
    report = verify(path, sample, labels, kind=kind)
    outcome = "valid"
    if not report.valid and options and report.kind in KINDS and path.is_file():
        report, outcome = _try_repair(path, sample, labels, report, options)
    if report.valid:
        write_json(json_path, {**report.to_dict(), "outcome": outcome})
        return report
    reasons = list(report.errors)
    extra: dict[str, Any] = {"outcome": "invalid", "baseline_written": False}
    message = f"submission {path} is invalid"
    if report.kind in KINDS:  # a CSV kind: the sample tells us how to write a safe stand-in
        extra.update(_write_baseline(path, sample, train_labels, report.kind, labels))
    elif report.kind in _BASELINES:
        extra.update(_write_registered_baseline(path, sample, labels, report.kind))
    if extra["baseline_written"]:
        extra["baseline_reason"] = "the submission was invalid: " + "; ".join(reasons)
        message += f"; an emergency baseline ({extra['baseline_note']}) was written to {path}"
        if "invalid_copy" in extra:
            message += f" and the broken file kept as {extra['invalid_copy']}"
    elif "baseline_error" in extra:
        message += f"; the emergency baseline could not be written ({extra['baseline_error']})"
    write_json(json_path, {**report.to_dict(), **extra})
    raise SubmissionError(f"{message}; details in {json_path}:\n"
                          + "\n".join(f"  - {r}" for r in reasons), report)


def _write_baseline(path: Path, sample: SampleLike, train_labels: Sequence[Any] | None,
                    kind: str, labels: Sequence[Any] | None) -> dict[str, Any]:
    """Keep the broken file as `<stem>.invalid<suffix>`, write the baseline; say what happened."""
    extra: dict[str, Any] = {"outcome": "baseline", "baseline_written": True}
    try:
        base = baseline(sample, train_labels, kind=kind, labels=labels)
    except ValueError as exc:  # unusable train labels must not cost the run its submission
        base = baseline(sample, None, kind=kind, labels=labels)
        base.attrs["note"] += f" (train_labels not used: {exc})"
    if path.is_file():
        invalid_copy = path.with_name(f"{path.stem}.invalid{path.suffix or '.csv'}")
        os.replace(path, invalid_copy)
        extra["invalid_copy"] = str(invalid_copy)
    write_csv(base, path)
    check = verify(path, sample, labels, kind=kind)
    extra.update(baseline_note=base.attrs["note"], baseline_valid=check.valid,
                 baseline_errors=check.errors)
    return extra


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_registered_baseline(path: Path, sample: Any, labels: Sequence[Any] | None,
                               kind: str) -> dict[str, Any]:
    """Move the broken submission (file or folder) to `<name>.invalid`, let the kind's writer fill
    `path`, verify the result. A failing writer puts the original back and is reported."""
    extra: dict[str, Any] = {"outcome": "invalid", "baseline_written": False}
    invalid_copy = path.with_name(f"{path.name}.invalid")
    moved = path.exists() or path.is_symlink()
    if moved:
        _remove(invalid_copy)
        os.replace(path, invalid_copy)
    try:
        note = _BASELINES[kind](path, sample)
    except Exception as exc:  # noqa: BLE001 - reported in verification.json and the SubmissionError
        _remove(path)
        if moved:
            os.replace(invalid_copy, path)
        extra["baseline_error"] = f"{type(exc).__name__}: {exc}"
        return extra
    check = verify(path, sample, labels, kind=kind)
    extra.update(outcome="baseline", baseline_written=True, baseline_note=note or f"{kind} baseline",
                 baseline_valid=check.valid, baseline_errors=check.errors,
                 baseline_stats=check.stats)
    if moved:
        extra["invalid_copy"] = str(invalid_copy)
    return extra


def _try_repair(path: Path, sample: SampleLike, labels: Sequence[Any] | None,
                report: VerificationReport, options: dict[str, Any]
                ) -> tuple[VerificationReport, str]:
    """Repair into a temp file; replace the submission only if the result verifies."""
    try:
        fixed, notes = repair(path, sample, labels=labels, kind=report.kind, **options)
    except ValueError as exc:
        report.errors.append(f"repair failed: {exc}")
        return report, "invalid"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".repair.") as tmp_dir:
        tmp = Path(tmp_dir) / path.name  # same name, so messages name the real file
        write_csv(fixed, tmp)
        again = verify(tmp, sample, labels, kind=report.kind)
        again.submission, again.repairs, again.notes = str(path), notes, report.notes
        if again.valid:
            os.replace(tmp, path)
            return again, "repaired"
    again.errors = [f"after repair: {e}" for e in again.errors]
    return again, "invalid"
