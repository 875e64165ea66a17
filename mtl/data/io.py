"""Reading user tables and writing stage outputs (the thin file layer around stage functions)."""

from __future__ import annotations

import csv
import decimal
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["DEFAULT_MISSING_VALUES", "DataError", "duplicate_names", "read_json",
           "read_labels_table", "whole_numbers", "write_json"]

#: ``dataset.missing_values``' default: cells that mean "no value" (case-insensitive).
DEFAULT_MISSING_VALUES: tuple[str, ...] = ("na", "n/a", "nan", "null")


class DataError(ValueError):
    """The user's data cannot be used as given; the message names the file, column or row."""


def read_labels_table(path: Path,
                      list_separators: Mapping[str, str] | None = None,
                      missing_values: Iterable[str] = DEFAULT_MISSING_VALUES,
                      raw_cells: dict[str, list[str | None]] | None = None) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet labels table with every cell as ``str`` (``None`` when missing).

    Reading as strings keeps the raw values exactly as the user wrote them: parsing and
    normalisation are decisions of the clean stage, recorded there. The same logical table
    reads the same in every format:

    * an empty cell, a Parquet null and a Parquet ``""`` are all ``None``;
    * an integer Parquet column (nullable or not) reads as ``"3"``, as a CSV would have it;
    * a float column is written with the shortest text that gives back the stored value at
      its width (a float32 ``0.1`` reads as ``"0.1"``, not ``"0.10000000149011612"``);
    * whole numbers: a column whose every present cell (stripped; empty cells and
      ``missing_values`` tokens such as pandas' ``na_rep="NA"`` skipped) is an integer or a
      whole number written as ``N.0`` (at least one of them) is an integer column that a writer
      stored as float (pandas does so for integers with gaps): its ``N.0`` cells read as ``N``
      unless that would merge two distinct values (``whole_numbers``). The rule works on the
      text, so a CSV's ``"3.0"``, ``" 3.0 "`` and a float Parquet ``3.0`` all read as ``"3"``;
    * timestamps, times and durations read as pandas' CSV writer writes them (``2020-01-01``
      when every value is at midnight, ``1 days``); decimals as their normalised fixed-point
      text (``2.00`` -> ``"2"``, as the stored scale is not what the user wrote);
    * a Parquet list column (``list<string>``) reads as its items joined by the separator
      ``list_separators`` gives for the column (a multilabel task's ``separator``), as a CSV
      would hold it (``"red|blue"``); a list column with no separator, a nested list, or an item
      that contains the separator is a ``DataError`` naming the column.

    ``raw_cells``, when given, receives the cells as written (before the whole-number rule) of
    every column the rule rewrote, so that messages and rejects can quote the user's text.
    """
    if not path.is_file():
        raise DataError(f"labels table not found: expected a CSV or Parquet file at {path}")
    suffix = path.suffix.lower()
    tokens = tuple(missing_values)
    try:
        if suffix == ".parquet":
            frame = _read_parquet_as_text(path, dict(list_separators or {}), tokens,
                                          raw_cells)
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            _check_csv_shape(path, sep)
            with warnings.catch_warnings():
                # A row with more fields than the header would silently lose data.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                    na_values=[""], encoding="utf-8-sig", on_bad_lines="error",
                                    engine="python", index_col=False, skip_blank_lines=False)
            # One object array for the whole table (``None`` where empty): converting column by
            # column costs seconds on a table with thousands of columns.
            cells = frame.to_numpy(dtype=object, na_value=None)  # [rows, columns]
            for j in range(cells.shape[1]):
                column = list(cells[:, j])
                fixed = whole_numbers(column, tokens)  # the same list when the rule does not apply
                if fixed is not column:
                    cells[:, j] = fixed
                    if raw_cells is not None:
                        raw_cells[str(frame.columns[j]).strip()] = column
            frame = pd.DataFrame(cells, columns=frame.columns, dtype=object)
        else:
            raise DataError(f"{path}: unsupported labels table format {suffix!r} "
                            "(expected .csv, .tsv or .parquet)")
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except pd.errors.ParserWarning as exc:
        raise DataError(f"{path}: cannot be parsed as a table: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the labels table is empty (expected a header row)") from exc
    except (pd.errors.ParserError, csv.Error, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be parsed as a table: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    dupes = duplicate_names(list(frame.columns))
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    return frame.reset_index(drop=True)


def duplicate_names(names: list[str]) -> list[str]:
    """Column names occurring more than once, sorted (one pass over a hash table: linear in
    the number of columns; only names with equal hashes are ever compared)."""
    return sorted(name for name, n in Counter(names).items() if n > 1)


def _cell_text(value: Any) -> str | None:
    """One Parquet cell as the text a CSV would hold; ``None`` (or NaN) stays missing.

    An empty string is missing too, as an empty CSV cell is: the same logical table must read
    the same in every format (a CSV cannot tell ``""`` from a gap).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value)
    return text if text != "" else None


_WHOLE = re.compile(r"[+-]?\d+(\.0+)?")


def _whole_text(text: str) -> str:
    """``"-12.00"`` -> ``"-12"``, ``"-0.0"`` -> ``"0"``, ``"+3.0"`` -> ``"3"`` (``text`` matches
    ``N.0``): the integer a float writer meant, as ``str(int)`` writes it."""
    return str(int(text.split(".", 1)[0]))


def whole_numbers(cells: list[str | None],
                  missing_values: Iterable[str] = DEFAULT_MISSING_VALUES) -> list[str | None]:
    """The whole-number rule of every reader, on one column of text cells (``None`` = missing).

    Cells are judged stripped of surrounding whitespace; empty cells and the dataset's
    missing-value tokens (``missing_values``, case-insensitive, such as pandas'
    ``na_rep="NA"``) are skipped. When every other cell is an integer (``3``) or a whole
    number written as ``N.0`` (``3.0``, ``-12.00``), at least one is written as ``N.0``, and
    the rewrite merges no two distinct present values (a column holding ``"7"`` and ``"7.0"``,
    or ``"3.0"`` and ``"3.00"``, stays as written; ``"0.0"`` and ``"-0.0"`` are one float
    value and both read ``"0"``), the column is an integer column stored as
    float: its ``N.0`` cells become ``N`` (``-0.0`` becomes ``0``) and its integer cells are
    stripped. Any other column is returned unchanged (the same list object).
    A first non-matching cell settles it, so a text column costs one look-up.
    """
    skip = {m.strip().casefold() for m in missing_values}
    fraction = False
    rewrite: dict[str, str] = {}  # distinct raw cell -> its new text
    for cell in cells:
        if cell is None or cell in rewrite:
            continue
        text = cell.strip()
        if not text or text.casefold() in skip:
            continue
        m = _WHOLE.fullmatch(text)
        if m is None:
            return cells
        if m.group(1) is not None:
            fraction = True
            rewrite[cell] = _whole_text(text)
        else:
            rewrite[cell] = text
    if not fraction:
        return cells
    # Two distinct present values ("7" and "7.0", or "3.0" and "3.00") that would read the
    # same: the column is not a float copy of integers (a float writer is consistent), keep it.
    # A float writer does write both ``0.0`` and ``-0.0`` (equal values): one value.
    owner: dict[str, str] = {}
    for cell, new in rewrite.items():
        text = cell.strip()
        same = text.lstrip("+-") if new == "0" and "." in text else text
        if owner.setdefault(new, same) != same:
            return cells
    return [rewrite.get(c, c) if c is not None else None for c in cells]


def _list_text(value: list[Any], column: str, separator: str | None) -> str | None:
    """A Parquet list cell as the separator-joined text a CSV multilabel cell would hold."""
    if separator is None:
        raise DataError(f"column {column!r} holds lists ({value!r}); a list column is read "
                        "only for a multilabel task (joined with its separator), found none")
    items: list[str] = []
    for item in value:
        if isinstance(item, (list, dict)):
            raise DataError(f"column {column!r}: expected a list of labels, found a nested "
                            f"value {item!r}")
        text = _cell_text(item)
        if text is None:
            continue
        if separator in text:
            raise DataError(f"column {column!r}: the label {text!r} contains the task's "
                            f"separator {separator!r}, so it cannot be told apart")
        items.append(text)
    return separator.join(items) if items else None


def _column_text(column: pa.ChunkedArray, name: str,
                 separator: str | None) -> list[str | None]:
    """A Parquet column as the text cells a CSV of the same table would hold.

    Values come from Arrow as Python objects (``to_pylist``), so an integer column with nulls
    stays ``int`` + ``None`` (pandas would make it float and ``3`` would become ``"3.0"``).
    A float column is written with the shortest text of its stored width (Python's ``repr``
    for float64, numpy's for float32/float16, as pandas writes them to a CSV); the
    whole-number rule (``whole_numbers``) then applies as for a CSV.
    """
    values = column.to_pylist()
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
            pa.types.is_fixed_size_list(kind):
        return [None if v is None else _list_text(v, name, separator) for v in values]
    if pa.types.is_timestamp(kind) or pa.types.is_duration(kind) or \
            pa.types.is_time(kind):
        return _pandas_csv_text(column, name)
    if pa.types.is_decimal(kind):
        # A decimal column has one scale, so a stored ``2`` comes back as ``2.00``: the
        # normalised text (no trailing zeros, never an exponent) is what the value means.
        return [None if v is None else _decimal_text(v) for v in values]
    if pa.types.is_float32(kind) or pa.types.is_float16(kind):
        width = np.float32 if pa.types.is_float32(kind) else np.float16
        return [None if v is None or math.isnan(v) else str(width(v)) for v in values]
    return [_cell_text(v) for v in values]


def _decimal_text(value: decimal.Decimal) -> str:
    """``Decimal("2.00")`` -> ``"2"``, ``Decimal("3.50")`` -> ``"3.5"`` (fixed-point text)."""
    if not value.is_finite():
        return str(value)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _pandas_csv_text(column: pa.ChunkedArray, name: str) -> list[str | None]:
    """A timestamp, time or duration column as pandas' CSV writer writes it: date-only when
    every value is at midnight (``2020-01-01``), else ``2020-01-01 12:30:00`` (``+00:00`` with
    a time zone); durations as ``1 days`` / ``1 days 02:00:00``. pandas formats the whole
    column, so the column is written through ``Series.to_csv`` itself rather than imitated.
    """
    try:
        series = column.to_pandas()
    except (pa.ArrowException, OverflowError, ValueError) as exc:
        raise DataError(f"column {name!r} ({column.type}): cannot be read as pandas "
                        f"would write it to a CSV: {exc}") from exc
    # ``\n`` inside a value is impossible for these types, so one line is one cell.
    lines = series.to_csv(index=False, header=False, lineterminator="\n").split("\n")[:-1]
    if len(lines) != len(series):
        raise DataError(f"column {name!r} ({column.type}): expected {len(series)} cells, "
                        f"found {len(lines)} lines")
    return [text.strip('"') or None for text in lines]


def _read_parquet_as_text(path: Path, list_separators: dict[str, str],
                          tokens: tuple[str, ...],
                          raw_cells: dict[str, list[str | None]] | None) -> pd.DataFrame:
    """Every column of a Parquet file as object columns of ``str``/``None``.

    Read through Arrow rather than ``pandas.read_parquet``: pandas turns integer columns with
    nulls into floats, and converting a frame cell by cell (``DataFrame.map``) lets pandas 3
    re-infer the dtype and bring ``NaN`` back where a cell was missing.
    """
    table = pq.read_table(path)
    # pandas stores an unnamed, non-default index as ``__index_level_0__``: not a user column
    # (a named index, such as ``id``, is one and is kept).
    index_cols = {c for c in table.column_names if re.fullmatch(r"__index_level_\d+__", c)}
    data: dict[str, pd.Series] = {}
    try:
        for i, name in enumerate(table.column_names):
            if name in index_cols:
                continue
            text = _column_text(table.column(i), name, list_separators.get(name))
            fixed = whole_numbers(text, tokens)
            if fixed is not text and raw_cells is not None:
                raw_cells[name.strip()] = text
            data[name] = pd.Series(fixed, dtype=object)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return pd.DataFrame(data, columns=[c for c in table.column_names if c not in index_cols],
                        index=pd.RangeIndex(table.num_rows))


def _check_csv_shape(path: Path, sep: str) -> None:
    """Duplicate header names and rows with a wrong number of fields, named by row.

    pandas would rename duplicate columns (``a.1``) and shift or drop extra fields; both hide
    a broken table, so they are stopped here with the rows a user has to fix.
    """
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=sep)
        header = next(reader, None)
        if header is None:
            return
        dupes = duplicate_names([h.strip() for h in header])
        if dupes:
            raise DataError(f"{path}: duplicate column names {dupes}")
        bad: list[str] = []
        for row, fields in enumerate(reader):
            if fields and len(fields) != len(header):
                bad.append(f"row {row} (line {reader.line_num}: {len(fields)} fields)")
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise DataError(f"{path}: cannot be parsed as a table: expected {len(header)} "
                            f"fields per row like the header, found {shown}")


def _default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_default, allow_nan=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
