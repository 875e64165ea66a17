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


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    import torch

    project = make_project(tmp_path / "proj", {"train": {"epochs": 1}})
    run_ok([*DVC, "repro", "train"], project)
    ckpt = torch.load(project / "models/model.pt", weights_only=True)
    assert {t["name"] for t in ckpt["schema"]["tasks"]} == {"left", "right"}
    assert any(k.endswith("weight") for k in ckpt["state_dict"])
