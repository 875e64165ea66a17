"""Issue 9, second pass: the gaps an independent review found after defects 1-15 were fixed.

(a) a one-to-one code of a label on few rows, (b) id ownership after whole-dataset rejects,
(c) whole numbers written as ``N.0``, (d) Parquet list columns, (e) float32 values,
(f) the column checks linear in the number of columns. Each test failed on the code before
its fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl.config import CleanConfig, DatasetConfig, TaskConfig
from mtl.data.clean import clean
from mtl.data.io import DataError, read_labels_table
from tests.conftest import write_png

MakeTable = Callable[..., tuple[DatasetConfig, Path]]
CLEAN = CleanConfig(mode="L", min_size=4, workers=1)


def _images(root: Path, n: int) -> None:
    for i in range(n):
        rng = np.random.default_rng(i)
        write_png(root / "images" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))


def _ledger(result: Any, n: int) -> None:
    assert sorted([*result.manifest["row"], *result.rejects["row"]]) == list(range(n))


# (b) ----------------------------------------------------------------------------------------
def _duplicate_id_details_name_manifest_rows(result: Any) -> None:
    kept = set(result.manifest["row"])
    for detail in result.rejects.loc[result.rejects["reason"] == "duplicate_id", "detail"]:
        owner = int(detail.split("belongs to row ")[1].split()[0])
        assert owner in kept, detail


def test_an_id_goes_to_a_later_row_when_its_first_row_is_a_dropped_duplicate_image(
        make_table: MakeTable) -> None:
    rows = [{"id": "a", "pixels": 1, "c": "x"},
            {"id": "b", "pixels": 1, "c": "x"},  # same pixels as "a": dropped (duplicate_image)
            {"id": "b", "image": "images/b2.png", "c": "y"}]  # a valid row with the id "b"
    cfg, root = make_table(rows, tasks=(TaskConfig("c", "c"),))
    write_png(root / "images" / "b2.png", np.full((16, 16), 200, np.uint8))
    result = clean(cfg, CLEAN)
    _ledger(result, 3)
    assert sorted(result.manifest["row"]) == [0, 2]
    rej = result.rejects.set_index("row")
    # Row 1's id is row 2's now (the first reason in the documented order); why row 1 itself
    # was dropped stays in the detail.
    assert rej.loc[1, "reason"] == "duplicate_id", rej.loc[1, "detail"]
    assert "belongs to row 2" in rej.loc[1, "detail"]
    assert "duplicate_image (same pixels as id 'a' (row 0)" in rej.loc[1, "detail"]
    _duplicate_id_details_name_manifest_rows(result)


def test_an_id_goes_to_a_later_row_when_its_first_row_breaks_the_hierarchy(
        make_table: MakeTable) -> None:
    fine = ["shoe"] * 4 + ["shirt"] * 2
    coarse = ["shoes"] * 3 + ["tops"] + ["tops"] * 2  # row 3: shoe under tops (rejected)
    rows = [{"id": f"s{i}", "pixels": i, "fine": fine[i], "coarse": coarse[i]} for i in range(6)]
    rows.append({"id": "s3", "image": "images/later.png", "fine": "shoe", "coarse": "shoes"})
    cfg, root = make_table(rows, hierarchy=(("fine", "coarse"),))
    write_png(root / "images" / "later.png", np.full((16, 16), 77, np.uint8))
    result = clean(cfg, replace(CLEAN, hierarchy_action="reject"))
    _ledger(result, 7)
    assert 6 in set(result.manifest["row"])  # the later, valid "s3" is kept
    rej = result.rejects.set_index("row")
    assert rej.loc[3, "reason"] == "duplicate_id" and "belongs to row 6" in rej.loc[3, "detail"]
    assert "hierarchy_violation" in rej.loc[3, "detail"]
    _duplicate_id_details_name_manifest_rows(result)


def test_a_duplicate_id_never_points_at_a_rejected_row(make_table: MakeTable) -> None:
    rows = [{"id": "z", "pixels": 5, "c": "x"},
            {"id": "a", "image": "images/missing.png", "c": "x"},  # missing file
            {"id": "a", "pixels": 5, "c": "x"}]  # same pixels as "z": dropped
    # make_table names row 2's image images/a.png; row 1's file does not exist.
    cfg, _ = make_table(rows, tasks=(TaskConfig("c", "c"),))
    result = clean(cfg, CLEAN)
    _ledger(result, 3)
    rej = result.rejects.set_index("row")
    # No manifest row owns "a": each rejected row keeps its own reason.
    assert rej.loc[1, "reason"] == "missing_file", rej.loc[1, "detail"]
    assert rej.loc[2, "reason"] == "duplicate_image"
    _duplicate_id_details_name_manifest_rows(result)


def test_a_repeated_row_is_still_a_duplicate_id_of_the_first(make_table: MakeTable) -> None:
    rows = [{"id": "a", "pixels": 1, "c": "x"}, {"id": "b", "pixels": 2, "c": "y"},
            {"id": "a", "image": "images/a.png", "c": "x"}]
    cfg, _ = make_table(rows, tasks=(TaskConfig("c", "c"),))
    result = clean(cfg, CLEAN)
    rej = result.rejects.set_index("row")
    assert list(rej.index) == [2] and rej.loc[2, "reason"] == "duplicate_id"
    assert "belongs to row 0" in rej.loc[2, "detail"]


# (c) ----------------------------------------------------------------------------------------
def test_whole_numbers_written_as_n_point_zero_read_as_integers_in_every_format(
        tmp_path: Path) -> None:
    _images(tmp_path, 5)
    # pandas writes an integer column with gaps as float: "3.0" in a CSV, 3.0 in Parquet.
    table = pd.DataFrame({"id": [0.0, 1.0, None, 3.0, 4.0],
                          "code": [3.0, 7.0, 7.0, None, 3.0],
                          "ratio": [0.5, 1.0, 2.0, 1.5, None]})  # not whole: stays as it is
    table.to_csv(tmp_path / "labels.csv", index=False)
    table.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    table.to_parquet(tmp_path / "labels.parquet", index=False)
    assert "3.0" in (tmp_path / "labels.csv").read_text()
    results = {}
    for name in ("labels.csv", "labels.tsv", "labels.parquet"):
        frame = read_labels_table(tmp_path / name)
        assert list(frame["id"]) == ["0", "1", None, "3", "4"], name
        assert list(frame["code"]) == ["3", "7", "7", None, "3"], name
        assert list(frame["ratio"]) == ["0.5", "1.0", "2.0", "1.5", None], name
        cfg = DatasetConfig(dir=str(tmp_path), labels=name, image_column=None,
                            image_template="images/{id}.png",
                            tasks=(TaskConfig("code", "code", classes=("3", "7")),),
                            feature_columns={"ratio": "numeric"})
        results[name] = clean(cfg, CLEAN)
    first = results["labels.csv"]
    # Row 2 has no id, row 3 no label; "0.0" would have named a file that does not exist.
    assert sorted(first.manifest["id"]) == ["0", "1", "4"]
    assert list(first.manifest["code"]) == ["3", "7", "3"]
    assert first.label_issues.empty
    for name, result in results.items():
        pd.testing.assert_frame_equal(result.manifest, first.manifest, obj=name)
        pd.testing.assert_frame_equal(result.rejects, first.rejects, obj=name)


# (d) ----------------------------------------------------------------------------------------
def test_a_parquet_list_column_reads_as_separator_joined_labels(tmp_path: Path) -> None:
    _images(tmp_path, 4)
    tags = [["red", "blue"], None, [], ["Green", None, "red"]]
    pq.write_table(pa.table({"id": pa.array([0, 1, 2, 3]),
                             "tags": pa.array(tags, type=pa.list_(pa.string()))}),
                   tmp_path / "labels.parquet")
    frame = read_labels_table(tmp_path / "labels.parquet", {"tags": ";"})
    assert list(frame["tags"]) == ["red;blue", None, None, "Green;red"]
    # The same table as a CSV user would write it.
    pd.DataFrame({"id": [0, 1, 2, 3], "tags": ["red;blue", None, None, "Green;red"]}).to_csv(
        tmp_path / "labels.csv", index=False)
    task = TaskConfig("tags", "tags", "multilabel", separator=";")
    out = {}
    for name in ("labels.parquet", "labels.csv"):
        cfg = DatasetConfig(dir=str(tmp_path), labels=name, image_column=None,
                            image_template="images/{id}.png", tasks=(task,))
        out[name] = clean(cfg, CLEAN)
    m = out["labels.parquet"].manifest.set_index("row")
    assert m.loc[0, "tags"] == "blue;red" and m.loc[3, "tags"] == "Green;red"
    pd.testing.assert_frame_equal(out["labels.parquet"].manifest, out["labels.csv"].manifest)
    pd.testing.assert_frame_equal(out["labels.parquet"].rejects, out["labels.csv"].rejects)


def test_a_parquet_list_column_that_cannot_be_read_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"id": [0, 1], "colours": pa.array([["a", "b"], ["c"]])}), path)
    with pytest.raises(DataError, match="column 'colours' holds lists"):
        read_labels_table(path)  # not a multilabel task column: no separator to join with
    _images(tmp_path, 2)
    cfg = DatasetConfig(dir=str(tmp_path), labels="labels.parquet", image_column=None,
                        image_template="images/{id}.png", tasks=(TaskConfig("colours", "colours"),))
    with pytest.raises(DataError, match="column 'colours' holds lists"):
        clean(cfg, CLEAN)
    pq.write_table(pa.table({"id": [0], "tags": pa.array([["a|b", "c"]])}), path)
    with pytest.raises(DataError, match=r"column 'tags'.*'a\|b' contains the task's separator"):
        read_labels_table(path, {"tags": "|"})


# (e) ----------------------------------------------------------------------------------------
def test_float32_values_read_as_their_shortest_text_like_the_csv(tmp_path: Path) -> None:
    _images(tmp_path, 4)
    table = pd.DataFrame({"id": [0, 1, 2, 3],
                          "w": np.array([0.1, 2.5, np.nan, 1e-3], dtype=np.float32),
                          "size": np.array([0.3, 1.0, 7.25, np.nan], dtype=np.float32)})
    table.to_parquet(tmp_path / "labels.parquet", index=False)
    table.to_csv(tmp_path / "labels.csv", index=False)
    frame = read_labels_table(tmp_path / "labels.parquet")
    assert list(frame["w"]) == ["0.1", "2.5", None, "0.001"]
    assert list(frame["size"]) == ["0.3", "1.0", "7.25", None]
    out = {}
    for name in ("labels.parquet", "labels.csv"):
        cfg = DatasetConfig(dir=str(tmp_path), labels=name, image_column=None,
                            image_template="images/{id}.png",
                            tasks=(TaskConfig("w", "w", "regression"),),
                            feature_columns={"size": "numeric"})
        out[name] = clean(cfg, CLEAN)
    m = out["labels.parquet"].manifest.set_index("row")
    assert m.loc[0, "w"] == 0.1 and m.loc[0, "src__size"] == "0.3"
    pd.testing.assert_frame_equal(out["labels.parquet"].manifest, out["labels.csv"].manifest)
