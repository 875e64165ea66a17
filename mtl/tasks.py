"""Task kinds: how a label column is encoded, which head size it needs, its loss and metrics.

Targets travel through the pipeline as one ``float32`` column per task (``NaN`` = missing label):

* ``multiclass``: the class index ``0..K-1`` (decoded with the vocabulary in ``schema.json``);
* ``binary``: ``0.0`` or ``1.0``;
* ``regression``: the value standardised with the mean and std stored in the schema.

A missing label is never invented: the loss of a task is averaged over the samples that carry
its label, and a batch in which no sample carries it contributes nothing for that task.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.schema import TaskKind, TaskSchema, head_size

__all__ = [
    "TaskKind",
    "TaskSchema",
    "classification_metrics",
    "head_size",
    "masked_task_loss",
    "multilabel_metrics",
    "regression_metrics",
]


def masked_task_loss(task: TaskSchema, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Mean loss of one task over the samples that carry its label.

    ``output`` is the head's output, ``[B, K]`` (multiclass) or ``[B, 1]``; ``target`` is ``[B]``
    float with ``NaN`` for a missing label. Returns the loss (a 0-dim tensor, ``0.0`` attached to
    the graph when no sample has the label, so it adds no gradient) and the count of labelled
    samples.
    """
    # A multilabel target is [B, K]: a sample is labelled when its row is not NaN.
    present = ~torch.isnan(target if target.dim() == 1 else target[:, 0])
    n = int(present.sum())
    if n == 0:
        # Multiplying by zero keeps the graph connected (DDP and autograd.grad need every
        # output used) while contributing an exact zero gradient.
        return output.sum() * 0.0, 0
    out = output[present].float()
    y = target[present]
    if task.kind is TaskKind.MULTICLASS:
        return F.cross_entropy(out, y.long()), n
    if task.kind is TaskKind.BINARY:
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), y.float()), n
    if task.kind is TaskKind.MULTILABEL:
        return F.binary_cross_entropy_with_logits(out, y.float()), n
    return F.mse_loss(out.squeeze(-1), y.float()), n


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
    """MAE and RMSE in the target's original units."""
    err = y_pred.astype(np.float64) - y_true.astype(np.float64)
    n = len(err)
    return {
        "mae": float(np.abs(err).mean()) if n else math.nan,
        "rmse": float(np.sqrt((err**2).mean())) if n else math.nan,
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
