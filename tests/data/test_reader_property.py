"""Property-based tests of the labels-table readers and the label normaliser (hypothesis)."""

from __future__ import annotations

import csv
import re
import tempfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl.config import CleanConfig, DatasetConfig, TaskConfig
from mtl.data.clean import REJECT_REASONS, clean
from mtl.data.features import FEATURE_PREFIX
from mtl.data.io import DataError, read_labels_table
from mtl.data.labels import LabelNormaliser
from tests.conftest import write_png

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


_TOKENS = ("na", "n/a", "nan", "null")  # dataset.missing_values' default


def _whole_number_oracle(cells: list[str | None]) -> list[str | None]:
    """The documented whole-number rule, written independently of the reader (by value, with
    ``Decimal``): judged on stripped cells, empty cells and missing tokens skipped; applied
    when every other cell is a whole number, one is written with ``.0``, and no two distinct
    texts share a value (``0.0`` and ``-0.0`` excepted: one float value)."""
    judged = {c: c.strip() for c in cells
              if c is not None and c.strip() and c.strip().casefold() not in _TOKENS}
    if not judged or not all(re.fullmatch(r"[+-]?\d+(\.0+)?", t) for t in judged.values()) \
            or not any("." in t for t in judged.values()):
        return cells
    texts_of: dict[Decimal, set[str]] = {}
    for t in judged.values():
        texts_of.setdefault(Decimal(t), set()).add(
            t.lstrip("+-") if Decimal(t) == 0 and "." in t else t)
    if any(len(texts) > 1 for texts in texts_of.values()):
        return cells
    return [str(int(Decimal(judged[c]))) if c in judged and "." in judged[c]
            else judged.get(c, c) if c is not None else None for c in cells]


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
    for c in range(len(names)):
        expected = [None if row[c] in (None, "") else row[c] for row in rows]
        # The documented whole-number rule: a column of integers and whole numbers written
        # as "N.0" (at least one) reads as integers; every other column cell for cell.
        expected = _whole_number_oracle(expected)
        for r, cell in enumerate(expected):
            assert frame.iat[r, c] == cell, (r, c, rows[r][c], frame.iat[r, c])


_PAD = st.sampled_from(["", " ", "  ", "\t"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.none() | st.integers(-20, 20) | st.just(-0.0), min_size=1, max_size=8),
       st.sampled_from(["", "NA", "n/a", "NaN", "null", "NULL", "nan"]), _PAD, _PAD)
def test_a_float_integer_column_reads_the_same_from_parquet_and_padded_csv(
        values: list[int | float | None], na_rep: str, left: str, right: str) -> None:
    """pandas stores integers with gaps as float: ``3.0`` in Parquet, ``"3.0"`` or a padded
    ``" 3.0 "`` in a CSV whose gaps hold ``na_rep``. Both read as the same cells (the CSV's
    missing tokens aside, which clean treats as missing: here ``None``)."""
    column = pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")
    with tempfile.TemporaryDirectory() as d:
        pd.DataFrame({"x": column}).to_parquet(Path(d) / "t.parquet", index=False)
        lines = ["x"] + [left + (na_rep if v is None else repr(float(v))) + right
                         for v in values]
        (Path(d) / "t.csv").write_text("\n".join(lines) + "\n")
        from_parquet = list(read_labels_table(Path(d) / "t.parquet")["x"])
        from_csv = list(read_labels_table(Path(d) / "t.csv")["x"])
    present = [v for v in values if v is not None]
    assert from_parquet == [None if v is None else str(int(v)) for v in values] if present \
        else from_parquet == [None] * len(values)
    seen = [None if c is None or c.strip().casefold() in _TOKENS or not c.strip() else c
            for c in from_csv]
    assert seen == from_parquet, (values, na_rep, left, right, from_csv)


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


# ---------------------------------------------------------------------------------------------
# The same logical table in CSV, TSV and Parquet gives the same clean manifest (issue 9).

_N_IMAGES = 6  # images exist for ids 0..5; ids 6 and 7 have none (missing_file)
_COLOURS = ["red", "Red", " RED ", "blue", "Blue  ", "green", "n/a", "NULL", "", "teal"]
_FLAGS = ["yes", "No", "TRUE", "0", "1", " y ", "maybe", "N/A"]
_TASKS = (
    TaskConfig("colour", "colour", casefold=True, classes=("red", "blue", "green")),
    TaskConfig("code", "code", classes=("3", "7")),
    TaskConfig("flag", "flag", "binary", classes=("yes", "no")),
    TaskConfig("weight", "weight", "regression"),
)


@st.composite
def logical_tables(draw: st.DrawFn) -> pd.DataFrame:
    """A labels table with nullable integer ids and codes, nulls, mixed case and padding."""
    n = draw(st.integers(1, 8))
    ints = st.none() | st.integers(0, 7)
    col = {
        "id": pd.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype="Int64"),
        "colour": draw(st.lists(st.none() | st.sampled_from(_COLOURS), min_size=n, max_size=n)),
        "code": pd.array(draw(st.lists(st.none() | st.sampled_from([3, 7, 12]), min_size=n,
                                       max_size=n)), dtype="Int64"),
        "flag": draw(st.lists(st.none() | st.sampled_from(_FLAGS), min_size=n, max_size=n)),
        "weight": draw(st.lists(st.none() | st.floats(-1e6, 1e6, allow_nan=False, width=32),
                                min_size=n, max_size=n)),
        "size": pd.array(draw(st.lists(st.none() | st.integers(-5, 10**6), min_size=n,
                                       max_size=n)), dtype="Int64"),
    }
    # Integers with gaps as a writer may store them: as float ("3.0" in a CSV, 3.0 in Parquet).
    col["count"] = pd.array(draw(st.lists(st.none() | st.integers(-3, 10**5), min_size=n,
                                          max_size=n)), dtype="Int64").astype("float64")
    frame = pd.DataFrame(col)
    for name in ("id", "code"):
        if draw(st.booleans()):
            frame[name] = frame[name].astype("float64")
    # float32 values ("0.1" in a CSV) read with their shortest text in Parquet too.
    frame["weight"] = frame["weight"].astype("float32" if draw(st.booleans()) else "float64")
    frame["ratio"] = pd.array(draw(st.lists(st.none() | st.floats(-1e4, 1e4, width=32),
                                            min_size=n, max_size=n)), dtype="float32")
    return frame


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)


@settings(max_examples=25, deadline=None)
@given(logical_tables())
def test_every_format_gives_the_same_manifest_and_every_row_is_accounted(
        frame: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for i in range(_N_IMAGES):
            write_png(root / "images" / f"{i}.png", np.full((8, 8), 30 * i, np.uint8))
        results = {}
        for name in ("labels.csv", "labels.tsv", "labels.parquet"):
            _write_table(frame, root / name)
            cfg = DatasetConfig(dir=str(root), labels=name, image_column=None,
                                image_template="images/{id}.png", tasks=_TASKS,
                                feature_columns={"size": "numeric", "count": "numeric",
                                                 "ratio": "numeric"})
            try:
                results[name] = clean(cfg, CleanConfig(min_size=4, workers=1))
            except DataError as exc:  # a table-level stop must be the same in every format
                results[name] = str(exc).replace(name, "<table>")
    first = results["labels.csv"]
    for name, result in results.items():
        if isinstance(first, str):
            assert result == first, name
            continue
        assert not isinstance(result, str), (name, result)
        pd.testing.assert_frame_equal(result.manifest, first.manifest, obj=name)
        pd.testing.assert_frame_equal(result.rejects, first.rejects, obj=name)
        pd.testing.assert_frame_equal(result.label_issues, first.label_issues, obj=name)
        # The ledger: every raw row exactly once, in the manifest or rejected with a reason.
        rows = sorted([*result.manifest["row"], *result.rejects["row"]])
        assert rows == list(range(len(frame)))
        assert set(result.rejects["reason"]) <= set(REJECT_REASONS)
        assert all(len(str(d)) > 5 for d in result.rejects["detail"])
        # Integer ids stay integers: "3", never "3.0".
        assert all(str(int(i)) == i for i in result.manifest["id"])
        for v in result.manifest["code"]:
            assert v is None or v in ("3", "7")
        for v in [*result.manifest[FEATURE_PREFIX + "size"],
                  *result.manifest[FEATURE_PREFIX + "count"]]:
            assert v is None or str(int(v)) == v


# ---------------------------------------------------------------------------------------------
# Label normaliser: a round trip of the declared classes never changes a label's meaning.

_WORD = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P")),
                min_size=1, max_size=6)
_SPELLINGS = sorted({"1", "true", "yes", "y", "t", "0", "false", "no", "n", "f", "1.0", "0.0"})


def _respell(draw: st.DrawFn, value: str, casefold: bool) -> str:
    """The same label as a user might type it: padded, and in another case when allowed."""
    if casefold:
        value = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in value)
    pad = st.sampled_from(["", " ", "  ", "\t"])
    return draw(pad) + value + draw(pad)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.lists(_WORD, min_size=2, max_size=4, unique_by=str.casefold),
       st.booleans(), st.booleans())
def test_declared_classes_keep_their_meaning(data: st.DataObject, classes: list[str],
                                             casefold: bool, binary: bool) -> None:
    # Case-variants of a class must stay that class, so classes differ after case folding.
    if any(c.upper().casefold() != c.casefold() or c.lower().casefold() != c.casefold()
           for c in classes):
        return
    if binary:
        classes = classes[:2]
    task = TaskConfig("t", "t", "binary" if binary else "multiclass", classes=tuple(classes),
                      casefold=casefold)
    norm = LabelNormaliser.fit(task, classes, ())
    for i, cls in enumerate(classes):
        raw = _respell(data.draw, cls, casefold)
        value, issue = norm(raw)
        assert issue is None, (raw, cls)
        assert value == (str(i) if binary else cls), (raw, cls, value)
    if binary:
        # A built-in spelling means its truth value: it maps to the declared class with that
        # truth value, or it is an issue; never to the class meaning the opposite.
        spelling = data.draw(st.sampled_from(_SPELLINGS))
        value, issue = norm(_respell(data.draw, spelling, True))
        if value is not None:
            truth = spelling in ("1", "true", "yes", "y", "t", "1.0")
            meant = classes[int(value)].casefold()
            if meant in _SPELLINGS:
                assert (meant in ("1", "true", "yes", "y", "t", "1.0")) == truth
            else:
                assert meant == spelling, (spelling, classes, value)
        else:
            assert issue == "not_binary"
