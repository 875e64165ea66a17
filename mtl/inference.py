"""Inference primitives shared by train (validation), evaluate and predict.

``to_model_input`` is the one input normalisation, ``predict`` the one batched forward pass and
``decode`` / ``prediction_columns`` the one decoder of head outputs (per task kind, through
:data:`mtl.tasks.KINDS`). ``predict`` reads its images in order through a ``DataLoader``, so
memory-mapped shards (:class:`~mtl.shards.ShardedImages`) are streamed batch by batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtl.models.base import MultiTaskModel
from mtl.schema import TaskSchema
from mtl.shards import ShardedImages
from mtl.tasks import kind_spec

__all__ = ["decode", "predict", "prediction_columns", "to_model_input"]


def to_model_input(images: Tensor, device: torch.device) -> Tensor:
    """``[B, H, W, C]`` uint8 -> ``[B, C, H, W]`` float in [-1, 1] on ``device``.

    The batch travels as uint8 (a quarter of float32's bytes) and is converted on ``device``:
    on CUDA the conversion and normalisation run on the GPU.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


class _Chunks(Dataset[tuple[Tensor, Tensor | None]]):
    """Item ``i``: images ``[B, H, W, C]`` uint8 ``i*B .. (i+1)*B`` and their features."""

    def __init__(self, images: Tensor | ShardedImages, features: Tensor | None,
                 batch_size: int) -> None:
        self.images, self.features, self.batch_size = images, features, batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | None]:
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        images = self.images[part]
        x = images if isinstance(images, Tensor) else torch.from_numpy(images)
        return x, None if self.features is None else self.features[part]


def _first(item: Any) -> Any:
    return item  # items are whole batches already (a picklable top-level function)


@torch.no_grad()
def predict(model: MultiTaskModel, images: Tensor | ShardedImages, device: torch.device,
            batch_size: int, features: Tensor | None = None,
            workers: int = 0) -> dict[str, np.ndarray]:
    """Raw head outputs for every image: ``{task: [N, K]}`` float32 numpy arrays.

    ``images`` is ``[N, H, W, C]`` uint8, in memory or memory-mapped shards; ``features
    [N, F]`` are the tabular features chosen by the select stage, if any. ``workers`` loader
    processes read the batches ahead (0: this process, one batch at a time).
    """
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {}
    loader = DataLoader(_Chunks(images, features, batch_size), batch_size=None,
                        collate_fn=_first, num_workers=workers,
                        pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers else None,
                        generator=torch.Generator().manual_seed(0))  # not the global RNG
    for x, f in loader:
        out = model(to_model_input(x, device), None if f is None else f.to(device))
        for name, o in out.items():
            chunks.setdefault(name, []).append(o.float().cpu().numpy())
    return {name: np.concatenate(c) for name, c in chunks.items()}


def decode(task: TaskSchema, output: np.ndarray) -> np.ndarray:
    """Head output ``[N, K]`` -> class index ``[N]``, multi-hot ``[N, K]`` or value ``[N]``
    (regression, in the target's original units)."""
    return kind_spec(task).decode(task, output)


def prediction_columns(tasks: Sequence[TaskSchema],
                       outputs: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Head outputs -> one column per task in the user's own label vocabulary (plus a
    confidence or probability column for single-label classification tasks)."""
    cols: dict[str, object] = {}
    for t in tasks:
        cols.update(kind_spec(t).columns(t, outputs[t.name]))
    return pd.DataFrame(cols)
