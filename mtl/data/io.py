"""Reading user tables and writing stage outputs (the thin file layer around stage functions)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DataError", "read_json", "read_labels_table", "write_json"]


class DataError(ValueError):
    """The user's data cannot be used as given; the message names the file, column or row."""


def read_labels_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet labels table with every cell as a string (``None`` when empty).

    Reading as strings keeps the raw values exactly as the user wrote them: parsing and
    normalisation are decisions of the clean stage, recorded there.
    """
    if not path.is_file():
        raise DataError(f"labels table not found: expected a CSV or Parquet file at {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            frame = frame.astype(object).where(frame.notna(), None)
            frame = frame.map(lambda v: None if v is None else str(v))
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            _check_csv_shape(path, sep)
            with warnings.catch_warnings():
                # A row with more fields than the header would silently lose data.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                                    na_values=[""], encoding="utf-8-sig", on_bad_lines="error",
                                    engine="python", index_col=False, skip_blank_lines=False)
            frame = frame.astype(object).where(frame.notna(), None)
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
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    return frame.reset_index(drop=True)


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
        names = [h.strip() for h in header]
        dupes = sorted({c for c in names if names.count(c) > 1})
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
