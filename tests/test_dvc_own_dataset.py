"""End to end through real DVC: a dataset of one's own, declared in params.yaml only.

Split from test_dvc_pipeline.py (the MultiMNIST run) so that `make test`, which keeps a file on
one worker, runs the two long end-to-end tests on different workers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import DVC, make_project, ran_stages, run_ok

pytestmark = pytest.mark.slow(seconds=180)


def test_own_dataset_by_editing_params_only(tmp_path: Path) -> None:
    """A folder of images + a labels table with its own columns, declared in params.yaml."""
    import numpy as np
    import pandas as pd

    from tests.conftest import write_png

    rng = np.random.default_rng(0)
    data = tmp_path / "shop"
    rows = []
    for i in range(90):
        kind, sale = int(rng.integers(0, 3)), int(rng.integers(0, 2))
        img = rng.integers(0, 40, (20, 20, 3), dtype=np.uint8)
        img[:10, :, kind] += 150  # the colour channel carries the label
        img[10:, :, :] += np.uint8(80 * sale)
        write_png(data / "pics" / f"p{i}.png", img)
        rows.append({"sku": f"p{i}", "kind": ["hat", "bag", "shoe"][kind],
                     "on_sale": ["no", "yes"][sale], "price": f"{10 + 5 * kind + rng.normal():.2f}",
                     "tags": "|".join(t for t, on in (("new", i % 2), ("eco", i % 3 == 0)) if on)})
    pd.DataFrame(rows).to_csv(data / "products.csv", index=False)
    project = make_project(tmp_path / "proj", {
        "dataset": {"dir": str(data), "labels": "products.csv", "id_column": "sku",
                    "image_column": None, "image_template": "pics/{id}.png",
                    "split_column": None, "tasks": [
                        {"name": "kind", "column": "kind", "kind": "multiclass"},
                        {"name": "sale", "column": "on_sale", "kind": "binary"},
                        {"name": "price", "column": "price", "kind": "regression"},
                        {"name": "tags", "column": "tags", "kind": "multilabel"}]},
        "clean": {"mode": "RGB"},
        "augment": {"image_size": [16, 16], "copies": 1},
        "train": {"epochs": 2, "batch_size": 16},
    })
    out = run_ok([*DVC, "repro", "evaluate"], project)
    assert "ingest" not in ran_stages(out)  # nothing depends on the default dataset
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert set(metrics) == {"kind", "sale", "price", "tags", "delta_m"}
    assert {"mae", "rmse", "r2"} <= set(metrics["price"]) and "micro_f1" in metrics["tags"]
    assert {"auroc", "average_precision", "ece"} <= set(metrics["sale"])
    assert "map" in metrics["tags"] and "balanced_accuracy" in metrics["kind"]
    assert [metrics[t]["delta_metric"] for t in ("kind", "sale", "price", "tags")] == [
        "accuracy", "accuracy", "mae", "micro_f1"]
    assert metrics["price"]["higher_is_better"] is False
    assert math.isfinite(metrics["delta_m"])
    import torch

    ckpt = torch.load(project / "models/model.pt", weights_only=True)
    assert [t["kind"] for t in ckpt["schema"]["tasks"]] == [
        "multiclass", "binary", "regression", "multilabel"]
