"""Multilabel tasks through clean and select: normalised tags, vocabulary, multi-hot targets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from mtl.config import CleanConfig, SelectConfig, TaskConfig
from mtl.data.clean import clean
from mtl.data.select import select
from mtl.schema import TaskKind
from mtl.splits import target_array as _target_array


def test_multilabel_cells_become_multi_hot_targets(make_dataset) -> None:  # type: ignore[no-untyped-def]
    cfg, root = make_dataset(n=8)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    table["tags"] = ["Red | blue", "red", "", "blue|BLUE", "green|red", "red|purple",
                     "blue", "green"]
    table.to_csv(root / "labels.csv", index=False)
    task = TaskConfig("tags", "tags", "multilabel", casefold=True,
                      classes=("red", "blue", "green"))
    cfg = replace(cfg, tasks=(*cfg.tasks, task))
    cleaned = clean(cfg, CleanConfig(min_size=4, workers=1))
    by_row = cleaned.manifest.set_index("row")["tags"]
    assert by_row[0] == "blue|red" and by_row[3] == "blue" and pd.isna(by_row[2])
    assert by_row[5] == "red"  # 'purple' is not declared: dropped, with an issue
    issues = cleaned.label_issues
    assert list(issues[issues["task"] == "tags"]["reason"]) == ["undeclared_class"]

    result = select(cleaned.manifest, cfg, SelectConfig(val_fraction=0.2, test_fraction=0.2))
    schema = next(t for t in result.tasks if t.name == "tags")
    assert schema.kind is TaskKind.MULTILABEL and schema.classes == ("blue", "green", "red")
    everything = pd.concat(result.splits.values())
    rows = dict(zip(everything["row"], everything["tags"], strict=True))
    assert list(rows[0]) == [1.0, 0.0, 1.0] and rows[2] is None
    targets = _target_array(everything["tags"], schema)
    assert targets.shape == (8, 3) and np.isnan(targets).all(axis=1).sum() == 1
