"""One split of the augment stage's output in memory, as train and evaluate consume it.

The augment stage writes ``<split>/images-*.npy`` shards (``[n, H, W, C]`` uint8) and a
row-aligned ``<split>/labels.parquet``; this module reads them without importing the augment
stage, so train and evaluate do not depend on its code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl.data.io import DataError
from mtl.schema import TaskSchema
from mtl.shards import load_shards
from mtl.tasks import kind_spec

__all__ = ["SplitData", "feature_columns", "load_shards", "load_split_data", "target_array"]


@dataclass(frozen=True)
class SplitData:
    """One split in memory: ``images [N, H, W, C]`` uint8, ``targets {task: [N] or [N, K]}``
    float32 (NaN = missing; ``[N, K]`` multi-hot for multilabel tasks) and the selected tabular
    ``features [N, F]`` float32 (``None`` when there are none)."""

    images: Tensor
    targets: dict[str, np.ndarray]
    features: Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def target_tensors(self, tasks: Sequence[TaskSchema]) -> list[Tensor]:
        """Per task, in order: ``[N]`` or ``[N, K]`` (multilabel) float32, NaN = missing."""
        return [torch.from_numpy(np.array(self.targets[t.name], dtype=np.float32))  # a copy
                for t in tasks]

    def fingerprint(self) -> str:
        """SHA-256 of the full content: every pixel, target and feature, and their shapes."""
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        for name in sorted(self.targets):
            y = np.ascontiguousarray(self.targets[name])
            h.update(f"{name}:{y.dtype}:{y.shape}".encode())
            h.update(y.tobytes())
        if self.features is not None:
            h.update(str(tuple(self.features.shape)).encode())
            h.update(np.ascontiguousarray(self.features.numpy()).tobytes())
        return h.hexdigest()


def feature_columns(schema: Mapping[str, Any]) -> list[str]:
    """The tabular feature columns the select stage kept (``schema.json``'s ``features``)."""
    return [f["column"] for f in schema.get("features", [])]


def target_array(column: Any, task: TaskSchema) -> np.ndarray:
    """``[N]`` float32, or ``[N, K]`` for a multilabel list column (a missing row is NaN)."""
    return kind_spec(task).target_array(column, task)


def load_split_data(augmented: Path, split: str, tasks: Sequence[TaskSchema],
                    features: Sequence[str] = ()) -> SplitData:
    """Read ``augmented/<split>`` (shards and labels) into a :class:`SplitData`."""
    images, labels = load_shards(augmented / split)
    feats = None
    if features:
        missing = [c for c in features if c not in labels.columns]
        if missing:
            raise DataError(f"{augmented / split}: expected the feature columns listed in "
                            f"schema.json, found {missing} missing; rerun the augment stage")
        feats = torch.from_numpy(labels[list(features)].to_numpy(dtype="float32"))
    absent = [t.name for t in tasks if t.name not in labels.columns]
    if absent:
        raise DataError(f"{augmented / split}: expected a label column per task, found none for "
                        f"{absent}; rerun the augment stage")
    return SplitData(torch.from_numpy(np.ascontiguousarray(images)),
                     {t.name: target_array(labels[t.name], t) for t in tasks}, feats)
