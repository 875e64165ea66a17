"""Single-task baselines: what they read (and do not), the skip markers, one real training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mtl.baseline import (
    MTL_ONLY_KEYS,
    baseline_config,
    baseline_schema,
    baseline_stage,
    shared_train_keys,
)
from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import TrainConfig
from mtl.delta import SKIPPED_BASELINE_FORMAT
from tests.conftest import REPO_ROOT
from tests.test_train import TASKS, make_split, tiny_cfg


def test_dvc_yaml_baseline_lists_exactly_the_keys_it_reads() -> None:
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["baseline"]
    listed = stage["params"]
    assert sorted(listed) == sorted([f"train.{k}" for k in shared_train_keys()]
                                    + ["evaluate.baselines"])
    # Every TrainConfig field is either read by the baselines or multi-task only.
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(shared_train_keys()) | MTL_ONLY_KEYS == fields
    assert {"weighting", "architecture", "weighting_kwargs", "backend"} <= MTL_ONLY_KEYS
    assert stage["matrix"] == {"task": "${dataset.tasks}"}


def test_baseline_config_drops_multi_task_settings(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, weighting="pcgrad", weighting_kwargs={"x": 1}, architecture="mmoe",
                   backend="representation", seed=3, epochs=5)
    b = baseline_config(cfg, "a")
    assert (b.weighting, b.weighting_kwargs, b.architecture, b.backend) == (
        "equal", {}, "hps", "full")
    assert (b.seed, b.epochs, b.lr, b.backbone, b.backbone_kwargs) == (
        3, 5, cfg.lr, cfg.backbone, cfg.backbone_kwargs)
    assert Path(b.checkpoint_dir) != Path(cfg.checkpoint_dir)  # own resumable-state folder
    assert baseline_config(cfg, "a").checkpoint_dir != baseline_config(cfg, "b").checkpoint_dir


def test_baseline_schema_keeps_one_task() -> None:
    schema = {"tasks": [t.to_dict() for t in TASKS], "features": []}
    one = baseline_schema(schema, "b")
    assert one is not None and [t["name"] for t in one["tasks"]] == ["b"]
    assert one["features"] == [] and len(schema["tasks"]) == 4  # input left untouched
    assert baseline_schema(schema, "gone") is None


def _stage_inputs(root: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    schema = {"tasks": [t.to_dict() for t in TASKS]}
    for split, n, seed in (("train", 96, 0), ("val", 32, 1)):
        data = make_split(n, seed)
        out = root / "augmented" / split
        out.mkdir(parents=True)
        np.save(out / "images-00000.npy", data.images.numpy())
        columns = {k: v if v.ndim == 1 else [r.tolist() for r in v]
                   for k, v in data.targets.items()}
        pd.DataFrame({"id": [f"{split}{i}" for i in range(n)], "copy": 0, **columns}).to_parquet(
            out / "labels.parquet", index=False)
    meta = {"image_size": [12, 12], "channels": 1, "mode": "L"}
    (root / "augmented" / "meta.json").write_text(json.dumps(meta))
    return schema, meta, root / "augmented"


def test_baseline_stage_trains_a_single_task_checkpoint(tmp_path: Path) -> None:
    schema, meta, augmented = _stage_inputs(tmp_path)
    out = tmp_path / "baselines" / "a.pt"
    cfg = tiny_cfg(tmp_path, epochs=1, weighting="uncertainty", architecture="mmoe",
                   architecture_kwargs={})
    result = baseline_stage(cfg, "a", True, schema, meta, augmented,
                            save=lambda p: save_checkpoint(out, p), echo=lambda _: None)
    assert result is not None
    ckpt = load_checkpoint(out)
    assert [t.name for t in ckpt.tasks] == ["a"] and ckpt.tasks[0] == TASKS[0]
    assert ckpt.meta["architecture"] == "hps"
    assert ckpt.model.heads.tasks == ["a"]  # one head only


@pytest.mark.parametrize("enabled,task,reason", [
    (False, "a", "evaluate.baselines is false"),
    (True, "dropped", "dropped by the select stage")])
def test_skipped_baselines_write_a_marker(enabled: bool, task: str, reason: str,
                                          tmp_path: Path) -> None:
    saved: list[dict[str, Any]] = []
    schema = {"tasks": [t.to_dict() for t in TASKS]}
    r = baseline_stage(tiny_cfg(tmp_path), task, enabled, schema, {}, tmp_path / "nothing",
                       save=saved.append, echo=lambda _: None)
    assert r is None and len(saved) == 1
    assert saved[0]["format"] == SKIPPED_BASELINE_FORMAT and saved[0]["task"] == task
    assert reason in saved[0]["reason"]
