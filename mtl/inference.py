"""Inference primitives shared by train (validation), evaluate and predict.

``to_model_input`` is the one input normalisation, ``predict`` the one batched forward pass and
``decode`` / ``prediction_columns`` the one decoder of head outputs (per task kind, through
:data:`mtl.tasks.KINDS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mtl.models.base import MultiTaskModel
from mtl.schema import TaskSchema
from mtl.tasks import kind_spec

__all__ = ["decode", "predict", "prediction_columns", "to_model_input"]


def to_model_input(images: Tensor, device: torch.device) -> Tensor:
    """``[B, H, W, C]`` uint8 -> ``[B, C, H, W]`` float in [-1, 1] on ``device``."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


@torch.no_grad()
def predict(model: MultiTaskModel, images: Tensor, device: torch.device, batch_size: int,
            features: Tensor | None = None) -> dict[str, np.ndarray]:
    """Raw head outputs for every image: ``{task: [N, K]}`` float32 numpy arrays.

    ``images`` is ``[N, H, W, C]`` uint8; ``features [N, F]`` are the tabular features chosen by
    the select stage, if any.
    """
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        f = None if features is None else features[start:start + batch_size].to(device)
        out = model(to_model_input(images[start:start + batch_size], device), f)
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
