"""Issue 9, second pass: the gaps an independent review found after defects 1-15 were fixed.

(a) a one-to-one code of a label on few rows, (b) id ownership after whole-dataset rejects,
(c) whole numbers written as ``N.0``, (d) Parquet list columns, (e) float32 values,
(f) the column checks linear in the number of columns. Each test failed on the code before
its fix.
"""

from __future__ import annotations

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

CLEAN = CleanConfig(mode="L", min_size=4, workers=1)


def _images(root: Path, n: int) -> None:
    for i in range(n):
        rng = np.random.default_rng(i)
        write_png(root / "images" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))


def _ledger(result: Any, n: int) -> None:
    assert sorted([*result.manifest["row"], *result.rejects["row"]]) == list(range(n))


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
