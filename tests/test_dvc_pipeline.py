"""End to end through real DVC: the project's dvc.yaml and params.yaml on a tiny MultiMNIST.

The other end-to-end DVC test (a dataset of one's own) is in test_dvc_own_dataset.py: one long
test per file, so `make test` (a file per worker) runs them on different workers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import DVC, make_project, ran_stages, run_ok

pytestmark = pytest.mark.slow(seconds=500)


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
    ran = ran_stages(first)
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
    assert ran_stages(second) == []

    # A multi-task setting: train is stale, no baseline; repro reruns train and evaluate.
    _set(project, "train", "weighting", "uncertainty")
    assert _status(project) == ["train"]
    third = run_ok([*DVC, "repro"], project)
    assert ran_stages(third) == ["train", "evaluate"]

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
    assert sorted(ran_stages(fourth)) == sorted([*BASELINES, "teach", "evaluate"])
    assert "train" not in ran_stages(fourth)
    assert marker.read_bytes() == disabled_marker()
    assert "skipped (evaluate.baselines is false)" in fourth
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert "delta_m" not in metrics and "stl" not in metrics["left"]
