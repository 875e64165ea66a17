"""evaluate stage: metrics on the held-out test split, confusion matrices, a markdown report.

``predict`` and ``task_metrics`` are shared with training (validation); the test split is only
ever read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl.models.base import MultiTaskModel
from mtl.schema import TaskKind, TaskSchema
from mtl.tasks import classification_metrics, multilabel_metrics, regression_metrics

__all__ = [
    "EvalResult",
    "evaluate_model",
    "predict",
    "render_report",
    "task_metrics",
    "task_score",
    "to_model_input",
]


def to_model_input(images: Tensor, device: torch.device) -> Tensor:
    """``[B, H, W, C]`` uint8 -> ``[B, C, H, W]`` float in [-1, 1] on ``device``."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


@torch.no_grad()
def predict(model: MultiTaskModel, images: Tensor, device: torch.device, batch_size: int,
            features: Tensor | None = None) -> dict[str, np.ndarray]:
    """Raw head outputs for every image: ``{task: [N, K]}`` float32 numpy arrays.

    ``features [N, F]`` are the tabular features chosen by the select stage, if any.
    """
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        f = None if features is None else features[start:start + batch_size].to(device)
        out = model(to_model_input(images[start:start + batch_size], device), f)
        for name, o in out.items():
            chunks.setdefault(name, []).append(o.float().cpu().numpy())
    return {name: np.concatenate(c) for name, c in chunks.items()}


def _decode(task: TaskSchema, output: np.ndarray) -> np.ndarray:
    """Head output ``[N, K]`` -> class index (classification) or value in original units."""
    if task.kind is TaskKind.MULTICLASS:
        return output.argmax(axis=1)
    if task.kind is TaskKind.BINARY:
        return (output[:, 0] > 0).astype(np.int64)
    if task.kind is TaskKind.MULTILABEL:
        return (output > 0).astype(np.int64)  # [N, K] multi-hot
    return output[:, 0] * task.std + task.mean


def task_metrics(tasks: Sequence[TaskSchema], outputs: Mapping[str, np.ndarray],
                 targets: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per task: accuracy, macro-F1, confusion (classification) or MAE/RMSE in original units.

    Samples whose label is missing (``NaN``) for a task are left out of that task's metrics.
    """
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        y = targets[task.name]
        keep = ~np.isnan(y if y.ndim == 1 else y[:, 0])
        pred = _decode(task, outputs[task.name][keep])
        if task.kind is TaskKind.MULTILABEL:
            out[task.name] = multilabel_metrics(y[keep], pred)
        elif task.kind is TaskKind.REGRESSION:
            out[task.name] = regression_metrics(y[keep] * task.std + task.mean, pred)
        else:
            k = len(task.classes)
            out[task.name] = classification_metrics(y[keep].astype(np.int64), pred, k)
    return out


def task_score(task: TaskSchema, metrics: Mapping[str, Any]) -> float:
    """One higher-is-better number per task: accuracy, or R² for regression."""
    if task.kind is TaskKind.REGRESSION:
        rmse = metrics["rmse"]
        return 1.0 - (rmse / task.std) ** 2 if not math.isnan(rmse) else math.nan
    return float(metrics["accuracy"])


@dataclass(frozen=True)
class EvalResult:
    """Test metrics per task (JSON-ready) and the confusion matrices of classification tasks."""

    metrics: dict[str, dict[str, float]]
    confusion: dict[str, np.ndarray]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]


def evaluate_model(model: MultiTaskModel, tasks: Sequence[TaskSchema], images: Tensor,
                   targets: Mapping[str, np.ndarray], device: torch.device,
                   batch_size: int, features: Tensor | None = None) -> EvalResult:
    """Predict the test split and compute every task's metrics."""
    outputs = predict(model, images, device, batch_size, features)
    full = task_metrics(tasks, outputs, targets)
    metrics: dict[str, dict[str, float]] = {}
    confusion: dict[str, np.ndarray] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for task in tasks:
        m = dict(full[task.name])
        if "confusion" in m:
            confusion[task.name] = m.pop("confusion")
            keep = ~np.isnan(targets[task.name])  # classification targets are [N]
            pairs[task.name] = (targets[task.name][keep].astype(np.int64),
                                _decode(task, outputs[task.name][keep]))
        metrics[task.name] = {k: (float(v) if k != "n" else int(v)) for k, v in m.items()}
    return EvalResult(metrics, confusion, pairs)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render_report(result: EvalResult, tasks: Sequence[TaskSchema], clean_report: Mapping[str, Any],
                  select_report: Mapping[str, Any]) -> str:
    """``reports/report.md``: data summary (clean/select reports) and the metrics table."""
    lines = ["# mtl report", "", "## Data", ""]
    lines += [f"- raw rows: {clean_report.get('raw_rows')}, clean: {clean_report.get('clean_rows')}"
              f", rejected: {clean_report.get('rejected_rows')}"]
    for reason, n in clean_report.get("rejects_by_reason", {}).items():
        lines.append(f"  - {reason}: {n}")
    lines.append(f"- split ({select_report.get('split_source')}): "
                 + ", ".join(f"{k} {v}" for k, v in select_report.get("split_sizes", {}).items()))
    for name, d in select_report.get("tasks", {}).items():
        status = "kept" if d.get("kept") else f"dropped: {d.get('reason')}"
        lines.append(f"- task `{name}`: {status} (label coverage {d.get('coverage', 0):.1%})")
    lines += ["", "## Test metrics", "", "| task | kind | metric | value | n |",
              "|---|---|---|---|---|"]
    for task in tasks:
        m = result.metrics[task.name]
        for key in ("accuracy", "macro_f1", "micro_f1", "mae", "rmse"):
            if key in m:
                lines.append(f"| {task.name} | {task.kind.value} | {key} | {_fmt(m[key])} "
                             f"| {m['n']} |")
    lines.append("")
    return "\n".join(lines)
