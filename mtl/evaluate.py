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


def _decisions(clean_report: Mapping[str, Any], select_report: Mapping[str, Any]) -> list[str]:
    """Duplicate, hierarchy and feature (leakage) decisions of the clean and select stages."""
    lines: list[str] = []
    dup = clean_report.get("duplicates") or {}
    groups = select_report.get("groups") or {}
    if dup:
        lines += ["", "## Duplicates", "",
                  f"- exact-duplicate groups: {dup.get('exact_duplicate_groups', 0)}, of which "
                  f"{dup.get('exact_duplicate_groups_with_conflicting_labels', 0)} with "
                  f"conflicting labels (action: {dup.get('conflicting_duplicates_action')})",
                  f"- near-duplicate groups (pHash distance <= "
                  f"{dup.get('near_duplicate_distance')}): {dup.get('near_duplicate_groups', 0)}"
                  f" holding {dup.get('rows_in_near_duplicate_groups', 0)} rows; groups split "
                  f"across train/val/test: {groups.get('groups_across_splits', 'n/a')}"]
    hierarchy = clean_report.get("hierarchy") or {}
    if hierarchy:
        lines += ["", "## Label hierarchy", ""]
        for link, h in hierarchy.items():
            bad = ", ".join(f"{child} -> {dict(parents)}"
                            for child, parents in list(h.get("violations", {}).items())[:5])
            lines.append(f"- {link}: {h.get('violating_child_values', 0)} of "
                         f"{h.get('child_values', 0)} values map to more than one parent "
                         f"({h.get('violating_rows', 0)} rows, action: {h.get('action')})"
                         + (f": {bad}" if bad else ""))
    features = select_report.get("features") or {}
    if features.get("decisions"):
        lines += ["", "## Tabular features", "",
                  f"- kept: {', '.join(f'`{k}`' for k in features.get('kept', [])) or 'none'}"]
        for d in features["decisions"]:
            if not d.get("kept"):
                lines.append(f"- dropped `{d['feature']}`: {d.get('reason')}"
                             + (f" ({d['detail']})" if d.get("detail") else ""))
    return lines


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
        rare = d.get("rare_classes")
        if rare:
            into = (f"merged into `{rare['merged_into']}`" if "merged_into" in rare
                    else "set missing")
            lines.append(f"  - {len(rare['classes'])} class(es) with fewer than "
                         f"{rare['min_class_count']} rows {into}")
    lines += _decisions(clean_report, select_report)
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
