"""Issue 9, review 9: the defects a reviewer confirmed in the issue-9 data changes.

(1) the whole-number rule on padded cells and missing-value tokens, (2) declared classes and
synonyms written ``N.0``, (3) the one-to-one leak rule's minimum support, (4) ``-0.0``,
(5) Parquet temporal and decimal columns, (6) ``"7"`` and ``"7.0"`` in one column.
Each test failed on the code before its fix.
"""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl.config import CleanConfig, DatasetConfig, SelectConfig, TaskConfig
from mtl.data.clean import CleanResult, clean
from mtl.data.features import TaskTarget, bijection_chance, one_to_one, select_features
from mtl.data.io import DataError, read_labels_table, whole_numbers
from mtl.schema import TaskKind
from tests.conftest import write_png

CLEAN = CleanConfig(mode="L", min_size=4, workers=1)


def _images(root: Path, n: int) -> None:
    for i in range(n):
        rng = np.random.default_rng(i)
        write_png(root / "images" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))


def _clean(root: Path, name: str, *tasks: TaskConfig, **extra: object) -> CleanResult:
    cfg = DatasetConfig(dir=str(root), labels=name, image_column=None,
                        image_template="images/{id}.png", tasks=tasks, **extra)
    result = clean(cfg, CLEAN)
    # The ledger: every row of the table ends in the manifest or in the rejects, once.
    rows = len(read_labels_table(root / name))
    assert len(result.manifest) + len(result.rejects) == rows, name
    assert set(result.manifest["row"]).isdisjoint(result.rejects["row"])
    return result


# (1) ----------------------------------------------------------------------------------------
def test_whole_numbers_skip_missing_tokens_and_padding_like_the_parquet(tmp_path: Path) -> None:
    _images(tmp_path, 6)
    table = pd.DataFrame({"id": range(6), "digit": [3, 7, None, 3, 7, 3],  # float64: a gap
                          "kind": list("abab" "ab")})
    table.to_csv(tmp_path / "na.csv", index=False, na_rep="NA")  # a default missing token
    padded = table.assign(digit=[" 3.0", "7.0 ", "  ", "3.0", " 7.0 ", "3.0"])
    padded.to_csv(tmp_path / "padded.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    assert ",NA," in (tmp_path / "na.csv").read_text()
    assert list(read_labels_table(tmp_path / "na.csv")["digit"]) == \
        ["3", "7", "NA", "3", "7", "3"]
    assert list(read_labels_table(tmp_path / "padded.csv")["digit"]) == \
        ["3", "7", "  ", "3", "7", "3"]
    # A token of this dataset only ("missing") is skipped only when the dataset says so.
    table.to_csv(tmp_path / "own.csv", index=False, na_rep="missing")
    assert list(read_labels_table(tmp_path / "own.csv")["digit"])[:2] == ["3.0", "7.0"]
    assert list(read_labels_table(tmp_path / "own.csv", None, ["Missing"])["digit"])[:2] == \
        ["3", "7"]
    task = TaskConfig("digit", "digit", classes=("3", "7"))
    out = {name: _clean(tmp_path, name, task) for name in ("t.parquet", "na.csv", "padded.csv")}
    # Row 2 has no label at all (rejected); every other row keeps its class.
    assert list(out["t.parquet"].manifest["digit"]) == ["3", "7", "3", "7", "3"]
    for name, result in out.items():
        assert result.label_issues.empty, name
        pd.testing.assert_frame_equal(result.manifest, out["t.parquet"].manifest, obj=name)
        # (the reject's detail quotes the raw cell: 'NA', '  ' or None)
        pd.testing.assert_frame_equal(result.rejects[["row", "id", "reason"]],
                                      out["t.parquet"].rejects[["row", "id", "reason"]], obj=name)
    own = _clean(tmp_path, "own.csv", task, missing_values=("missing",))
    pd.testing.assert_frame_equal(own.manifest, out["t.parquet"].manifest)


# (2) ----------------------------------------------------------------------------------------
def test_declared_classes_and_synonyms_written_n_point_zero_still_match(tmp_path: Path) -> None:
    _images(tmp_path, 6)
    pd.DataFrame({"id": range(6), "grade": ["1.0", "2.0", "3.0", "1.0", "2.0", "3.0"],
                  "level": [1, 2, None, 1, 2, 2]}).to_csv(tmp_path / "t.csv", index=False)
    assert list(read_labels_table(tmp_path / "t.csv")["grade"]) == ["1", "2", "3"] * 2
    result = _clean(tmp_path, "t.csv",
                    TaskConfig("grade", "grade", classes=("1.0", "2.0", "3.0"),
                               synonyms={"3.0": "2.0"}),
                    TaskConfig("level", "level", "binary", classes=("2.0", "1")))
    m = result.manifest.set_index("row")
    assert list(m["grade"]) == ["1.0", "2.0", "2.0", "1.0", "2.0", "2.0"]  # as declared
    assert list(m["level"]) == ["1", "0", None, "1", "0", "0"]  # index of the class
    assert result.label_issues.empty


# (3) ----------------------------------------------------------------------------------------
def test_bijection_chance_is_the_share_of_relabellings_that_are_one_to_one() -> None:
    # Exhaustive check on small tables: shuffle the labels every possible way.
    from itertools import permutations
    for counts in ([2, 1], [2, 2], [3, 1, 1], [2, 2, 1]):
        y = np.repeat(np.arange(len(counts)), counts)
        x = y.copy()  # a feature one-to-one with the labels
        hits = total = 0
        for perm in permutations(range(len(y))):
            pairs = set(zip(x.tolist(), y[list(perm)].tolist(), strict=True))
            hits += len(pairs) == len(counts)
            total += 1
        assert np.isclose(bijection_chance(np.array(counts)), hits / total), counts


def test_a_sparse_task_matched_by_coincidence_is_not_a_leak() -> None:
    rng = np.random.default_rng(0)
    n = 200
    a = rng.integers(0, 4, n)  # a main task, every row labelled
    brand = np.where(rng.random(n) < 0.6, a, rng.integers(0, 4, n))  # informative, noisy
    train = pd.DataFrame({"brand": [f"b{v}" for v in brand]})
    season = np.full(n, np.nan)
    rows = [*np.flatnonzero(brand == 0)[:2], np.flatnonzero(brand == 1)[0]]
    season[rows] = [0, 0, 1]  # labelled on 3 train rows, lined up with brand by chance
    tasks = [TaskTarget("category", TaskKind.MULTICLASS, a.astype(float)),
             TaskTarget("season", TaskKind.BINARY, season)]
    assert not one_to_one(pd.factorize(train["brand"])[0], tasks[1], 0.9)
    sel = select_features(train, {"brand": "categorical"}, tasks, SelectConfig())
    assert not [d for d in sel.decisions if d["reason"] == "target_leak"], sel.decisions
    assert {f["name"] for f in sel.features} == {f"brand=b{i}" for i in range(4)}
    # The same code on 4 classes of 2 rows is still a leak (chance 0.0095).
    y = np.repeat(np.arange(4), 2).astype(float)
    assert one_to_one(np.repeat([5, 9, 2, 7], 2), TaskTarget("y", TaskKind.MULTICLASS, y), 0.9)


# (4) ----------------------------------------------------------------------------------------
def test_negative_zero_reads_as_zero_in_every_format(tmp_path: Path) -> None:
    table = pd.DataFrame({"x": [-0.0, 1.0, 0.0, None], "f": np.array([-0.0, 2, 0, 1], "f4")})
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    for name in ("t.csv", "t.parquet"):
        frame = read_labels_table(tmp_path / name)
        assert list(frame["x"]) == ["0", "1", "0", None], name
        assert list(frame["f"]) == ["0", "2", "0", "1"], name


# (5) ----------------------------------------------------------------------------------------
def test_parquet_temporal_and_decimal_columns_read_as_the_csv_writer_writes_them(
        tmp_path: Path) -> None:
    table = pd.DataFrame({
        "day": pd.to_datetime(["2020-01-01", "2021-06-30", None]),
        "at": pd.to_datetime(["2020-01-01 12:30", "2021-06-30 00:00", None]),
        "tz": pd.to_datetime(["2020-01-01 12:30", "2021-06-30 00:00", None]).tz_localize("UTC"),
        "span": pd.to_timedelta([1, 2, None], unit="D"),
        "hours": pd.to_timedelta(["1 days 02:00:00", "3:00:00", None]),
    })
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    csv_frame = read_labels_table(tmp_path / "t.csv")
    frame = read_labels_table(tmp_path / "t.parquet")
    assert list(frame["day"]) == ["2020-01-01", "2021-06-30", None]
    assert list(frame["span"]) == ["1 days", "2 days", None]
    pd.testing.assert_frame_equal(frame, csv_frame)
    # Decimals carry the column's scale (2 comes back as 2.00): normalised text instead.
    prices = pa.array([decimal.Decimal("3.50"), None, decimal.Decimal("2"),
                       decimal.Decimal("-0")], pa.decimal128(5, 2))
    days = pa.array([datetime.date(2020, 1, 1), None, datetime.date(2021, 6, 30), None])
    pq.write_table(pa.table({"price": prices, "d": days}), tmp_path / "dec.parquet")
    frame = read_labels_table(tmp_path / "dec.parquet")
    assert list(frame["price"]) == ["3.5", None, "2", "0"]
    assert list(frame["d"]) == ["2020-01-01", None, "2021-06-30", None]


# (6) ----------------------------------------------------------------------------------------
def test_whole_number_rule_never_merges_two_distinct_values(tmp_path: Path) -> None:
    assert whole_numbers(["7", "7.0", "8"]) == ["7", "7.0", "8"]
    assert whole_numbers(["3.0", "3.00", None]) == ["3.0", "3.00", None]
    assert whole_numbers(["0.0", "-0.0", "2.0"]) == ["0", "0", "2"]  # one float value
    _images(tmp_path, 3)
    for i, name in enumerate(["7", "7.0", "8"]):
        write_png(tmp_path / "images" / f"{name}.png",
                  np.random.default_rng(70 + i).integers(0, 255, (16, 16), dtype=np.uint8))
    pd.DataFrame({"id": ["7", "7.0", "8"], "c": ["x", "y", "x"]}).to_csv(
        tmp_path / "t.csv", index=False)
    result = _clean(tmp_path, "t.csv", TaskConfig("c", "c"))
    assert sorted(result.manifest["id"]) == ["7", "7.0", "8"]  # two samples, not a duplicate
    assert result.rejects.empty


def test_messages_issues_and_rejects_quote_the_cells_as_written(tmp_path: Path) -> None:
    _images(tmp_path, 4)  # ids 0..3 have images, 4 has none
    table = pd.DataFrame({"id": [0.0, 1.0, 2.0, 3.0, 4.0], "grade": [1, 2, 9, 1, None]})
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    for name in ("t.csv", "t.parquet"):
        raw: dict[str, list[str | None]] = {}
        frame = read_labels_table(tmp_path / name, None, ("na",), raw)
        assert list(frame["id"]) == ["0", "1", "2", "3", "4"]
        assert raw["id"] == ["0.0", "1.0", "2.0", "3.0", "4.0"] and "grade" in raw
        with pytest.raises(DataError, match=r"rows 0 \('1\.0'\), 1 \('2\.0'\)"):
            _clean(tmp_path, name, TaskConfig("grade", "grade", classes=("a", "b")))
        result = _clean(tmp_path, name, TaskConfig("grade", "grade", classes=("1", "2")))
        assert sorted(result.manifest["id"]) == ["0", "1", "3"]  # row 2: undeclared class
        rejects = result.rejects.set_index("row")
        assert rejects.loc[4, "id"] == "4.0" and rejects.loc[2, "id"] == "2.0", rejects
        assert "grade='9.0'" in rejects.loc[2, "detail"], rejects
        assert list(result.label_issues["value"]) == ["9.0"], result.label_issues
