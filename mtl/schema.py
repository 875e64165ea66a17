"""Task kinds and the per-task schema (torch-free, so data stages import it cheaply).

What each kind means for heads, losses, decoding and metrics lives in :mod:`mtl.tasks`.

Targets travel through the pipeline as one ``float32`` column per task (``NaN`` = missing label):

* ``multiclass``: the class index ``0..K-1`` (decoded with the vocabulary in ``schema.json``);
* ``binary``: ``0.0`` or ``1.0`` (index into the two-class vocabulary);
* ``regression``: the value standardised with the mean and std stored in the schema;
* ``multilabel``: a multi-hot vector ``[K]`` (a list column; one label string such as
  ``"red|blue"`` in the raw table), ``None``/NaN when the sample has no label for the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["SPLITS", "TaskKind", "TaskSchema"]


#: The dataset splits, in the order the stages write them.
SPLITS = ("train", "val", "test")


class TaskKind(str, Enum):
    """The kinds of label column mtl can learn."""

    MULTICLASS = "multiclass"
    BINARY = "binary"
    REGRESSION = "regression"
    MULTILABEL = "multilabel"

    def __str__(self) -> str:
        # "regression" in messages and f-strings, as when kinds were plain strings (Python 3.11
        # would print "TaskKind.REGRESSION" for a str-mixin Enum).
        return str(self.value)


@dataclass(frozen=True)
class TaskSchema:
    """What training and prediction need to decode one task (stored in ``schema.json``).

    ``classes`` is the label vocabulary for classification tasks (index = class id); ``mean``
    and ``std`` standardise a regression target.
    """

    name: str
    kind: TaskKind
    column: str
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    class_counts: tuple[int, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "column": self.column,
            "classes": list(self.classes),
            "mean": self.mean,
            "std": self.std,
            "class_counts": list(self.class_counts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSchema:
        return cls(
            name=str(d["name"]),
            kind=TaskKind(d["kind"]),
            column=str(d.get("column", d["name"])),
            classes=tuple(str(c) for c in d.get("classes", ())),
            mean=float(d.get("mean", 0.0)),
            std=float(d.get("std", 1.0)),
            class_counts=tuple(int(c) for c in d.get("class_counts", ())),
        )

