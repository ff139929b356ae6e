"""A CSV read as text: every cell a string, so "1.0" vs "1" and " 7" stay visible to the checks.

Shared by `verification` (the checks) and `submission` (the repairs), which must read a file the
same way: the repairs change only the cells the checks complained about.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

PathLike = Union[str, "os.PathLike[str]"]
SampleLike = Union[str, "os.PathLike[str]", pd.DataFrame]

_N_EXAMPLES = 5  # examples quoted per problem
# Cells pandas reads as NaN by default; we read raw text, so we recognise them ourselves.
_NA_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})
_INT_RE = r"^[+-]?\d+$"
_FLOAT_INT_RE = r"^[+-]?\d+\.0*$"  # "1.0", "17.", "3.000": an integer written as a float


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


def _is_na(cells: pd.Series, numbers: pd.Series | None = None) -> pd.Series:
    """Mask of the cells that hold an NA token ('', 'nan', 'NULL', ... with spaces around); `numbers`
    is `_to_number(cells)` when the caller has it already (parsing 100k cells is the costly part)."""
    # Only cells that are not numbers can be NA tokens: strip those alone (a submission's columns are
    # mostly numbers, and stripping 100k strings costs more than the rest of a check).
    candidates = (_to_number(cells) if numbers is None else numbers).isna().to_numpy()
    out = np.zeros(len(cells), dtype=bool)
    if candidates.any():
        out[candidates] = cells[candidates].str.strip().isin(_NA_TOKENS).to_numpy()
    return pd.Series(out, index=cells.index)


def _to_number(cells: pd.Series) -> pd.Series:
    """Parse text cells as floats (spaces around a number are allowed); unparseable and NA cells
    become NaN."""
    return pd.to_numeric(cells, errors="coerce").astype(float)


def _non_numeric(cells: pd.Series, numbers: pd.Series | None = None) -> pd.Series:
    """Mask of cells that are neither NA nor parseable as a number (`numbers` as in `_is_na`)."""
    numbers = _to_number(cells) if numbers is None else numbers
    return numbers.isna() & ~_is_na(cells, numbers)


def _all_int(cells: pd.Series) -> bool:
    """Every cell is an integer ('7', ' -3 '); the first cell decides most columns without a scan."""
    first = cells.iloc[0] if len(cells) else None
    if isinstance(first, str) and re.fullmatch(_INT_RE, first.strip()) is None:
        return False
    return bool(cells.str.strip().str.fullmatch(_INT_RE).all())


def _normalize_ids(ids: pd.Series, int_ids: bool) -> pd.Series:
    """Strip spaces and, for integer ids, write '1.0' as '1'; leave everything else unchanged."""
    out = ids.str.strip()
    if int_ids:
        floaty = out.str.fullmatch(_FLOAT_INT_RE)
        out = out.where(~floaty, out.str.split(".").str[0])
    return out


def _is_unnamed(name: str) -> bool:
    """True for a header cell pandas writes for a saved index ('', 'Unnamed: 0', 'index')."""
    return name.strip() == "" or name.startswith("Unnamed:") or name in ("index", "level_0")


def _has_no_name(name: str) -> bool:
    """True for the header of an unnamed saved pandas index: '' as written, 'Unnamed: 0' once read."""
    return name.strip() == "" or name.startswith("Unnamed:")


def _id_position(header: list[str], sample_header: list[str]) -> int | None:
    """Where the submission's id column is: the sample's id column by name or, when the sample's id
    column has no name (the sample was saved with its index, header ',label'), the first column."""
    want = sample_header[0]
    if want in header:
        return header.index(want)
    if _has_no_name(want) and header and header[0] not in sample_header[1:]:
        return 0
    return None


def _align_id(table: _Table, sample_header: list[str]) -> tuple[_Table, str | None]:
    """Name the submission's id column as the sample does; return the table and the name it had when
    that differs (None when it already matched or there is no id column)."""
    pos = _id_position(table.header, sample_header)
    if pos is None or table.header[pos] == sample_header[0]:
        return table, None
    header = list(table.header)
    original, header[pos] = header[pos], sample_header[0]
    return _Table(header=header, data=table.data, name=table.name), original

