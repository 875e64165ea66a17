"""Data-quality decisions: label normalisation, hierarchies, duplicates, groups, rare classes,
coverage, and tabular feature selection (leakage, encoders re-applied exactly)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mtl.config import CleanConfig, DatasetConfig, SelectConfig, TaskConfig
from mtl.data.clean import clean
from mtl.data.dedup import join_groups, near_duplicate_groups
from mtl.data.features import FEATURE_PREFIX, apply_feature_encoders
from mtl.data.select import select
from mtl.schema import SPLITS

MakeTable = Callable[..., tuple[DatasetConfig, Path]]
CLEAN = CleanConfig(mode="L", min_size=4, workers=1)


def _rows(n: int, **cols: Callable[[int], Any]) -> list[dict[str, Any]]:
    return [{"id": f"s{i:03d}", "pixels": i, **{k: f(i) for k, f in cols.items()}}
            for i in range(n)]


def test_labels_are_normalised_and_undeclared_classes_become_missing(make_table: MakeTable,
                                                                     ) -> None:
    colours = ["Red", "red ", " RED", "Crimson", "Navy  Blue", "navy blue", "teal", "Red"]
    task = TaskConfig("colour", "colour", casefold=True, synonyms={"crimson": "Red"},
                      classes=("Red", "Navy Blue"))
    cfg, _ = make_table(_rows(8, colour=lambda i: colours[i]), tasks=(task,))
    result = clean(cfg, CLEAN)
    by_row = result.manifest.set_index("row")["colour"]
    assert list(by_row.loc[[0, 1, 2, 3, 4, 5]]) == ["Red"] * 4 + ["Navy Blue"] * 2
    assert result.rejects.set_index("row").loc[6, "reason"] == "no_labels"
    assert list(result.label_issues["reason"]) == ["undeclared_class"]
    changes = result.report["label_normalisation"]["colour"]
    assert changes["synonym"] == 1 and changes["case"] >= 3


def test_casefold_without_declared_classes_uses_the_most_frequent_spelling(
        make_table: MakeTable) -> None:
    values = ["Men", "Men", "men", "MEN", "Women", "women"]
    cfg, _ = make_table(_rows(6, g=lambda i: values[i]),
                        tasks=(TaskConfig("g", "g", casefold=True),))
    assert sorted(set(clean(cfg, CLEAN).manifest["g"])) == ["Men", "Women"]


@pytest.mark.parametrize("action", ["report", "majority", "missing", "reject"])
def test_hierarchy_violations_are_reported_and_handled(make_table: MakeTable,
                                                       action: str) -> None:
    fine = ["tshirt", "tshirt", "tshirt", "shoe", "shoe", "sandal"]
    coarse = ["top", "top", "shoes", "shoes", "shoes", "shoes"]  # row 2 violates
    cfg, _ = make_table(_rows(6, fine=lambda i: fine[i], coarse=lambda i: coarse[i]),
                        hierarchy=(("fine", "coarse"),))
    result = clean(cfg, replace(CLEAN, hierarchy_action=action))
    rep = result.report["hierarchy"]["fine -> coarse"]
    assert rep["violating_child_values"] == 1 and rep["violating_rows"] == 1
    assert rep["violations"] == {"tshirt": {"top": 2, "shoes": 1}}
    m = result.manifest.set_index("row")
    if action == "reject":
        assert result.rejects.set_index("row").loc[2, "reason"] == "hierarchy_violation"
    else:
        expected = {"report": "shoes", "majority": "top", "missing": None}[action]
        got = m.loc[2, "coarse"]
        assert (pd.isna(got) and expected is None) or got == expected
        issues = list(result.label_issues["reason"])
        assert issues == {"report": [], "majority": ["hierarchy_relabelled"],
                          "missing": ["hierarchy_violation"]}[action]


@pytest.mark.parametrize("policy", ["reject", "keep_first", "missing"])
def test_identical_images_with_conflicting_labels(make_table: MakeTable, policy: str) -> None:
    rows = _rows(5, a=lambda i: "x" if i < 3 else "y", b=lambda i: "p")
    rows[3]["pixels"] = 0  # row 3 has row 0's pixels but label y (conflict)
    rows[4]["pixels"] = 0  # row 4 too, label y
    rows[1]["pixels"] = 2  # row 1 = row 2, same labels (plain duplicate)
    cfg, _ = make_table(rows)
    result = clean(cfg, replace(CLEAN, conflicting_duplicates=policy))
    reasons = result.rejects.set_index("row")["reason"].to_dict()
    assert reasons.get(2) == "duplicate_image"
    if policy == "reject":
        assert {r: reasons[r] for r in (0, 3, 4)} == dict.fromkeys((0, 3, 4),
                                                                   "conflicting_duplicate")
    else:
        assert reasons[3] == reasons[4] == "duplicate_image"
        kept = result.manifest.set_index("row")
        if policy == "keep_first":
            assert kept.loc[0, "a"] == "x"
        else:
            assert pd.isna(kept.loc[0, "a"])
    assert result.report["duplicates"]["exact_duplicate_groups_with_conflicting_labels"] == 1


def test_near_duplicate_grouping_is_transitive_and_exact() -> None:
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, size=500, dtype=np.int64).astype(np.uint64)
    h[10] = h[3] ^ np.uint64(0b11)  # distance 2 from 3
    h[20] = h[10] ^ np.uint64(0b1100 << 40)  # distance 2 from 10, 4 from 3
    h[30] = h[4]
    g = near_duplicate_groups(h, 2)
    assert g[10] == g[20] == g[3] == 3 and g[30] == g[4] == 4
    assert len(set(g.tolist())) == 500 - 3
    assert near_duplicate_groups(h, -1).tolist() == list(range(500))
    assert join_groups([0, 0, 1, 2], [None, "p", "p", None]).tolist() == [0, 0, 0, 3]


def _near_dup_dataset(make_table: MakeTable, n_groups: int = 40,
                      group_column: bool = False) -> tuple[DatasetConfig, Path]:
    rng = np.random.default_rng(1)
    rows = []
    for g in range(n_groups):
        base = rng.integers(0, 200, size=(32, 32), dtype=np.uint8)
        for k in range(int(rng.integers(1, 4))):  # 1-3 near-identical copies
            tweak = base.copy()
            tweak[k, k] += 3  # one pixel brighter: different bytes, same perceptual hash
            rows.append({"id": f"g{g}-{k}", "pixels": tweak,
                         "a": ["cat", "dog", "eel"][g % 3],
                         "patient": f"p{g // 2}"})
    kw: dict[str, Any] = {"group_column": "patient"} if group_column else {}
    if not group_column:
        for r in rows:
            r.pop("patient")
    return make_table(rows, tasks=(TaskConfig("a", "a"),), **kw)


@pytest.mark.parametrize("group_column", [False, True])
def test_groups_never_span_two_splits(make_table: MakeTable, group_column: bool) -> None:
    cfg, _ = _near_dup_dataset(make_table, group_column=group_column)
    result = clean(cfg, replace(CLEAN, near_duplicate_distance=2))
    m = result.manifest
    assert result.rejects.empty
    expected_groups = m["id"].str.split("-").str[0]
    assert m.groupby("group")["id"].apply(lambda s: s.str.split("-").str[0].nunique()).max() == 1
    assert m["group"].nunique() == expected_groups.nunique()
    assert set(result.near_duplicates["group"]) <= set(m["group"])
    for seed in range(3):
        sel = select(m, cfg, SelectConfig(seed=seed, val_fraction=0.2, test_fraction=0.2))
        where = {r: s for s in SPLITS for r in sel.splits[s]["row"]}
        owner = m["user_group"] if group_column else m["group"]
        for _, rows in m.groupby(owner)["row"]:
            assert len({where[r] for r in rows}) == 1
        assert sel.report["groups"]["groups_across_splits"] == 0
        assert all(len(sel.splits[s]) for s in SPLITS)


def _manifest(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue", "mauve"], p=[0.45, 0.35, 0.19, 0.01], size=n)
    size = rng.choice(["s", "m", "l"], size=n)
    price = rng.normal(10, 2, n) + (size == "l") * 3
    frame = pd.DataFrame({
        "row": range(n), "id": [f"s{i}" for i in range(n)],
        "image": [f"images/{i}.png" for i in range(n)],
        "colour": list(colour), "size": list(size),
        "sparse": [None if i % 3 else "x" for i in range(n)],
        "group": range(n),
    })
    src = {
        "price": [f"{v:.3f}" for v in price],
        "price_cents": [f"{v * 100:.1f}" for v in price],  # = price, rescaled
        "sku": [f"SKU-{i:05d}" for i in range(n)],  # identifier
        "shop": ["main"] * n,  # constant
        "note": [None if i % 10 else "ok" for i in range(n)],  # 90% missing
        "colour_code": [{"red": "R1", "green": "G2", "blue": "B3", "mauve": "M4"}[c]
                        for c in colour],  # leaks colour
        "title": [f"nice {c} item number {i % 7}" for i, c in enumerate(colour)],  # text leak
        "size_word": list(size),  # leaks size
        "weight": [f"{v:.2f}" if i % 4 else None for i, v in
                   enumerate(rng.normal(1, 0.3, n) + (size == "s"))],
        "noise": [str(v) for v in rng.choice(["a", "b", "c"], size=n)],
    }
    for k, v in src.items():
        frame[FEATURE_PREFIX + k] = v
    return frame


DS = DatasetConfig(dir=".", labels="labels.csv", tasks=(
    TaskConfig("colour", "colour"), TaskConfig("size", "size"),
    TaskConfig("sparse", "sparse")))


def test_rare_classes_are_merged_or_blanked_and_low_coverage_tasks_dropped() -> None:
    m = _manifest()
    res = select(m, DS, SelectConfig(min_class_count=10, min_coverage=0.5))
    rep = res.report["tasks"]
    assert rep["sparse"]["kept"] is False and "coverage" in rep["sparse"]["reason"]
    colour = next(t for t in res.tasks if t.name == "colour")
    assert "mauve" not in colour.classes and "other" in colour.classes
    assert rep["colour"]["rare_classes"]["classes"] == {"mauve": int((m["colour"] == "mauve")
                                                                     .sum())}
    res2 = select(m, DS, SelectConfig(min_class_count=10, rare_classes="missing"))
    colour2 = next(t for t in res2.tasks if t.name == "colour")
    assert colour2.classes == ("blue", "green", "red")
    n_nan = sum(int(f["colour"].isna().sum()) for f in res2.splits.values())
    assert n_nan == int((m["colour"] == "mauve").sum())


def test_joint_stratification_balances_every_task() -> None:
    m = _manifest(600)
    res = select(m, DS, SelectConfig(stratify="all", val_fraction=0.2, test_fraction=0.2))
    # "sparse" has a single class, so it is dropped and not stratified on.
    assert res.report["split_source"].startswith("stratified on colour, size,")
    for task in ("colour", "size"):
        counts = res.report["class_counts"][task]
        for cls in ("red", "s"):
            if cls not in counts["train"]:
                continue
            total = sum(counts[s][cls] for s in SPLITS)
            assert abs(counts["test"][cls] - 0.2 * total) <= 0.05 * total + 2


def _decision(res: Any, feature: str) -> dict[str, Any]:
    d = [x for x in res.report["features"]["decisions"] if x["feature"] == feature]
    assert d, feature
    return dict(d[-1])


def test_feature_selection_decisions() -> None:
    m = _manifest()
    res = select(m, DS, SelectConfig(max_features=4, leakage_threshold=0.9))
    dec = {f: _decision(res, f) for f in ("sku", "shop", "note", "colour_code", "title",
                                          "size_word")}
    assert dec["sku"]["reason"] == "identifier_like"
    assert dec["shop"]["reason"] == "constant"
    assert dec["note"]["reason"] == "high_missing"
    assert dec["colour_code"]["reason"] == "target_leak"
    assert dec["colour_code"]["task"] == "colour"
    assert dec["title"]["reason"] == "target_leak" and dec["title"]["kind"] == "text"
    assert dec["size_word"]["reason"] == "target_leak"
    cents = _decision(res, "price_cents")
    assert cents["reason"] in ("duplicate", "correlated")
    kept = res.report["features"]["kept"]
    assert "price" in kept or "price_cents" in kept
    assert len(kept) <= 4
    for d in res.report["features"]["decisions"]:
        assert "reason" in d and "kept" in d
    # Every kept feature is a float32 f__ column in every split, listed in the schema.
    schema = json.loads(json.dumps(res.schema))
    cols = [f["column"] for f in schema["features"]]
    assert cols == [f"f__{k}" for k in kept]
    for s in SPLITS:
        assert all(res.splits[s][c].dtype == np.float32 for c in cols)


def test_feature_encoders_reproduce_the_split_columns_exactly() -> None:
    m = _manifest()
    res = select(m, DS, SelectConfig(max_features=10))
    schema = json.loads(json.dumps(res.schema))  # through JSON, as prediction reads it
    assert schema["features"], res.report["features"]
    for s in SPLITS:
        split = res.splits[s]
        raw = m.set_index("row").loc[split["row"]].reset_index()
        again = apply_feature_encoders(raw, schema["features"], prefix=FEATURE_PREFIX)
        expected = split[[f["column"] for f in schema["features"]]].to_numpy()
        assert again.dtype == np.float32
        np.testing.assert_array_equal(again, expected)
    # A raw labels table (original column names) encodes the same way.
    table = m.rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX))
    full = apply_feature_encoders(table, schema["features"])
    assert full.shape == (len(m), len(schema["features"]))


def test_no_feature_columns_keeps_the_old_behaviour(make_dataset: Callable[..., Any],
                                                    clean_cfg: CleanConfig) -> None:
    cfg, _ = make_dataset(n=30)
    res = select(clean(cfg, clean_cfg).manifest, cfg, SelectConfig())
    assert res.schema["features"] == []
    assert list(res.splits["train"].columns) == ["id", "image", "row", "a", "b"]


def test_detected_feature_columns_flow_from_clean_to_select(make_table: MakeTable) -> None:
    rows = _rows(60, a=lambda i: ["x", "y"][i % 2], price=lambda i: str(i % 7 + 0.5),
                 code=lambda i: ["X1", "Y2"][i % 2])
    cfg, _ = make_table(rows, tasks=(TaskConfig("a", "a"),), detect_features=True)
    result = clean(cfg, CLEAN)
    assert result.report["feature_columns"] == {"price": "auto", "code": "auto"}
    sel = select(result.manifest, cfg, SelectConfig())
    assert _decision(sel, "code")["reason"] == "target_leak"
    assert sel.report["features"]["sources"] == {"price": "auto", "code": "auto"}
