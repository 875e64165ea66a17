"""The select stage: vocabularies, dropped tasks, splits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mtl.config import DatasetConfig, SelectConfig, TaskConfig
from mtl.data.io import DataError
from mtl.data.select import build_vocabulary, select
from mtl.schema import TaskKind


def _manifest(n: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "row": range(n), "id": [f"s{i}" for i in range(n)],
        "image": [f"images/{i}.png" for i in range(n)],
        "digit": [str(v) for v in rng.integers(0, 11, n)],
        "const": ["same"] * n,
        "price": rng.normal(50, 10, n),
        "flag": [["0", "1"][v] for v in rng.integers(0, 2, n)],
    })


DATASET = DatasetConfig(dir=".", labels="labels.csv", tasks=(
    TaskConfig("digit", "digit", "multiclass"), TaskConfig("const", "const", "multiclass"),
    TaskConfig("price", "price", "regression"), TaskConfig("flag", "flag", "binary")))


def test_vocabulary_sorts_numbers_numerically() -> None:
    assert build_vocabulary(pd.Series(["10", "9", "2", None])) == ("2", "9", "10")
    assert build_vocabulary(pd.Series(["b", "a"])) == ("a", "b")


def test_select_drops_unlearnable_task_and_encodes_targets() -> None:
    result = select(_manifest(), DATASET, SelectConfig())
    names = [t.name for t in result.tasks]
    assert names == ["digit", "price", "flag"]
    assert result.report["tasks"]["const"]["kept"] is False
    assert "1 class" in result.report["tasks"]["const"]["reason"]
    digit = next(t for t in result.tasks if t.name == "digit")
    assert digit.classes[-1] == "10"
    train = result.splits["train"]
    assert train["digit"].dtype == np.float32
    # Regression targets are standardised with train statistics.
    assert abs(float(train["price"].mean())) < 1e-5
    assert abs(float(train["price"].std(ddof=0)) - 1) < 1e-4


def test_split_is_seeded_stratified_and_complete() -> None:
    cfg = SelectConfig(seed=3, val_fraction=0.2, test_fraction=0.2, stratify="digit")
    a = select(_manifest(200), DATASET, cfg)
    b = select(_manifest(200), DATASET, cfg)
    ids = {s: set(f["id"]) for s, f in a.splits.items()}
    assert sum(len(v) for v in ids.values()) == 200
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])
    assert ids == {s: set(f["id"]) for s, f in b.splits.items()}
    c = select(_manifest(200), DATASET, replace(cfg, seed=4))
    assert ids != {s: set(f["id"]) for s, f in c.splits.items()}


def test_data_split_column_is_used() -> None:
    m = _manifest(30)
    m["split"] = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    result = select(m, DATASET, SelectConfig())
    assert result.report["split_source"] == "data"
    assert result.report["split_sizes"] == {"train": 20, "val": 5, "test": 5}


def test_missing_labels_stay_missing() -> None:
    m = _manifest(50)
    m.loc[:9, "digit"] = None
    result = select(m, DATASET, SelectConfig())
    total_nan = sum(int(f["digit"].isna().sum()) for f in result.splits.values())
    assert total_nan == 10


def test_no_learnable_task_is_a_clear_error() -> None:
    only_const = replace(DATASET, tasks=(TaskConfig("const", "const", "multiclass"),))
    with pytest.raises(DataError, match="no task can be learned"):
        select(_manifest(), only_const, SelectConfig())


def test_schema_round_trips() -> None:
    from mtl.schema import TaskSchema

    result = select(_manifest(), DATASET, SelectConfig())
    again = tuple(TaskSchema.from_dict(d) for d in result.schema["tasks"])
    assert again == result.tasks
    assert again[2].kind is TaskKind.BINARY
