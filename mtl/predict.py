"""Prediction with a trained checkpoint: the same decoding, resizing and vocabularies as training.

Not a pipeline stage: ``mtl predict`` applies ``models/model.pt`` to new image files and writes
one row per image with each task's prediction (class label, 0/1 label, value in original units,
or ``|``-joined tags).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtl.augment.pipeline import resize_image
from mtl.data.images import load_image
from mtl.evaluate import predict
from mtl.models.base import MultiTaskModel
from mtl.schema import TaskKind, TaskSchema

__all__ = ["decode_predictions", "predict_files"]


def decode_predictions(tasks: Sequence[TaskSchema], outputs: dict[str, np.ndarray]) -> pd.DataFrame:
    """Head outputs -> one column per task in the user's own label vocabulary."""
    cols: dict[str, Any] = {}
    for t in tasks:
        out = outputs[t.name]
        if t.kind is TaskKind.MULTICLASS:
            cols[t.name] = [t.classes[i] for i in out.argmax(1)]
            cols[f"{t.name}_confidence"] = _softmax(out).max(1)
        elif t.kind is TaskKind.BINARY:
            cols[t.name] = [t.classes[int(v > 0)] for v in out[:, 0]]
            cols[f"{t.name}_probability"] = 1 / (1 + np.exp(-out[:, 0]))
        elif t.kind is TaskKind.MULTILABEL:
            cols[t.name] = ["|".join(c for c, on in zip(t.classes, row > 0, strict=True) if on)
                            for row in out]
        else:
            cols[t.name] = out[:, 0] * t.std + t.mean
    return pd.DataFrame(cols)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return np.asarray(e / e.sum(1, keepdims=True))


def predict_files(model: MultiTaskModel, tasks: Sequence[TaskSchema], files: Sequence[Path],
                  in_channels: int, image_size: tuple[int, int], device: torch.device,
                  batch_size: int = 256, features: torch.Tensor | None = None) -> pd.DataFrame:
    """Decode, resize and predict ``files``; returns ``file`` plus one column per task."""
    mode = "L" if in_channels == 1 else "RGB"
    images = np.stack([resize_image(load_image(f, mode), image_size) for f in files])
    outputs = predict(model.to(device), torch.from_numpy(images), device, batch_size, features)
    frame = decode_predictions(tasks, outputs)
    frame.insert(0, "file", [str(f) for f in files])
    return frame
