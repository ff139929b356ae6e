"""Checking a submission before upload: the CSV formats, the checks, and one verifier per kind.

A submission with the wrong ids, a NaN or a saved index column scores zero or is rejected after
hours of work. `verify` catches what the graders catch (ids, row count, columns, ranges, NaN/inf,
CSV dialect) and says how to fix each problem. Other submission kinds (a code package, a folder of
masks) plug in their own checks with `register_verifier`.

    report = verify("submission.csv", "sample_submission.csv")
    print(report)                      # one line per problem, each with what to do

Imports pandas and numpy only: `kagglekit verify` stays light (no torch).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import write_json
from ._table import (
    _FLOAT_INT_RE,
    _INT_RE,
    _N_EXAMPLES,
    PathLike,
    SampleLike,
    _align_id,
    _all_int,
    _examples,
    _has_no_name,
    _is_na,
    _is_unnamed,
    _load_sample,
    _non_numeric,
    _normalize_ids,
    _read_table,
    _sample_name,
    _Table,
    _to_number,
    _Unreadable,
)

__all__ = [
    "KINDS",
    "ROW_SUM_ATOL",
    "VerificationReport",
    "Verifier",
    "infer_kind",
    "register_verifier",
    "verify",
]

# The CSV formats built in. multilabel_proba: one probability per label column, several labels may
# be on in a row (rows need not sum to 1); label_list: one column of space-separated labels.
KINDS = ("label", "class_proba", "binary_proba", "numeric", "multilabel_proba", "label_list")
ROW_SUM_ATOL = 1e-3  # per-class rows further than this from 1 get a warning
_LABEL_COLUMN_NAMES = frozenset({"label", "labels", "class", "classes", "category", "categories"})
_PROBA_KINDS = ("class_proba", "binary_proba", "multilabel_proba")  # values: probabilities in [0, 1]
_LABEL_KINDS = ("label", "label_list")  # values are label text


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
# Format inference.


def infer_kind(sample: SampleLike, labels: Sequence[Any] | None = None) -> str:
    """Infer the submission format from the sample submission.

    The first column is the id; the rest decide:
    - one column: ``label_list`` if some cell holds several space-separated labels
      (``scab frog_eye_leaf_spot``) and is not itself one of `labels`; ``label`` if `labels` is given, or its values are not numbers,
      or they are integers and either some value is outside {0, 1} or the column is named like a
      label (``label``, ``class``, ``category``); else ``binary_proba`` if all values lie in [0, 1];
      else ``numeric``.
    - two or more columns, all numeric: ``class_proba`` if all values lie in [0, 1],
      else ``numeric``.
    Pass ``kind=`` to `verify` where this guesses wrong: a regression target inside [0, 1], a
    multi-label sample whose cells each hold one label (``label_list``), or one probability column
    per label where several may be on (``multilabel_proba``: the sample alone cannot tell it from
    ``class_proba``).
    """
    return _infer_kind(_load_sample(sample), _check_labels(labels))


def _infer_kind(table: _Table, labels: list[str] | None) -> str:
    frame = table.frame()
    values = frame.columns[1:]
    numbers = {c: _to_number(frame[c]) for c in values}
    numeric = {c: not _non_numeric(frame[c], numbers[c]).any() for c in values}
    in_unit = {c: bool(numbers[c].dropna().between(0, 1).all()) for c in values}
    if len(values) == 1:
        col = values[0]
        whole_labels = labels is not None and frame[col].str.strip().isin(labels).all()
        words = frame[col][numbers[col].isna()]  # a cell that reads as a number holds one token
        if (_token_counts(words) > 1).any() and not whole_labels:  # 'Pop Rock' may be one
            return "label_list"
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


def _token_counts(cells: pd.Series) -> pd.Series:
    """How many whitespace-separated labels each cell lists ('scab rust' -> 2, '' -> 0)."""
    return cells.str.split().str.len()


def _labels_per_row(sample_cells: pd.Series) -> int | None:
    """k when every filled sample cell lists the same number k > 1 of labels (a MAP@k sample)."""
    counts = _token_counts(sample_cells[~_is_na(sample_cells)])
    if counts.empty or counts.nunique() != 1:
        return None
    k = int(counts.iloc[0])
    return k if k > 1 else None


def _missing(cells: pd.Series, kind: str, labels: list[str] | None,
             numbers: pd.Series | None = None) -> pd.Series:
    """Mask of the cells that count as missing: NA tokens and empty cells, except a legal label that
    reads like one ('None')."""
    na = _is_na(cells, numbers)
    if kind in _LABEL_KINDS and labels is not None:
        na &= ~cells.str.strip().isin(labels)
    return na


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
    stripped = sub_ids.str.strip()
    spaced = sub_ids[sub_ids != stripped]
    if len(spaced):
        errors.append(f"{len(spaced)} ids have leading or trailing spaces (e.g. "
                      f"{_examples(spaced, quote=True)}): strip them "
                      f"(df[{id_col!r}] = df[{id_col!r}].str.strip()), or repair with "
                      f"cast_ids=True")
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
    ids = _normalize_ids(stripped, int_ids)
    want = sample_ids.str.strip()
    # One hash of both id columns answers every question below (not two isin and two duplicated
    # passes: hashing 500k ids is most of what this check costs).
    codes, uniques = pd.factorize(pd.concat([want, ids], ignore_index=True), use_na_sentinel=False)
    want_codes, id_codes = codes[:len(want)], codes[len(want):]
    per_id = np.bincount(id_codes, minlength=len(uniques))
    in_sample = np.zeros(len(uniques), bool)
    in_sample[want_codes] = True
    missing = want[per_id[want_codes] == 0].tolist()
    extra = list(dict.fromkeys(ids[~in_sample[id_codes]]))
    dup_mask = per_id[id_codes] > 1
    duplicated = list(dict.fromkeys(ids[dup_mask]))
    surplus = int(len(ids) - np.count_nonzero(per_id))
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
    elif not (missing or extra or duplicated) and not np.array_equal(id_codes, want_codes):
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
    numbers = {col: _to_number(frame[col]) for col in cols}  # parsed once, used by every check below
    for col in cols:
        cells = frame[col]
        na = _missing(cells, kind, labels, numbers[col])  # "None" may be a legal label
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
        elif kind == "label_list":
            _check_label_list_column(cells[~na], ids, where, sample[col], col, labels, errors,
                                     warnings, notes)
        else:
            _check_numeric_column(cells, numbers[col], ids, where, col, kind, errors)
    stats["nan_cells"] = nan_cells
    if kind == "class_proba" and len(cols) == len(sample.columns) - 1:
        _check_row_sums(pd.DataFrame(numbers), ids, where, warnings)


def _check_numeric_column(cells: pd.Series, numbers: pd.Series, ids: pd.Series, where: str, col: str,
                          kind: str, errors: list[str]) -> None:
    """Numbers only, finite, and inside [0, 1] for probability formats (`numbers`: the parsed cells)."""
    bad = _non_numeric(cells, numbers)
    if bad.any():
        errors.append(f"{int(bad.sum())} non-numeric values in column {col!r} (e.g. "
                      f"{_examples(cells[bad], quote=True)}): this column must hold numbers")
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


def _check_row_sums(probs: pd.DataFrame, ids: pd.Series, where: str,
                    warnings: list[str]) -> None:
    """Warn about per-class rows whose probabilities (parsed) do not sum to 1 (within ROW_SUM_ATOL)."""
    sums = probs.sum(axis=1, skipna=False)
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
            elif (illegal.str.split().map(lambda toks: set(toks) <= set(labels))
                  & (_token_counts(illegal) > 1)).all():
                hint = ("; each lists several labels: pass kind='label_list' if the competition "
                        "takes space-separated labels")
            errors.append(f"{len(illegal)} values in column {col!r} are not legal labels (e.g. "
                          f"{_examples(pd.unique(illegal), quote=True)}): use one of "
                          f"{_legal_shown(labels)}{hint}")
        return
    if _all_int(sample_cells):
        not_int = cells[~stripped.str.fullmatch(_INT_RE)]
        if len(not_int):
            errors.append(f"{len(not_int)} values in column {col!r} are not integer class labels "
                          f"(e.g. {_examples(pd.unique(not_int), quote=True)}): the sample's "
                          f"labels are integers; write the predicted class, not a probability")
    notes.append(f"legal labels unknown for column {col!r}: pass labels=[...] to check them")


def _legal_shown(labels: list[str]) -> list[str]:
    """The legal labels as an error message lists them: the first ten, then '...'."""
    return labels if len(labels) <= 10 else labels[:10] + ["..."]


def _check_label_list_column(cells: pd.Series, ids: pd.Series, where: str, sample_cells: pd.Series,
                             col: str, labels: list[str] | None, errors: list[str],
                             warnings: list[str], notes: list[str]) -> None:
    """Space-separated labels: each legal (when `labels` is known), none twice in a cell, and at
    most the k labels per row the sample lists (`cells`: the filled cells)."""
    tokens = cells.str.split()
    if labels is not None:
        flat = tokens.explode()
        bad = flat[~flat.isin(labels)]
        if len(bad):
            rows = pd.unique(bad.index)
            errors.append(f"{len(rows)} cells in column {col!r} hold labels that are not legal "
                          f"(e.g. {_examples(pd.unique(bad), quote=True)} in {where}s "
                          f"{_examples(ids.loc[rows])}): use labels among {_legal_shown(labels)}, "
                          f"separated by single spaces")
    else:
        notes.append(f"legal labels unknown for column {col!r}: pass labels=[...] to check them")
    repeated = tokens.map(lambda toks: len(toks) != len(set(toks)))
    if repeated.any():
        first = repeated.idxmax()
        errors.append(f"{int(repeated.sum())} cells in column {col!r} list a label twice (e.g. "
                      f"{where} {ids.loc[first]}: {cells.loc[first].strip()!r}): list each label "
                      f"once per row")
    k = _labels_per_row(sample_cells)
    if k is None:
        return
    notes.append(f"the sample lists {k} labels per row in column {col!r}: more is an error, "
                 f"fewer a warning")
    counts = _token_counts(cells)
    for mask, more in ((counts > k, True), (counts < k, False)):
        if not mask.any():
            continue
        first = mask.idxmax()
        message = (f"{int(mask.sum())} cells in column {col!r} list {'more' if more else 'fewer'} "
                   f"than {k} labels (e.g. {where} {ids.loc[first]} lists {counts.loc[first]}: "
                   f"{cells.loc[first].strip()!r}): the sample lists {k} per row")
        if more:
            errors.append(f"{message}; keep the {k} most likely, likeliest first")
        else:
            warnings.append(f"{message}, and a metric such as MAP@{k} scores a guess left out as "
                            f"wrong; fill each row up to {k}")


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
    id_col = sample_table.header[0]
    sub, renamed = _align_id(sub, sample_table.header)
    if renamed is not None and _has_no_name(renamed):  # '' and 'Unnamed: 0': one header, read twice
        report.notes.append(f"the sample's id column has no name ({id_col!r}, a saved pandas "
                            f"index): the submission's first column {renamed!r} is taken as the "
                            f"id column")
    elif renamed is not None:
        warnings.append(f"the sample's id column has no name ({id_col!r}, a saved pandas index) "
                        f"but the submission's first column, taken as the id column by position, "
                        f"is named {renamed!r}: write the sample's header unchanged "
                        f"({','.join(sample_table.header)!r}), or repair with cast_ids=True")
    _check_columns(sub, sample_table, errors)
    frame = sub.frame()
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

