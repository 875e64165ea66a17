"""clean + select on the real Fashion Product Images subset (skipped when it is absent)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from mtl.config import load_params
from tests.conftest import FASHION_DIR, REPO_ROOT

pytestmark = [
    pytest.mark.fashion,
    pytest.mark.skipif(not (FASHION_DIR / "styles.csv").is_file(),
                       reason=f"Fashion data not found at {FASHION_DIR}"),
]


@pytest.fixture(scope="module")
def fashion() -> tuple[Any, Any, Any]:
    from mtl.data.clean import clean
    from mtl.data.select import select

    params = load_params(REPO_ROOT / "configs" / "fashion-product.yaml")
    ds = params.dataset
    ds = type(ds)(**{**ds.__dict__, "dir": str(FASHION_DIR)})  # independent of the cwd
    cleaned = clean(ds, params.clean)
    return ds, cleaned, select(cleaned.manifest, ds, params.select)


def test_every_raw_row_is_accounted_for(fashion: tuple[Any, Any, Any]) -> None:
    _, cleaned, _ = fashion
    raw = pd.read_csv(FASHION_DIR / "styles.csv", dtype=str)
    rows = sorted(list(cleaned.manifest["row"]) + list(cleaned.rejects["row"]))
    assert rows == list(range(len(raw)))
    assert cleaned.report["raw_rows"] == len(raw)
    assert sum(cleaned.report["rejects_by_reason"].values()) == len(cleaned.rejects)


def test_duplicates_and_hierarchy_are_reported(fashion: tuple[Any, Any, Any]) -> None:
    _, cleaned, _ = fashion
    rep = cleaned.report
    assert rep["rejects_by_reason"].get("duplicate_image", 0) > 0
    assert rep["rejects_by_reason"].get("conflicting_duplicate", 0) > 0
    assert rep["duplicates"]["near_duplicate_groups"] > 0
    hier = rep["hierarchy"]["articleType -> subCategory"]
    assert hier["violating_child_values"] > 0  # e.g. Sandals under both Sandal and Shoes
    assert hier["action"] == "majority"
    # After relabelling, every articleType has exactly one subCategory.
    m = cleaned.manifest
    assert m.dropna(subset=["articleType", "subCategory"]).groupby("articleType")[
        "subCategory"].nunique().max() == 1


def test_rare_classes_tasks_and_leakage(fashion: tuple[Any, Any, Any]) -> None:
    _, _, selected = fashion
    tasks = selected.report["tasks"]
    assert {t.name for t in selected.tasks} == {
        "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season",
        "usage", "year"}
    assert tasks["articleType"]["rare_classes"]["merged_into"] == "other"
    assert "Sporting Goods" in tasks["masterCategory"]["rare_classes"]["classes"]
    leak = [d for d in selected.report["features"]["decisions"]
            if d["feature"] == "productDisplayName"]
    assert leak and leak[0]["reason"] == "target_leak"
    assert "gender" in leak[0]["leaked_tasks"]


def test_no_near_duplicate_group_spans_two_splits(fashion: tuple[Any, Any, Any]) -> None:
    _, cleaned, selected = fashion
    where = {r: s for s, f in selected.splits.items() for r in f["row"]}
    m = cleaned.manifest
    assert len(where) == len(m)
    spans = m.assign(split=m["row"].map(where)).groupby("group")["split"].nunique()
    assert spans.max() == 1
    assert selected.report["groups"]["groups_across_splits"] == 0
    counts = selected.report["class_counts"]["gender"]
    assert all(counts[s]["Women"] > 0 for s in ("train", "val", "test"))
