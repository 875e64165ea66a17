"""Issue 9, second pass: the gaps an independent review found after defects 1-15 were fixed.

(a) a one-to-one code of a label on few rows, (b) id ownership after whole-dataset rejects,
(c) whole numbers written as ``N.0``, (d) Parquet list columns, (e) float32 values,
(f) the column checks linear in the number of columns. Each test failed on the code before
its fix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl.config import CleanConfig, DatasetConfig, SelectConfig, TaskConfig
from mtl.data import features
from mtl.data.clean import clean
from mtl.data.features import TaskTarget, one_to_one, select_features
from mtl.data.io import DataError, duplicate_names, read_labels_table
from mtl.schema import TaskKind
from tests.conftest import noise_images, write_png

MakeTable = Callable[..., tuple[DatasetConfig, Path]]
CLEAN = CleanConfig(mode="L", min_size=4, workers=1)


_images = noise_images


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


def test_a_row_that_loses_its_id_still_counts_as_a_copy_of_its_image(
        make_table: MakeTable) -> None:
    """Row 1 (id "b") has row 0's pixels with another label: both are conflicting duplicates.
    Row 2 takes the id "b", but row 1's label still says what that image shows, so row 0
    stays a conflicting duplicate instead of being kept with a contested label."""
    rows = [{"id": "a", "pixels": 1, "c": "x"},
            {"id": "b", "pixels": 1, "c": "y"},
            {"id": "b", "image": "images/b2.png", "c": "x"}]
    cfg, root = make_table(rows, tasks=(TaskConfig("c", "c"),))
    write_png(root / "images" / "b2.png", np.full((16, 16), 200, np.uint8))
    result = clean(cfg, CLEAN)  # conflicting_duplicates: reject
    _ledger(result, 3)
    assert list(result.manifest["row"]) == [2]
    rej = result.rejects.set_index("row")
    assert rej.loc[0, "reason"] == "conflicting_duplicate", rej.loc[0, "detail"]
    assert "'b' (row 1)" in rej.loc[0, "detail"]
    assert rej.loc[1, "reason"] == "duplicate_id" and "belongs to row 2" in rej.loc[1, "detail"]
    assert "conflicting_duplicate" in rej.loc[1, "detail"]
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


# (a) ----------------------------------------------------------------------------------------
def _source(sel: Any, name: str) -> dict[str, Any]:
    (d,) = [d for d in sel.decisions if d["feature"] == name and d["level"] == "source"]
    return d


@pytest.mark.parametrize("per_class,classes", [(2, 30), (2, 4), (3, 12)])
def test_a_one_to_one_code_of_a_label_is_a_leak_on_few_rows(per_class: int,
                                                            classes: int) -> None:
    n = per_class * classes  # 60, 8 and 36 rows: too few for an out-of-fold score to see it
    rng = np.random.default_rng(classes)
    y = rng.permutation(np.repeat(np.arange(classes), per_class))
    relabel = rng.permutation(1000)[:classes]  # class k -> an arbitrary number / word
    noisy = np.where(rng.random(n) < 0.7, y, rng.integers(0, classes, n))
    assert (noisy != y).any()
    train = pd.DataFrame({
        "code": [str(relabel[v]) for v in y],  # numeric, an exact relabelling
        "name": [f"kind-{relabel[v]}" for v in y],  # categorical, an exact relabelling
        "noisy": [f"kind-{relabel[v]}" for v in noisy],  # informative, not one-to-one
    })
    task = TaskTarget("y", TaskKind.MULTICLASS, y.astype(np.float64))
    sel = select_features(train, {"code": "numeric", "name": "categorical",
                                  "noisy": "categorical"}, [task], SelectConfig())
    for leak in ("code", "name"):
        d = _source(sel, leak)
        assert d["reason"] == "target_leak" and d["one_to_one"] == ["y"], d
        assert "one-to-one code of task(s) ['y']" in d["detail"]
    assert _source(sel, "noisy")["reason"] != "target_leak", _source(sel, "noisy")


def test_one_to_one_counts_only_where_values_repeat() -> None:
    """The same threshold splits the two rules: a column whose values are mostly distinct is
    trivially one-to-one with a label as distinct, which is identifier-like, not a leak."""
    y = np.arange(20, dtype=np.float64)  # every row its own class
    task = TaskTarget("y", TaskKind.MULTICLASS, y)
    unique = np.arange(20)
    assert not one_to_one(unique, task, max_unique_ratio=0.9)
    repeated = TaskTarget("y", TaskKind.MULTICLASS, y // 2)  # two rows per class
    assert one_to_one(unique // 2, repeated, max_unique_ratio=0.9)  # 50 % distinct
    assert not one_to_one(unique // 2, repeated, max_unique_ratio=0.5)
    codes = unique // 2
    codes[3] = codes[4]  # one row breaks the one-to-one mapping
    assert not one_to_one(codes, repeated, max_unique_ratio=0.9)
    missing = unique // 2
    missing[[0, 5]] = -1  # missing feature cells are left out, not a value of their own
    assert one_to_one(missing, repeated, max_unique_ratio=0.9)
    # A multilabel task: a code of one of its labels is one-to-one with that label.
    hot = np.stack([y % 2, (y // 2) % 2], axis=1)  # [20, 2]
    tags = TaskTarget("t", TaskKind.MULTILABEL, hot)
    assert one_to_one((unique // 2) % 2 + 7, tags, max_unique_ratio=0.9)
    ids = pd.DataFrame({"ref": [f"r{i:03d}" for i in range(20)]})
    sel = select_features(ids, {"ref": "categorical"}, [task], SelectConfig())
    assert _source(sel, "ref")["reason"] == "identifier_like"


# (f) ----------------------------------------------------------------------------------------
class _CountingName(str):
    """A column name that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _CountingName.compared += 1
        return str.__eq__(self, other)

    def __lt__(self, other: str) -> bool:
        _CountingName.compared += 1
        return str.__lt__(self, other)

    __hash__ = str.__hash__


def test_duplicate_column_names_are_found_with_a_linear_number_of_comparisons() -> None:
    names = [_CountingName(f"c{j}") for j in range(2000)]
    names[1500] = _CountingName("c7")
    _CountingName.compared = 0
    assert duplicate_names(names) == ["c7"]
    # A pairwise check (names.count(c) for each c) makes ~4,000,000 comparisons; a hash table
    # compares only names with equal hashes (sorting would make ~22,000).
    assert _CountingName.compared <= 2 * len(names), _CountingName.compared


def test_duplicate_features_are_found_by_one_content_key_per_column(
        monkeypatch: pytest.MonkeyPatch) -> None:
    n, sources = 40, 60  # under 50 rows: no k-NN leak model, so the test stays quick
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, n)
    base = rng.normal(size=(n, sources // 2)) + y[:, None] * 0.3
    train = pd.DataFrame({f"x{j}": [f"{v:.4f}" for v in base[:, j % (sources // 2)]]
                          for j in range(sources)})  # x{j + 30} is a copy of x{j}
    calls: list[int] = []
    real_key = features.column_key

    def counting_key(x: np.ndarray) -> bytes:
        calls.append(len(x))
        return real_key(x)

    monkeypatch.setattr(features, "column_key", counting_key)
    sel = select_features(train, dict.fromkeys(train.columns, "numeric"),
                          [TaskTarget("y", TaskKind.BINARY, y.astype(np.float64))],
                          SelectConfig(max_features=sources, max_correlation=1.0))
    ranked = [d for d in sel.decisions if d["level"] == "feature" and "rank" in d]
    reasons = Counter(d["reason"] for d in ranked)
    assert reasons == {"top_k": sources // 2, "duplicate": sources // 2}, reasons
    # One key per ranked column: a pairwise comparison would need ~F²/2 of them (or none).
    assert len(calls) == len(ranked) == sources
