"""evaluate stage: test metrics of the multi-task model and of its single-task baselines, Δm,
confusion pairs, report figures and the markdown report.

The test split is only ever read here, once, and every model (the multi-task model and each
baseline) is scored on it with the same per-kind metrics (:mod:`mtl.kind_metrics`). Inference,
the checkpoint format and the report are shared modules (:mod:`mtl.inference`,
:mod:`mtl.checkpoint`, :mod:`mtl.report`); ``evaluate_stage`` is the stage's one entry point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtl.checkpoint import Checkpoint, CheckpointError, load_checkpoint, safe_load
from mtl.config import EvaluateConfig
from mtl.delta import SKIPPED_BASELINE_FORMAT, Comparison, compare_to_baselines
from mtl.device import select_device
from mtl.inference import decode, predict
from mtl.kind_metrics import kind_metrics
from mtl.models.base import MultiTaskModel
from mtl.report import render_report
from mtl.schema import TaskSchema
from mtl.shards import ShardedImages
from mtl.splits import SplitData, feature_columns, load_split_data
from mtl.tasks import kind_spec

__all__ = ["Baselines", "EvalResult", "EvaluateOutput", "evaluate_model", "evaluate_stage",
           "load_baselines", "score_outputs"]

#: Per-class / per-label tables are reported apart from the headline metrics (eval.json stays
#: one number per metric, readable in ``dvc metrics show`` / ``dvc exp show``).
_TABLES = ("per_class", "per_label")


def score_outputs(tasks: Sequence[TaskSchema], outputs: Mapping[str, np.ndarray],
                  targets: Mapping[str, np.ndarray],
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Headline test metrics per task (JSON-ready) and the per-class / per-label tables."""
    metrics: dict[str, dict[str, Any]] = {}
    tables: dict[str, dict[str, Any]] = {}
    for task in tasks:
        m = kind_metrics(task, outputs[task.name], targets[task.name])
        tables[task.name] = {k: m.pop(k) for k in _TABLES if k in m}
        metrics[task.name] = m
    return metrics, tables


@dataclass(frozen=True)
class EvalResult:
    """Test metrics per task (JSON-ready), per-class tables and ``(actual, predicted)`` class
    indices of every single-label classification task (the confusion plots)."""

    metrics: dict[str, dict[str, Any]]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)


def evaluate_model(model: MultiTaskModel, tasks: Sequence[TaskSchema],
                   images: Tensor | ShardedImages, targets: Mapping[str, np.ndarray],
                   device: torch.device, batch_size: int,
                   features: Tensor | None = None) -> EvalResult:
    """Predict ``images [N, H, W, C]`` uint8 (in memory, or memory-mapped shards streamed
    batch by batch) and compute every task's metrics."""
    outputs = predict(model, images, device, batch_size, features)
    metrics, tables = score_outputs(tasks, outputs, targets)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for task in tasks:
        if kind_spec(task).has_confusion:
            keep = ~np.isnan(targets[task.name])  # single-label targets are [N]
            pairs[task.name] = (targets[task.name][keep].astype(np.int64),
                                decode(task, outputs[task.name][keep]))
    return EvalResult(metrics, pairs, tables)


@dataclass(frozen=True)
class Baselines:
    """The single-task baseline checkpoints found for the model's tasks, and the skipped ones."""

    models: dict[str, Checkpoint]
    skipped: dict[str, str]  # task -> reason


def load_baselines(folder: Path, tasks: Sequence[TaskSchema]) -> Baselines:
    """Every ``<task>.pt`` of the baseline stages in ``folder`` for a task of ``tasks``.

    A baseline must be a single-task checkpoint of the same task (same kind and classes);
    files of tasks the model does not have (left over after a task was removed) are ignored.
    """
    if not folder.is_dir():
        raise FileNotFoundError(
            f"expected the single-task baselines in {folder} (the baseline@<task> stages), "
            f"found no such folder: run `dvc repro` or set evaluate.baselines: false")
    by_name = {t.name: t for t in tasks}
    models: dict[str, Checkpoint] = {}
    skipped: dict[str, str] = {}
    for path in sorted(folder.glob("*.pt")):
        if path.stem not in by_name:
            continue
        raw = safe_load(path, "baseline checkpoint")
        if isinstance(raw, dict) and raw.get("format") == SKIPPED_BASELINE_FORMAT:
            skipped[path.stem] = str(raw.get("reason", "skipped"))
            continue
        ckpt = load_checkpoint(path)
        if [t.name for t in ckpt.tasks] != [path.stem] or ckpt.tasks[0] != by_name[path.stem]:
            raise CheckpointError(
                f"{path}: expected a single-task baseline of task {path.stem!r} with the "
                f"model's schema, found tasks {[t.to_dict() for t in ckpt.tasks]}")
        models[path.stem] = ckpt
    for name in by_name:
        if name not in models and name not in skipped:
            skipped[name] = f"no baseline checkpoint {folder / (name + '.pt')}"
    return Baselines(models, skipped)


@dataclass(frozen=True)
class EvaluateOutput:
    """What the evaluate stage writes: metrics, one confusion table per task, the report and
    the per-class tables."""

    metrics: dict[str, Any]
    confusion: dict[str, pd.DataFrame]  # task -> columns actual, predicted (class labels)
    report: str
    tables: dict[str, dict[str, Any]]
    comparison: Comparison | None
    figures: dict[str, Path]


def _figures(result: EvalResult, tasks: Sequence[TaskSchema], comparison: Comparison | None,
             live: Path | None, out: Path) -> dict[str, Path]:
    """Write the report's PNGs into ``out``; ``{title: path}`` of those that could be drawn."""
    from mtl import figures as fig

    drawn: dict[str, Path] = {}
    if live is not None and (live / "plots" / "metrics").is_dir():
        frame = fig.read_live_metrics(live)
        cols = set(frame.columns)
        if any(c.startswith("train/loss/") for c in cols):
            drawn["Training loss and validation metrics"] = fig.plot_training_curves(
                frame, out / "training_curves.png")
        if any(c.startswith("train/weight/") for c in cols):
            drawn["Task weights per epoch"] = fig.plot_task_weights(frame,
                                                                    out / "task_weights.png")
        if any(c.startswith("conflict/cosine/") for c in cols):
            drawn["Task-gradient cosine"] = fig.plot_gradient_cosine(frame,
                                                                     out / "gradient_cosine.png")
    if comparison is not None and comparison.tasks:
        drawn["Multi-task vs single-task"] = fig.plot_delta(
            {t: float(d["delta_pct"]) for t, d in comparison.per_task.items()},  # type: ignore[arg-type]
            comparison.delta_m, out / "delta.png",
            metrics={t: str(d["delta_metric"]) for t, d in comparison.per_task.items()})
    for task in tasks:
        if task.name in result.pairs and len(task.classes) <= fig.MAX_CONFUSION_CLASSES:
            actual, predicted = result.pairs[task.name]
            k = len(task.classes)
            cm = np.zeros((k, k), dtype=np.int64)
            np.add.at(cm, (actual, predicted), 1)  # [K, K]: rows actual, columns predicted
            drawn[f"Confusion matrix: {task.name}"] = fig.plot_confusion(
                cm, task.classes, out / f"confusion_{task.name}.png", f"{task.name} (test)")
    return drawn


def evaluate_stage(ckpt: Checkpoint, augmented: Path, clean_report: Mapping[str, Any],
                   select_report: Mapping[str, Any], cfg: EvaluateConfig, device: str,
                   baselines: Path | None = None, live: Path | None = None,
                   figures: Path | None = None,
                   report_dir: Path | None = None) -> EvaluateOutput:
    """The evaluate stage: score the multi-task model and (``cfg.baselines``) the single-task
    baselines in ``baselines`` on the test split read once from ``augmented``; compare them
    (Δm, positive = multi-task better); draw the figures into ``figures`` from the dvclive
    folder ``live``; render the report, its figure links relative to ``report_dir`` (the
    report's folder; default: ``figures``' parent)."""
    test: SplitData = load_split_data(augmented, "test", ckpt.tasks, feature_columns(ckpt.schema))
    dev = select_device(device)
    result = evaluate_model(ckpt.model.to(dev), ckpt.tasks, test.images, test.targets, dev,
                            cfg.batch_size, test.features)
    metrics: dict[str, Any] = {name: dict(m) for name, m in result.metrics.items()}
    comparison: Comparison | None = None
    skipped: dict[str, str] = {}
    if cfg.baselines:
        if baselines is None:
            raise ValueError("evaluate.baselines is true: expected the folder of the baseline "
                             "checkpoints (--baselines), found none")
        found = load_baselines(baselines, ckpt.tasks)
        skipped = found.skipped
        stl: dict[str, dict[str, Any]] = {}
        for name, b in found.models.items():
            outputs = predict(b.model.to(dev), test.images, dev, cfg.batch_size, test.features)
            stl[name] = score_outputs(b.tasks, outputs, test.targets)[0][name]
        comparison = compare_to_baselines({t.name: t.kind for t in ckpt.tasks}, metrics, stl)
        for name, extra in comparison.per_task.items():
            metrics[name].update(extra)
        metrics["delta_m"] = comparison.delta_m
    confusion: dict[str, pd.DataFrame] = {}
    for task in ckpt.tasks:
        if task.name in result.pairs:
            actual, predicted = result.pairs[task.name]
            confusion[task.name] = pd.DataFrame({
                "actual": [task.classes[i] for i in actual],
                "predicted": [task.classes[i] for i in predicted]})
    drawn = _figures(result, ckpt.tasks, comparison, live, figures) if figures else {}
    base = report_dir if report_dir is not None else (figures.parent if figures else Path("."))
    rel = {title: Path(os.path.relpath(p, base)).as_posix() for title, p in drawn.items()}
    report = render_report(metrics, ckpt.tasks, clean_report, select_report,
                           tables=result.tables, skipped=skipped, figures=rel)
    return EvaluateOutput(metrics, confusion, report, result.tables, comparison, drawn)
