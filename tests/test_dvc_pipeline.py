"""End to end through real DVC: the project's dvc.yaml and params.yaml on a tiny MultiMNIST."""

from __future__ import annotations

import json
import math
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


def _status(project: Path) -> list[str]:
    return sorted(json.loads(run_ok([*DVC, "status", "--json"], project).strip().splitlines()[-1]))


def _set(project: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


BASELINES = ["baseline@task0", "baseline@task1"]  # one per entry of dataset.tasks


def test_repro_cache_and_param_granularity(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    first = run_ok([*DVC, "repro"], project)
    ran = _ran(first)
    assert ran[:4] == ["ingest", "clean", "select", "augment"] and ran[-1] == "evaluate"
    # each baseline its own stage; teach (train.distill, off) between them and train
    assert sorted(ran[4:-1]) == sorted(["train", "teach", *BASELINES])
    assert max(ran.index(b) for b in BASELINES) < ran.index("teach") < ran.index("train")
    from mtl.distill import disabled_marker

    marker = project / "data/teachers/teachers.json"
    assert marker.read_bytes() == disabled_marker()
    assert sorted(p.name for p in marker.parent.iterdir()) == ["teachers.json"]
    metrics = json.loads((project / "metrics/eval.json").read_text())
    for task in ("left", "right"):
        m = metrics[task]
        assert m["n"] == 200
        assert m["accuracy"] > 0.3, metrics  # chance is 0.1
        assert m["stl"]["n"] == 200 and m["stl"]["accuracy"] > 0.3, metrics
        assert (m["delta_metric"], m["higher_is_better"]) == ("accuracy", True)
        assert m["delta_pct"] == pytest.approx(
            (m["accuracy"] - m["stl"]["accuracy"]) / m["stl"]["accuracy"] * 100)
    assert math.isfinite(metrics["delta_m"])
    assert metrics["delta_m"] == pytest.approx(
        (metrics["left"]["delta_pct"] + metrics["right"]["delta_pct"]) / 2)
    report = (project / "reports/report.md").read_text()
    assert report.startswith("# mtl report") and "## Did multi-task help?" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"figures/training_curves.png", "figures/task_weights.png", "figures/delta.png",
            "figures/confusion_left.png"} <= set(links)
    for link in links:  # PNG files next to the report
        assert (project / "reports" / link).read_bytes()[:4] == b"\x89PNG", link
    assert (project / "data/augmented/preview.png").is_file()
    assert (project / "plots/confusion_left.csv").is_file()
    shown = run_ok([*DVC, "metrics", "show", "--json"], project)
    assert "accuracy" in shown and "delta_m" in shown
    import torch

    ckpt = torch.load(project / "models/model.pt", weights_only=True)  # no pickle needed
    assert {t["name"] for t in ckpt["schema"]["tasks"]} == {"left", "right"}
    for task in ("left", "right"):
        b = torch.load(project / f"models/baselines/{task}.pt", weights_only=True)
        assert [t["name"] for t in b["schema"]["tasks"]] == [task]

    # Nothing changed: nothing reruns.
    second = run_ok([*DVC, "repro"], project)
    assert _ran(second) == []

    # A multi-task setting: train is stale, no baseline; repro reruns train and evaluate.
    _set(project, "train", "weighting", "uncertainty")
    assert _status(project) == ["train"]
    third = run_ok([*DVC, "repro"], project)
    assert _ran(third) == ["train", "evaluate"]

    # A shared setting (the learning rate) is read by the baselines too.
    lr = yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"]
    _set(project, "train", "lr", lr / 2)
    assert _status(project) == sorted(["train", *BASELINES])

    # Baselines off: nothing is trained for them, eval.json has no delta_m.
    _set(project, "train", "lr", lr)
    _set(project, "evaluate", "baselines", False)
    assert _status(project) == sorted([*BASELINES, "evaluate"])
    fourth = run_ok([*DVC, "repro"], project)
    # The retrained baselines rerun teach, whose marker is byte-identical with distillation
    # off: train stays cached (it depends on the baselines only when distillation is on).
    assert sorted(_ran(fourth)) == sorted([*BASELINES, "teach", "evaluate"])
    assert "train" not in _ran(fourth)
    assert marker.read_bytes() == disabled_marker()
    assert "skipped (evaluate.baselines is false)" in fourth
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert "delta_m" not in metrics and "stl" not in metrics["left"]


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
