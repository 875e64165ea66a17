"""Property-based tests of the labels-table reader (hypothesis)."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl.data.io import DataError, read_labels_table

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) |
                st.sampled_from([",", '"', "\n", "'", ";", " ", "\t"]), max_size=12)
_NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Z")),
                min_size=1, max_size=8)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[str | None]]]:
    names = draw(st.lists(_NAME, min_size=1, max_size=5, unique=True))
    rows = draw(st.lists(st.lists(st.none() | _TEXT, min_size=len(names),
                                  max_size=len(names)), max_size=8))
    return names, rows


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables())
def test_csv_round_trips_every_cell(table: tuple[list[str], list[list[str | None]]]) -> None:
    names, rows = table
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "labels.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC if rows else csv.QUOTE_MINIMAL)
            w.writerow(names)
            w.writerows([["" if c is None else c for c in r] for r in rows])
        frame = read_labels_table(path)
    assert list(frame.columns) == names
    assert len(frame) == len(rows)  # no row lost or invented
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            expected = None if cell in (None, "") else cell
            assert frame.iat[r, c] == expected, (r, c, cell, frame.iat[r, c])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["labels.csv", "labels.tsv", "labels.parquet"]))
def test_arbitrary_bytes_give_a_table_or_a_data_error(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            frame = read_labels_table(path)
        except DataError as exc:
            assert name in str(exc)
        else:
            assert isinstance(frame, pd.DataFrame)
