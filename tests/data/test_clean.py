"""The clean stage: contract validation, every reject reason, and the nothing-lost invariant."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtl.config import CleanConfig, TaskConfig
from mtl.data.clean import clean, normalise_split
from mtl.data.io import DataError
from tests.conftest import write_png


def _accounts_for_every_row(result, n_raw: int) -> None:  # type: ignore[no-untyped-def]
    rows = sorted(list(result.manifest["row"]) + list(result.rejects["row"]))
    assert rows == list(range(n_raw))


def test_clean_keeps_good_rows(make_dataset, clean_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = make_dataset(n=20)
    result = clean(cfg, clean_cfg)
    assert len(result.manifest) == 20
    assert result.rejects.empty
    assert set(result.manifest["a"]) <= {"cat", "dog", "eel"}
    assert set(result.manifest["b"]) <= {"0", "1"}  # binary spellings normalised
    assert result.report["raw_rows"] == 20


def test_bad_inputs_are_rejected_with_reasons(make_dataset, clean_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, root = make_dataset(n=12)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    before = {p: p.read_bytes() for p in (root / "images").iterdir()}

    good = (root / "images" / "0000.png").read_bytes()
    # A real PNG header with its compressed pixel data overwritten.
    corrupt = good[:60] + bytes(255 - b for b in good[60:-20]) + good[-20:]
    (root / "images" / "corrupt.png").write_bytes(corrupt)
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "truncated.png").write_bytes(good[: len(good) // 2])
    outside = tmp_path / "outside.png"
    write_png(outside, np.full((16, 16), 7, np.uint8))
    os.symlink(outside, root / "images" / "link.png")
    write_png(root / "images" / "tiny.png", np.zeros((2, 2), np.uint8))
    (root / "images" / "text.png").write_text("hello")
    extra = [
        ("x-corrupt", "images/corrupt.png", "cat", "yes"),
        ("x-empty", "images/empty.png", "cat", "yes"),
        ("x-missing", "images/nope.png", "cat", "yes"),
        ("x-escape", "../outside.png", "cat", "yes"),
        ("x-symlink", "images/link.png", "cat", "yes"),
        ("s0001", "images/0002.png", "dog", "no"),  # duplicate id
        ("x-nolabels", "images/0003.png", None, None),
        ("x-truncated", "images/truncated.png", "cat", "yes"),
        ("x-dup-image", "images/0004.png", table.loc[4, "a"], table.loc[4, "b"]),  # = s0004
        ("x-tiny", "images/tiny.png", "cat", "yes"),
        ("x-text", "images/text.png", "cat", "yes"),
        (None, "images/0005.png", "cat", "yes"),
        ("x-nopath", None, "cat", "yes"),
        ("x-abs", str(outside), "cat", "yes"),
    ]
    table = pd.concat([table, pd.DataFrame(extra, columns=["id", "image", "a", "b"])],
                      ignore_index=True)
    table.to_csv(root / "labels.csv", index=False)

    result = clean(cfg, clean_cfg)
    reasons = dict(zip(result.rejects["row"], result.rejects["reason"], strict=True))
    expected = {
        12: "unreadable_image", 13: "empty_file", 14: "missing_file",
        15: "path_outside_dataset", 16: "path_outside_dataset", 17: "duplicate_id",
        18: "no_labels", 19: "truncated_image", 20: "duplicate_image", 21: "too_small",
        22: "not_an_image", 23: "missing_id", 24: "missing_path", 25: "path_outside_dataset",
    }
    assert reasons == expected
    assert all(result.rejects["detail"].str.len() > 0)
    _accounts_for_every_row(result, len(table))
    assert result.report["rejected_rows"] == len(expected)
    # Raw data is never modified.
    assert {p: p.read_bytes() for p in before} == before


def test_missing_columns_are_reported_together(make_dataset, clean_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = make_dataset(n=3)
    bad = replace(cfg, tasks=(TaskConfig("a", "colour", "multiclass"),
                              TaskConfig("z", "size", "regression")), id_column="key")
    with pytest.raises(DataError) as err:
        clean(bad, clean_cfg)
    msg = str(err.value)
    assert "'colour'" in msg and "'size'" in msg and "'key'" in msg and "labels.csv" in msg


def test_regression_label_that_is_not_a_number_becomes_missing(make_dataset, clean_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg, root = make_dataset(n=4)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    table["year"] = ["2011", "twenty", "", "2013"]
    table.to_csv(root / "labels.csv", index=False)
    cfg = replace(cfg, tasks=(*cfg.tasks, TaskConfig("year", "year", "regression")))
    result = clean(cfg, clean_cfg)
    assert len(result.manifest) == 4
    assert result.manifest["year"].isna().sum() == 2
    assert list(result.label_issues["reason"]) == ["not_a_number"]
    assert result.report["label_issues_by_task"] == {"year": {"not_a_number": 1}}


def test_split_column_is_normalised_and_bad_values_rejected(make_dataset, clean_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg, root = make_dataset(n=5, split=True)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    table.loc[0, "split"] = "Training"
    table.loc[1, "split"] = "holdout"
    table.to_csv(root / "labels.csv", index=False)
    result = clean(cfg, clean_cfg)
    assert result.manifest.set_index("row").loc[0, "split"] == "train"
    assert list(result.rejects["reason"]) == ["bad_split"]
    assert normalise_split(" Validation ") == "val"


def test_colour_modes_are_converted(make_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, root = make_dataset(n=3)
    Image.new("RGBA", (16, 16), (10, 200, 30, 0)).save(root / "images" / "0000.png")
    Image.new("CMYK", (16, 16), (0, 0, 0, 255)).save(root / "images" / "0001.jpg")
    table = pd.read_csv(root / "labels.csv", dtype=str)
    table.loc[1, "image"] = "images/0001.jpg"
    table.to_csv(root / "labels.csv", index=False)
    result = clean(cfg, CleanConfig(mode="RGB", min_size=4, workers=1))
    assert sorted(result.manifest["source_mode"]) == ["CMYK", "L", "RGBA"]


def test_parallel_decoding_matches_serial(make_dataset) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = make_dataset(n=300)
    serial = clean(cfg, CleanConfig(mode="L", min_size=4, workers=1))
    parallel = clean(cfg, CleanConfig(mode="L", min_size=4, workers=2))
    pd.testing.assert_frame_equal(serial.manifest, parallel.manifest)


def test_missing_dataset_dir_is_a_clear_error(make_dataset, clean_cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = make_dataset(n=1)
    with pytest.raises(DataError, match=r"dataset\.dir"):
        clean(replace(cfg, dir=str(tmp_path / "nowhere")), clean_cfg)
