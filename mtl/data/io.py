"""Reading user tables and writing stage outputs (the thin file layer around stage functions)."""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

__all__ = ["DataError", "read_json", "read_labels_table", "write_json"]


class DataError(ValueError):
    """The user's data cannot be used as given; the message names the file, column or row."""


def read_labels_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet labels table with every cell as ``str`` (``None`` when missing).

    Reading as strings keeps the raw values exactly as the user wrote them: parsing and
    normalisation are decisions of the clean stage, recorded there. The same logical table
    reads the same in every format: an empty CSV cell and a Parquet null are both ``None``, and
    an integer Parquet column (nullable or not) reads as ``"3"``, as a CSV would have it.
    """
    if not path.is_file():
        raise DataError(f"labels table not found: expected a CSV or Parquet file at {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = _read_parquet_as_text(path)
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
            frame = pd.DataFrame(frame.to_numpy(dtype=object, na_value=None),
                                 columns=frame.columns, dtype=object)
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
    dupes = _duplicates(list(frame.columns))
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    return frame.reset_index(drop=True)


def _duplicates(names: list[str]) -> list[str]:
    """Names occurring more than once (one pass over a hash table: linear in the columns)."""
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


def _column_text(values: list[Any]) -> list[str | None]:
    """A Parquet column as text cells.

    Values come from Arrow as Python objects (``to_pylist``), so an integer column with nulls
    stays ``int`` + ``None`` (pandas would make it float and ``3`` would become ``"3.0"``). A
    float column whose values are all whole numbers is an integer column that a writer stored as
    float (pandas does so for integers with gaps): its cells are written as integers.
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, float) for v in present):
        finite = [v for v in present if math.isfinite(v)]
        if finite and all(v.is_integer() and abs(v) < 2**53 for v in finite):
            return [None if v is None or math.isnan(v) else
                    str(int(v)) if math.isfinite(v) else str(v) for v in values]
    return [_cell_text(v) for v in values]


def _read_parquet_as_text(path: Path) -> pd.DataFrame:
    """Every column of a Parquet file as object columns of ``str``/``None``.

    Read through Arrow rather than ``pandas.read_parquet``: pandas turns integer columns with
    nulls into floats, and converting a frame cell by cell (``DataFrame.map``) lets pandas 3
    re-infer the dtype and bring ``NaN`` back where a cell was missing.
    """
    table = pq.read_table(path)
    # pandas stores an unnamed, non-default index as ``__index_level_0__``: not a user column
    # (a named index, such as ``id``, is one and is kept).
    index_cols = {c for c in table.column_names if re.fullmatch(r"__index_level_\d+__", c)}
    data = {name: pd.Series(_column_text(table.column(i).to_pylist()), dtype=object)
            for i, name in enumerate(table.column_names) if name not in index_cols}
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
        dupes = _duplicates([h.strip() for h in header])
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
