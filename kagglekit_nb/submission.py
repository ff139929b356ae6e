"""The closing step of a run: explicit repairs, the emergency baseline, and `finalize`.

`repair` applies only the fixes asked for; `baseline` fills the sample from the training prior;
`finalize` verifies (see `verification`), repairs if asked, writes verification.json and never
leaves a run without a valid file. Non-CSV kinds register their stand-in with `register_baseline`.

    report = finalize(OUTPUT_DIR / "submission.csv", "sample_submission.csv", OUTPUT_DIR)

`verify`, `VerificationReport`, `infer_kind`, `register_verifier` and `KINDS` live in
`verification` and are importable from here too, where a run's last cell has always found them.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import write_atomic, write_json
from ._table import (
    PathLike,
    SampleLike,
    _align_id,
    _all_int,
    _examples,
    _is_unnamed,
    _load_sample,
    _normalize_ids,
    _read_table,
    _to_number,
    _Unreadable,
)
from .verification import (
    _LABEL_KINDS,
    _PROBA_KINDS,
    KINDS,
    VerificationReport,
    _check_labels,
    _infer_kind,
    _labels_per_row,
    _missing,
    infer_kind,
    register_verifier,
    verify,
)

__all__ = [
    "VERIFICATION_FILE",
    "SubmissionError",
    "baseline",
    "finalize",
    "register_baseline",
    "repair",
    "write_csv",
    "write_verified",
    # re-exported from `verification`
    "KINDS",
    "VerificationReport",
    "infer_kind",
    "register_verifier",
    "verify",
]

VERIFICATION_FILE = "verification.json"  # written by `finalize` into the output dir
_RENORM_ATOL = 1e-9  # `repair(renormalize=True)` leaves rows this close to 1 untouched
_REPAIR_FLAGS = ("drop_index", "cast_ids", "fill_nan", "clip", "renormalize", "reorder")
_REPAIR_OPTIONS = _REPAIR_FLAGS + ("prior",)
_MULTILABEL_FILL = 0.5  # a multilabel_proba cell left empty with no prior: neither on nor off

# Training targets for `baseline`/`finalize`: a sequence (one target per training row) or, for
# multilabel_proba, a 0/1 table with one column per prediction column.
TrainLabels = Sequence[Any] | np.ndarray | pd.DataFrame


class SubmissionError(ValueError):
    """The submission stayed invalid; an emergency baseline was written in its place."""

    def __init__(self, message: str, report: VerificationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# The registry: one emergency stand-in writer per non-CSV kind (CSV kinds use `baseline`).

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
    if renormalize and kind == "multilabel_proba":
        raise ValueError("renormalize=True does not apply to the 'multilabel_proba' format: each "
                         "column is its own yes/no probability and several labels may be on in one "
                         "row, so rows need not sum to 1 (clip=True brings values into [0, 1])")
    if renormalize and kind != "class_proba":
        raise ValueError(f"renormalize=True applies to the 'class_proba' format, but this "
                         f"submission is {kind!r}")
    sample_frame = sample_table.frame()
    id_col, value_cols = sample_table.header[0], sample_table.header[1:]
    priors = _check_prior(prior, value_cols)
    if priors and kind in _LABEL_KINDS and labels_ is not None:
        bad = {c: v for c, v in priors.items()
               if not set(str(v).split() if kind == "label_list" else [str(v)]) <= set(labels_)}
        if bad:
            raise ValueError(f"prior={bad} is not among the legal labels {labels_}")
    try:
        table = _read_table(Path(submission), Path(submission).name)
    except _Unreadable as exc:
        raise ValueError(f"cannot repair submission={str(submission)!r}: {exc}") from None
    table, id_name = _align_id(table, sample_table.header)  # the repairs find the id column by name
    df = table.frame()
    notes: list[str] = []
    if id_name is not None and cast_ids:
        notes.append(f"renamed the id column {id_name!r} to the sample's {id_col!r}")
        id_name = None
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
    if id_name is not None:  # not asked to rename it: the header keeps its text
        df = df.rename(columns={id_col: id_name})
    return df.reset_index(drop=True), notes


def _fill_nan(df: pd.DataFrame, sample: pd.DataFrame, kind: str, id_col: str, cols: list[str],
              priors: dict[str, Any] | None, labels: list[str] | None) -> str:
    """Fill NaN/empty cells in place with the prior; return what was done."""
    filled, sources = 0, []
    sample_by_id = sample.set_index(sample[id_col].str.strip())
    sample_by_id = sample_by_id[~sample_by_id.index.duplicated()]
    ids = df[id_col].str.strip() if id_col in df.columns else None
    for col in cols:
        na = _missing(df[col], kind, labels)
        if not na.any():
            continue
        if priors and col in priors:
            fill = pd.Series(str(priors[col]), index=df.index)
            sources.append(f"{col}: prior {priors[col]}")
        elif kind == "class_proba":
            fill = pd.Series(_format_number(1 / len(sample.columns[1:])), index=df.index)
            sources.append(f"{col}: 1/{len(sample.columns) - 1} (no prior given)")
        elif kind == "multilabel_proba":
            fill = pd.Series(_format_number(_MULTILABEL_FILL), index=df.index)
            sources.append(f"{col}: {_MULTILABEL_FILL} (no prior given)")
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


def baseline(sample: SampleLike, train_labels: TrainLabels | None = None, *,
             kind: str | None = None, prior: Mapping[str, Any] | float | str | None = None,
             labels: Sequence[Any] | None = None) -> pd.DataFrame:
    """Fill the sample submission from the training prior; `df.attrs['note']` says what was used.

    `train_labels` holds one target per training row: a class (label, class_proba), a number
    (binary_proba, numeric) or a string of space-separated labels (label_list, multilabel_proba).
    For multilabel_proba it may instead be a 0/1 table, one column per prediction column: a
    DataFrame (its columns found by name, so the whole train.csv will do) or a 2-D array (columns
    in the sample's order).

    label → majority class; class_proba → class frequencies (train labels matched to column
    names as text); binary_proba → positive rate; numeric → mean; multilabel_proba → each
    column's positive rate; label_list → the k most frequent labels (count, then label text)
    where every sample cell lists k > 1 labels (MAP@k), else the labels present in more than half
    the training rows, else the most frequent one (labels outside `labels` are left out). Without
    train labels: uniform probabilities for class_proba, the sample's own values otherwise.
    `prior` overrides both.

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
        priors, note = _train_prior(kind, train_labels, frame, value_cols, labels_)
    out = pd.DataFrame({id_col: frame[id_col]})
    for col in value_cols:
        out[col] = frame[col] if priors is None else priors[col]
    out.attrs["note"] = f"{kind} baseline: {note}"
    return out


def _train_prior(kind: str, train_labels: TrainLabels, sample: pd.DataFrame, value_cols: list[str],
                 labels: list[str] | None) -> tuple[dict[str, Any], str]:
    """Return {column: value} from the training targets, and a sentence saying how."""
    if not isinstance(train_labels, (pd.DataFrame, np.ndarray)):
        train_labels = list(train_labels)
    if len(train_labels) == 0:
        raise ValueError("train_labels is empty: pass the training targets, or None")
    if kind == "multilabel_proba":
        return _multilabel_prior(train_labels, value_cols)
    train = pd.Series(list(train_labels), dtype=object)
    if kind == "label_list":
        out, notes = {}, []
        for col in value_cols:
            out[col], note = _label_list_prior(train, _labels_per_row(sample[col]), labels)
            notes.append(note if len(value_cols) == 1 else f"{col}: {note}")
        return out, "; ".join(dict.fromkeys(notes))
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


def _no_value(value: Any) -> bool:
    """True for a training row without a target: None or NaN (an empty cell read by pandas)."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _label_tokens(value: Any) -> list[str]:
    """The labels of one training row: 'scab rust' -> ['scab', 'rust']; None/NaN -> none."""
    return [] if _no_value(value) else _label_text(value).split()


def _label_list_prior(train: pd.Series, k: int | None, labels: list[str] | None
                      ) -> tuple[str, str]:
    """The cell to predict for every row of a label_list submission, and a sentence saying how."""
    rows = [set(_label_tokens(v)) for v in train]
    counts = Counter(token for row in rows for token in row)
    dropped = sorted(t for t in counts if labels is not None and t not in labels)
    for token in dropped:
        del counts[token]
    if not counts:
        raise ValueError(f"train_labels holds no usable label for a 'label_list' submission (e.g. "
                         f"{_examples(train.astype(str).unique(), quote=True)})"
                         + (f": none is among the legal labels {labels}" if labels else ""))
    ranked = sorted(counts, key=lambda t: (-counts[t], t))  # most frequent first, ties by text
    n = len(rows)
    if k is not None:
        cell = " ".join(ranked[:k])
        note = (f"the {k} most frequent labels {cell!r} of {n} train rows (the sample lists {k} "
                f"per row)")
    elif counts[ranked[0]] > n / 2:
        cell = " ".join(t for t in ranked if counts[t] > n / 2)
        note = f"the labels present in more than half of {n} train rows: {cell!r}"
    else:
        cell = ranked[0]
        note = f"the most frequent label {cell!r} of {n} train rows (none is in more than half)"
    if dropped:
        note += (f"; {len(dropped)} labels not legal left out (e.g. "
                 f"{_examples(dropped, quote=True)})")
    return cell, note


def _multilabel_prior(train_labels: TrainLabels, value_cols: list[str]
                      ) -> tuple[dict[str, float], str]:
    """Each prediction column's positive rate, from a 0/1 table or space-separated label strings."""
    forms = (f"pass a 0/1 table with one column per prediction column {value_cols}, or one string "
             f"of space-separated labels per training row")
    if isinstance(train_labels, pd.DataFrame):
        missing = [c for c in value_cols if c not in train_labels.columns]
        if missing:
            raise ValueError(f"train_labels has no columns {missing} for a 'multilabel_proba' "
                             f"submission: {forms}")
        table = train_labels[value_cols]
    else:
        values = np.asarray(train_labels, dtype=object)
        if values.ndim == 1 and all(isinstance(v, str) or _no_value(v) for v in values):
            return _multilabel_prior_from_strings(pd.Series(values, dtype=object), value_cols)
        if values.ndim != 2 or values.shape[1] != len(value_cols):
            raise ValueError(f"train_labels has shape {values.shape} for a 'multilabel_proba' "
                             f"submission with {len(value_cols)} prediction columns: {forms}")
        table = pd.DataFrame(values, columns=value_cols)
    numbers = table.apply(pd.to_numeric, errors="coerce")
    for col in value_cols:
        bad = numbers[col].isna() | (numbers[col] < 0) | (numbers[col] > 1)
        if bad.any():
            raise ValueError(f"train_labels column {col!r} must hold 0/1 for a 'multilabel_proba' "
                             f"submission, got {_examples(table[col][bad], quote=True)}")
    rates = numbers.mean()
    return ({c: float(rates[c]) for c in value_cols},
            f"each column's positive rate over {len(table)} train rows")


def _multilabel_prior_from_strings(train: pd.Series, value_cols: list[str]
                                   ) -> tuple[dict[str, float], str]:
    """Positive rates from one string of space-separated labels per training row."""
    rows = [set(_label_tokens(v)) for v in train]
    counts = Counter(token for row in rows for token in row)
    unmatched = sorted(t for t in counts if t not in value_cols)
    if len(unmatched) == len(counts):
        spaced = [c for c in value_cols if len(c.split()) != 1]
        hint = (f"; {_examples(spaced, quote=True)} are names with spaces, which a space-separated "
                f"string cannot hold: pass the 0/1 table instead" if spaced else "")
        raise ValueError(f"no train label matches a prediction column of {value_cols} (e.g. "
                         f"{_examples(unmatched, quote=True)}): the labels must be the column "
                         f"names{hint}")
    note = f"each column's positive rate over {len(rows)} train rows"
    if unmatched:
        note += (f" ({len(unmatched)} labels matching no column were ignored, e.g. "
                 f"{_examples(unmatched, quote=True)})")
    return {c: counts[c] / len(rows) for c in value_cols}, note


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


def write_verified(df: pd.DataFrame, path: PathLike, sample: SampleLike, *,
                   labels: Sequence[Any] | None = None, kind: str | None = None) -> VerificationReport:
    """Write `df` next to `path`, verify it against the sample, and only when it is valid move it
    over `path` (`os.replace`: the old file stays whole until then). An invalid `df` leaves `path`
    as it was (e.g. the emergency baseline); the report says why.

    >>> write_verified(sub, OUTPUT_DIR / "submission.csv", "sample_submission.csv").valid
    True
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".verify.") as tmp_dir:
        tmp = Path(tmp_dir) / path.name  # same name, so messages name the real file
        write_csv(df, tmp)
        report = verify(tmp, sample, labels, kind=kind)
        report.submission = str(path)
        if report.valid:
            os.replace(tmp, path)
    return report


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
             labels: Sequence[Any] | None = None, train_labels: TrainLabels | None = None,
             repair_options: Mapping[str, Any] | None = None,
             kind: str | None = None) -> VerificationReport:
    """Verify, repair if asked, write verification.json; on failure write a baseline and raise.

    A run never ends without a valid file: when the submission stays invalid it is kept as
    ``<name>.invalid.csv``, the emergency baseline takes its place, and `SubmissionError` lists why.
    `train_labels` is given as to `baseline`, per kind.
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


def _write_baseline(path: Path, sample: SampleLike, train_labels: TrainLabels | None,
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
