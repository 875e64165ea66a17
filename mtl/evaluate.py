"""evaluate stage: metrics on the held-out test split and the confusion pairs.

The test split is only ever read here. Inference, metrics, the checkpoint format and the report
are shared modules (:mod:`mtl.inference`, :mod:`mtl.metrics`, :mod:`mtl.checkpoint`,
:mod:`mtl.report`); ``evaluate_stage`` is the stage's one entry point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtl.checkpoint import Checkpoint
from mtl.config import EvaluateConfig
from mtl.device import select_device
from mtl.inference import decode, predict
from mtl.metrics import task_metrics
from mtl.models.base import MultiTaskModel
from mtl.report import render_report
from mtl.schema import TaskSchema
from mtl.splits import feature_columns, load_split_data
from mtl.tasks import kind_spec

__all__ = ["EvalResult", "EvaluateOutput", "evaluate_model", "evaluate_stage"]


@dataclass(frozen=True)
class EvalResult:
    """Test metrics per task (JSON-ready) and ``(actual, predicted)`` class indices of every
    single-label classification task (the confusion plots)."""

    metrics: dict[str, dict[str, float]]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]


def evaluate_model(model: MultiTaskModel, tasks: Sequence[TaskSchema], images: Tensor,
                   targets: Mapping[str, np.ndarray], device: torch.device,
                   batch_size: int, features: Tensor | None = None) -> EvalResult:
    """Predict the test split (``images [N, H, W, C]`` uint8) and compute every task's metrics."""
    outputs = predict(model, images, device, batch_size, features)
    full = task_metrics(tasks, outputs, targets)
    metrics: dict[str, dict[str, float]] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for task in tasks:
        m = {k: v for k, v in full[task.name].items() if k != "confusion"}
        if kind_spec(task).has_confusion:
            keep = ~np.isnan(targets[task.name])  # single-label targets are [N]
            pairs[task.name] = (targets[task.name][keep].astype(np.int64),
                                decode(task, outputs[task.name][keep]))
        metrics[task.name] = {k: (float(v) if k != "n" else int(v)) for k, v in m.items()}
    return EvalResult(metrics, pairs)


@dataclass(frozen=True)
class EvaluateOutput:
    """What the evaluate stage writes: metrics, one confusion table per task, the report."""

    metrics: dict[str, dict[str, float]]
    confusion: dict[str, pd.DataFrame]  # task -> columns actual, predicted (class labels)
    report: str


def evaluate_stage(ckpt: Checkpoint, augmented: Path, clean_report: Mapping[str, Any],
                   select_report: Mapping[str, Any], cfg: EvaluateConfig,
                   device: str) -> EvaluateOutput:
    """The evaluate stage: score the checkpoint's model on the test split read from
    ``augmented``, keep the confusion pairs, render the report."""
    test = load_split_data(augmented, "test", ckpt.tasks, feature_columns(ckpt.schema))
    dev = select_device(device)
    result = evaluate_model(ckpt.model.to(dev), ckpt.tasks, test.images, test.targets, dev,
                            cfg.batch_size, test.features)
    confusion: dict[str, pd.DataFrame] = {}
    for task in ckpt.tasks:
        if task.name in result.pairs:
            actual, predicted = result.pairs[task.name]
            confusion[task.name] = pd.DataFrame({
                "actual": [task.classes[i] for i in actual],
                "predicted": [task.classes[i] for i in predicted]})
    report = render_report(result.metrics, ckpt.tasks, clean_report, select_report)
    return EvaluateOutput(result.metrics, confusion, report)
