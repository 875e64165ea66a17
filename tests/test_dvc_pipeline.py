"""End to end through real DVC: the project's dvc.yaml and params.yaml on a tiny MultiMNIST."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, run_ok

pytestmark = pytest.mark.slow

DVC = [sys.executable, "-m", "dvc"]


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_repro_cache_and_param_granularity(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    first = run_ok([*DVC, "repro"], project)
    assert _ran(first) == ["ingest", "clean", "select", "augment", "train", "evaluate"]
    metrics = json.loads((project / "metrics/eval.json").read_text())
    for task in ("left", "right"):
        assert metrics[task]["n"] == 200
        assert metrics[task]["accuracy"] > 0.3, metrics  # chance is 0.1
    assert (project / "reports/report.md").read_text().startswith("# mtl report")
    assert (project / "data/augmented/preview.png").is_file()
    assert (project / "plots/confusion_left.csv").is_file()
    shown = run_ok([*DVC, "metrics", "show", "--json"], project)
    assert "accuracy" in shown
    import torch

    ckpt = torch.load(project / "models/model.pt", weights_only=True)  # no pickle needed
    assert {t["name"] for t in ckpt["schema"]["tasks"]} == {"left", "right"}

    # Nothing changed: nothing reruns.
    second = run_ok([*DVC, "repro"], project)
    assert _ran(second) == []

    # A train.* change: only train is stale; repro reruns exactly train and evaluate.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run_ok([*DVC, "status", "--json"], project).strip().splitlines()[-1])
    assert list(status) == ["train"]
    third = run_ok([*DVC, "repro"], project)
    assert _ran(third) == ["train", "evaluate"]


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
    assert "ingest" not in _ran(out)  # nothing depends on the default dataset
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert set(metrics) == {"kind", "sale", "price", "tags"}
    assert {"mae", "rmse"} <= set(metrics["price"]) and "micro_f1" in metrics["tags"]
    import torch

    ckpt = torch.load(project / "models/model.pt", weights_only=True)
    assert [t["kind"] for t in ckpt["schema"]["tasks"]] == [
        "multiclass", "binary", "regression", "multilabel"]
