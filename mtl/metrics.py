"""Metrics: the per-kind metric functions and the per-task dispatch used by train and evaluate.

The per-kind functions are plain NumPy. ``task_metrics`` and ``task_score`` look each task's kind
up in :data:`mtl.tasks.KINDS`, which knows which of these functions applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtl.schema import TaskSchema

__all__ = [
    "classification_metrics",
    "multilabel_metrics",
    "regression_metrics",
    "task_metrics",
    "task_score",
]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes seen in ``y_true`` or ``y_pred``), confusion matrix."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    if len(y_true):
        np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    seen = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else math.nan,
        "macro_f1": float(f1[seen].mean()) if seen.any() else math.nan,
        "n": n,
        "confusion": cm,
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and R² in the target's original units.

    R² is computed on these rows (1 - SS_res / SS_tot around ``y_true``'s own mean), so it is
    the R² of the split being scored; ``NaN`` when fewer than two rows or a constant ``y_true``
    leave it undefined.
    """
    t = y_true.astype(np.float64)
    err = y_pred.astype(np.float64) - t
    n = len(err)
    ss_tot = float(((t - t.mean()) ** 2).sum()) if n else 0.0
    return {
        "mae": float(np.abs(err).mean()) if n else math.nan,
        "rmse": float(np.sqrt((err**2).mean())) if n else math.nan,
        "r2": 1.0 - float((err**2).sum()) / ss_tot if n >= 2 and ss_tot > 0 else math.nan,
        "n": n,
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Subset accuracy (exact match), micro- and macro-F1 of multi-hot ``[N, K]`` arrays."""
    t, p = y_true.astype(bool), y_pred.astype(bool)
    n = len(t)
    tp = (t & p).sum(axis=0).astype(np.float64)
    denom = t.sum(axis=0) + p.sum(axis=0)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    seen = denom > 0
    micro_denom = float(denom.sum())
    return {
        "accuracy": float((t == p).all(axis=1).mean()) if n else math.nan,
        "micro_f1": 2 * float(tp.sum()) / micro_denom if micro_denom else math.nan,
        "macro_f1": float(f1[seen].mean()) if seen.any() else math.nan,
        "n": n,
    }


def task_metrics(tasks: Sequence[TaskSchema], outputs: Mapping[str, np.ndarray],
                 targets: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per task: accuracy, macro-F1, confusion (classification) or MAE/RMSE in original units.

    ``outputs`` are raw head outputs ``{task: [N, K]}``; ``targets`` are ``[N]`` (or ``[N, K]``
    multi-hot) float32 with NaN for a missing label. Samples whose label is missing for a task
    are left out of that task's metrics.
    """
    # Function-level import: mtl.tasks builds its kind specs on the functions above.
    from mtl.tasks import kind_spec

    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        y = targets[task.name]
        keep = ~np.isnan(y if y.ndim == 1 else y[:, 0])
        out[task.name] = kind_spec(task).metrics(task, y[keep], outputs[task.name][keep])
    return out


def task_score(task: TaskSchema, metrics: Mapping[str, Any]) -> float:
    """One higher-is-better number per task: accuracy, or R² for regression."""
    from mtl.tasks import kind_spec

    return kind_spec(task).score(task, metrics)
