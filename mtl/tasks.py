"""Task kinds: everything mtl knows about one kind of label column, in one place.

Each :class:`TaskKind` has one :class:`KindSpec` in :data:`KINDS`: its head size, how a label
column becomes a target array, its loss, how a head output is decoded, the columns ``mtl
predict`` writes, its metrics and its one-number score. Adding a kind is one new spec here (plus
the enum member in :mod:`mtl.schema`).

Targets travel through the pipeline as one ``float32`` column per task (``NaN`` = missing label):

* ``multiclass``: the class index ``0..K-1`` (decoded with the vocabulary in ``schema.json``);
* ``binary``: ``0.0`` or ``1.0``;
* ``regression``: the value standardised with the mean and std stored in the schema;
* ``multilabel``: a multi-hot ``[K]`` row (a list column in ``labels.parquet``).

A missing label is never invented: the loss of a task is averaged over the samples that carry
its label, and a batch in which no sample carries it contributes nothing for that task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl import kind_metrics as km
from mtl.metrics import classification_metrics, multilabel_metrics, regression_metrics
from mtl.schema import TaskKind, TaskSchema

__all__ = [
    "KINDS",
    "BinarySpec",
    "KindSpec",
    "MulticlassSpec",
    "MultilabelSpec",
    "RegressionSpec",
    "TaskKind",
    "TaskSchema",
    "head_size",
    "kind_spec",
    "label_mask",
    "masked_task_loss",
]


class KindSpec:
    """What one task kind means for heads, targets, loss, decoding, prediction and metrics."""

    kind: ClassVar[TaskKind]
    #: metric keys shown in reports and epoch logs, in this order
    metric_keys: ClassVar[tuple[str, ...]]
    #: a single class per sample: evaluate writes ``(actual, predicted)`` confusion pairs
    has_confusion: ClassVar[bool] = False
    #: the test metric compared with the single-task baseline in Δm, and whether higher is better
    delta_metric: ClassVar[tuple[str, bool]] = ("accuracy", True)

    def head_size(self, task: TaskSchema) -> int:
        """Number of outputs the task's head produces."""
        return 1

    def target_array(self, column: Iterable[Any], task: TaskSchema) -> np.ndarray:
        """A ``labels.parquet`` column -> ``[N]`` float32 targets (NaN = missing)."""
        return np.asarray(column, dtype=np.float32)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean loss of the labelled samples: ``output [n, K]`` float, ``target [n]`` or
        ``[n, K]``."""
        raise NotImplementedError

    def soft_loss(self, output: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """Mean distillation loss of the labelled samples against a teacher's raw output:
        ``output`` and ``teacher`` ``[n, K]`` float (the same head size), ``temperature`` > 0
        (:func:`mtl.distill.distill_task_loss` combines it with :meth:`loss`)."""
        raise NotImplementedError

    def decode(self, task: TaskSchema, output: np.ndarray) -> np.ndarray:
        """Head output ``[N, K]`` -> class index ``[N]``, multi-hot ``[N, K]`` or value ``[N]``."""
        raise NotImplementedError

    def columns(self, task: TaskSchema, output: np.ndarray) -> dict[str, Any]:
        """``mtl predict`` columns for head output ``[N, K]``, in the user's label vocabulary."""
        raise NotImplementedError

    def metrics(self, task: TaskSchema, target: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        """Metrics of labelled samples only: ``target [n]`` (or ``[n, K]``), ``output [n, K]``."""
        raise NotImplementedError

    def test_metrics(self, task: TaskSchema, output: np.ndarray,
                     target: np.ndarray) -> dict[str, Any]:
        """The evaluate stage's metrics (:mod:`mtl.kind_metrics`, scikit-learn) from the raw
        head output ``[N, K]`` and the target column (``NaN`` rows are left out)."""
        raise NotImplementedError

    def score(self, task: TaskSchema, metrics: Mapping[str, Any]) -> float:
        """One higher-is-better number (model selection on validation)."""
        return float(metrics["accuracy"])


class MulticlassSpec(KindSpec):
    """One class out of ``K``: softmax head, cross-entropy, accuracy and macro-F1."""

    kind = TaskKind.MULTICLASS
    metric_keys = ("accuracy", "macro_f1")
    has_confusion = True

    def head_size(self, task: TaskSchema) -> int:
        return len(task.classes)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target.long())

    def soft_loss(self, output: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """``T² · KL(softmax(s/T) ‖ softmax(z/T))`` averaged over the samples (Hinton, Vinyals &
        Dean 2015, *Distilling the Knowledge in a Neural Network*): zero when the student's
        logits ``z`` equal the teacher's ``s``; ``T²`` keeps the gradient's scale independent of
        ``T`` (the softened gradient shrinks as ``1/T²``)."""
        t = float(temperature)
        log_p = F.log_softmax(teacher / t, dim=-1)  # [n, K] teacher, softened
        log_q = F.log_softmax(output / t, dim=-1)  # [n, K] student, softened
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * t * t

    def decode(self, task: TaskSchema, output: np.ndarray) -> np.ndarray:
        return np.asarray(output.argmax(axis=1))

    def columns(self, task: TaskSchema, output: np.ndarray) -> dict[str, Any]:
        e = np.exp(output - output.max(1, keepdims=True))  # stable softmax, [N, K]
        return {task.name: [task.classes[i] for i in self.decode(task, output)],
                f"{task.name}_confidence": (e / e.sum(1, keepdims=True)).max(1)}

    def metrics(self, task: TaskSchema, target: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        return classification_metrics(target.astype(np.int64), self.decode(task, output),
                                      len(task.classes))

    def test_metrics(self, task: TaskSchema, output: np.ndarray,
                     target: np.ndarray) -> dict[str, Any]:
        return km.multiclass_metrics(output, target, task.classes)


class BinarySpec(MulticlassSpec):
    """Two classes with one logit: BCE-with-logits, decoded at logit 0 (probability 0.5)."""

    kind = TaskKind.BINARY

    def head_size(self, task: TaskSchema) -> int:
        return 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output.squeeze(-1), target.float())

    def soft_loss(self, output: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """Sigmoid outputs (``[n, 1]``): :func:`_sigmoid_soft_loss`."""
        return _sigmoid_soft_loss(output, teacher, temperature)

    def decode(self, task: TaskSchema, output: np.ndarray) -> np.ndarray:
        return (output[:, 0] > 0).astype(np.int64)

    def columns(self, task: TaskSchema, output: np.ndarray) -> dict[str, Any]:
        return {task.name: [task.classes[i] for i in self.decode(task, output)],
                f"{task.name}_probability": 1 / (1 + np.exp(-output[:, 0]))}

    def test_metrics(self, task: TaskSchema, output: np.ndarray,
                     target: np.ndarray) -> dict[str, Any]:
        return km.binary_metrics(output, target)


class RegressionSpec(KindSpec):
    """A standardised value: MSE; decoded, scored and reported in the original units."""

    kind = TaskKind.REGRESSION
    metric_keys = ("mae", "rmse", "r2")
    delta_metric = ("mae", False)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output.squeeze(-1), target.float())

    def soft_loss(self, output: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """``MSE(z, s)``: the teacher's standardised value is the target. ``temperature`` is
        ignored (there is no distribution to soften)."""
        return F.mse_loss(output.squeeze(-1), teacher.squeeze(-1))

    def decode(self, task: TaskSchema, output: np.ndarray) -> np.ndarray:
        return np.asarray(output[:, 0] * task.std + task.mean)

    def columns(self, task: TaskSchema, output: np.ndarray) -> dict[str, Any]:
        return {task.name: self.decode(task, output)}

    def metrics(self, task: TaskSchema, target: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        return regression_metrics(target * task.std + task.mean, self.decode(task, output))

    def test_metrics(self, task: TaskSchema, output: np.ndarray,
                     target: np.ndarray) -> dict[str, Any]:
        return km.regression_metrics(output, target, task.mean, task.std)

    def score(self, task: TaskSchema, metrics: Mapping[str, Any]) -> float:
        """R² on the split being scored (1 - SS_res / SS_tot around that split's own mean): a
        model that always predicts the split's mean scores 0, whatever the training std."""
        return float(metrics["r2"])


class MultilabelSpec(KindSpec):
    """Any subset of ``K`` tags: one logit per tag, BCE, subset accuracy, micro/macro-F1."""

    kind = TaskKind.MULTILABEL
    metric_keys = ("accuracy", "macro_f1", "micro_f1")
    delta_metric = ("micro_f1", True)

    def head_size(self, task: TaskSchema) -> int:
        return len(task.classes)

    def target_array(self, column: Iterable[Any], task: TaskSchema) -> np.ndarray:
        """A list column -> ``[N, K]`` multi-hot float32 (a missing row is all NaN)."""
        k = len(task.classes)
        return np.stack([np.full(k, np.nan, np.float32) if v is None else
                         np.asarray(v, dtype=np.float32) for v in column]).reshape(-1, k)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output, target.float())

    def soft_loss(self, output: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """One sigmoid per tag (``[n, K]``): :func:`_sigmoid_soft_loss`."""
        return _sigmoid_soft_loss(output, teacher, temperature)

    def decode(self, task: TaskSchema, output: np.ndarray) -> np.ndarray:
        return (output > 0).astype(np.int64)  # [N, K] multi-hot

    def columns(self, task: TaskSchema, output: np.ndarray) -> dict[str, Any]:
        hot = self.decode(task, output).astype(bool)
        return {task.name: ["|".join(c for c, on in zip(task.classes, row, strict=True) if on)
                            for row in hot]}

    def metrics(self, task: TaskSchema, target: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        return multilabel_metrics(target, self.decode(task, output))

    def test_metrics(self, task: TaskSchema, output: np.ndarray,
                     target: np.ndarray) -> dict[str, Any]:
        return km.multilabel_metrics(output, target, task.classes)


def _sigmoid_soft_loss(output: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · [BCE-with-logits(z/T, σ(s/T)) − H(σ(s/T))]`` averaged over every output
    (``[n, K]``, as the hard BCE is): the Bernoulli KL divergence ``KL(σ(s/T) ‖ σ(z/T))`` per
    output. Subtracting the teacher's entropy ``H`` (a constant for the student: the gradient is
    the BCE's) makes the loss zero at ``z = s``, so a logged soft loss reads as a distance."""
    t = float(temperature)
    p = torch.sigmoid(teacher / t)  # [n, K] teacher's softened probabilities
    bce = F.binary_cross_entropy_with_logits(output / t, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher / t, p, reduction="none")
    return (bce - entropy).mean() * t * t


KINDS: dict[TaskKind, KindSpec] = {spec.kind: spec for spec in (
    MulticlassSpec(), BinarySpec(), RegressionSpec(), MultilabelSpec())}


def kind_spec(task: TaskSchema) -> KindSpec:
    """The :class:`KindSpec` of ``task``'s kind."""
    try:
        return KINDS[task.kind]
    except KeyError:
        raise ValueError(f"task {task.name!r}: expected a kind in {[k.value for k in KINDS]}, "
                         f"found {task.kind!r}") from None


def head_size(task: TaskSchema) -> int:
    """Number of outputs the task's head produces."""
    return kind_spec(task).head_size(task)


def label_mask(target: Tensor) -> Tensor:
    """``[B]`` bool: which samples carry the task's label (``target`` ``[B]`` or ``[B, K]``)."""
    # A multilabel target is [B, K]: a sample is labelled when its row is not NaN.
    return ~torch.isnan(target if target.dim() == 1 else target[:, 0])


def masked_task_loss(task: TaskSchema, output: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Mean loss of one task over the samples that carry its label.

    ``output`` is the head's output, ``[B, K]`` (multiclass, multilabel) or ``[B, 1]``;
    ``target`` is ``[B]`` (``[B, K]`` multilabel) float with ``NaN`` for a missing label.
    Returns the loss (a 0-dim tensor, ``0.0`` attached to the graph when no sample has the
    label, so it adds no gradient) and the count of labelled samples.
    """
    present = label_mask(target)
    n = int(present.sum())
    if n == 0:
        # Multiplying by zero keeps the graph connected (DDP and autograd.grad need every
        # output used) while contributing an exact zero gradient.
        return output.sum() * 0.0, 0
    return kind_spec(task).loss(output[present].float(), target[present]), n
