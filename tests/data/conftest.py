"""Fixtures for the data-stage tests: tiny tables written next to generated images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mtl.config import DatasetConfig, TaskConfig
from tests.conftest import write_png


@pytest.fixture
def make_table(tmp_path: Path) -> Callable[..., tuple[DatasetConfig, Path]]:
    """Factory: write ``rows`` (dicts) as labels.csv; each row's ``pixels`` (seed int or array)
    becomes ``images/<id>.png`` unless the row gives its own ``image``.

    Tasks default to every column other than id/image (multiclass); pass ``tasks`` to override
    and any other ``DatasetConfig`` field as a keyword.
    """

    def make(rows: list[dict[str, Any]], tasks: tuple[TaskConfig, ...] | None = None,
             name: str = "tbl", size: int = 16, **kwargs: Any) -> tuple[DatasetConfig, Path]:
        root = tmp_path / name
        (root / "images").mkdir(parents=True, exist_ok=True)
        table = []
        for r in rows:
            r = dict(r)
            pixels = r.pop("pixels", None)
            if "image" not in r:
                r["image"] = f"images/{r['id']}.png"
                if isinstance(pixels, np.ndarray):
                    arr = pixels
                else:
                    rng = np.random.default_rng(int(pixels if pixels is not None else
                                                    abs(hash(r["id"])) % 2**31))
                    arr = rng.integers(0, 255, size=(size, size), dtype=np.uint8)
                write_png(root / r["image"], arr)
            table.append(r)
        frame = pd.DataFrame(table)
        frame.to_csv(root / "labels.csv", index=False)
        if tasks is None:
            reserved = {"id", "image", "split", kwargs.get("group_column"),
                        *kwargs.get("feature_columns", {})}
            tasks = tuple(TaskConfig(c, c, "multiclass") for c in frame.columns
                          if c not in reserved)
        cfg = DatasetConfig(dir=str(root), labels="labels.csv", tasks=tasks, **kwargs)
        return cfg, root

    return make
