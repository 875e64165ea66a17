"""Reading user tables and writing stage outputs (the thin file layer around stage functions)."""

from __future__ import annotations

import json
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
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False, na_values=[""], encoding="utf-8",
                                on_bad_lines="error", engine="python")
            frame = frame.astype(object).where(frame.notna(), None)
        else:
            raise DataError(f"{path}: unsupported labels table format {suffix!r} "
                            "(expected .csv, .tsv or .parquet)")
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the labels table is empty (expected a header row)") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be parsed as a table: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    return frame.reset_index(drop=True)


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
