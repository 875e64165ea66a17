"""Prediction with a trained checkpoint: the same decoding, resizing and vocabularies as training.

Not a pipeline stage: ``mtl predict`` applies ``models/model.pt`` (or a model written by ``mtl
export``: ``.onnx`` or ``.pt2`` with its sidecar JSON) to new image files and writes
one row per image with each task's prediction (class label, 0/1 label, value in original units,
or ``|``-joined tags). Files that cannot be predicted (a symlink leading outside the folder
given, a file that is not an image, an unreadable or undecodable file) are skipped and listed
with the reason; the rest are predicted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtl.checkpoint import load_checkpoint
from mtl.data.images import load_image, resize_image
from mtl.data.io import DataError
from mtl.device import select_device
from mtl.export import is_exported, load_exported
from mtl.inference import predict, prediction_columns
from mtl.models.base import MultiTaskModel
from mtl.schema import TaskSchema
from mtl.splits import feature_columns

__all__ = [
    "IMAGE_SUFFIXES",
    "OutputsFn",
    "PredictOutput",
    "collect_images",
    "predict_files",
    "predict_paths",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class PredictOutput:
    """``predictions``: ``file`` plus one column per task; ``skipped``: ``file``, ``reason``."""

    predictions: pd.DataFrame
    skipped: pd.DataFrame


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def collect_images(items: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named by ``items`` (files, or folders searched recursively) and the files
    skipped with the reason: a symlink that leads outside its folder, a file whose suffix is not
    an image's, something that is not a regular file."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in items:
        if item.is_dir():
            root = item.resolve()
            for path in sorted(item.rglob("*")):
                target = path.resolve()
                if path.is_symlink() and not _inside(target, root):
                    skipped.append((path, f"symlink leads outside {item} (to {target})"))
                elif path.is_dir():
                    continue
                elif not path.exists():
                    skipped.append((path, "broken symlink (its target does not exist)"))
                elif not path.is_file():
                    skipped.append((path, "not a regular file"))
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append((path, f"not an image file (suffix {path.suffix or 'none'!r}; "
                                          f"expected one of {sorted(IMAGE_SUFFIXES)})"))
                else:
                    files.append(path)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no image or folder at {item}")
    return files, skipped


#: ``images [N, H, W, C]`` uint8 -> raw head outputs ``{task: [N, K]}`` float32
OutputsFn = Callable[[torch.Tensor], dict[str, np.ndarray]]


def predict_files(model: MultiTaskModel | OutputsFn, tasks: Sequence[TaskSchema],
                  files: Sequence[Path], in_channels: int, image_size: tuple[int, int],
                  device: torch.device, batch_size: int = 256) -> PredictOutput:
    """Decode, resize and predict ``files``; a file that cannot be read or decoded is skipped
    with the reason instead of stopping the others.

    ``model`` is an eager model, or any function from uint8 images to raw head outputs (an
    exported model's ``predict``): both are decoded by the same
    :func:`mtl.inference.prediction_columns`.
    """
    mode = "L" if in_channels == 1 else "RGB"
    images: list[np.ndarray] = []  # each [H, W, C] uint8 at image_size
    ok: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for f in files:
        if not os.access(f, os.R_OK):
            skipped.append((f, "unreadable (permission denied)"))
            continue
        try:
            images.append(resize_image(load_image(f, mode), image_size))
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            skipped.append((f, f"unreadable image ({type(exc).__name__}: {exc})"))
            continue
        ok.append(f)
    skipped_frame = pd.DataFrame({"file": [str(p) for p, _ in skipped],
                                  "reason": [r for _, r in skipped]})
    if not ok:
        return PredictOutput(pd.DataFrame({"file": []}), skipped_frame)
    batch = torch.from_numpy(np.stack(images))
    outputs = (predict(model.to(device), batch, device, batch_size)
               if isinstance(model, MultiTaskModel) else model(batch))
    frame = prediction_columns(tasks, outputs)
    frame.insert(0, "file", [str(f) for f in ok])
    return PredictOutput(frame, skipped_frame)


def predict_paths(model_path: Path, items: Sequence[Path], device: str) -> PredictOutput:
    """``mtl predict``: load the checkpoint or exported model, collect the images, predict;
    skipped files listed. An exported model (``.onnx``, ``.pt2``) runs on the CPU."""
    model: MultiTaskModel | OutputsFn
    if is_exported(model_path):
        exported = load_exported(model_path)
        has_features = exported.num_features > 0
        model, tasks = exported.predict, exported.tasks
        in_channels, size = exported.in_channels, exported.image_size
    else:
        ckpt = load_checkpoint(model_path)
        has_features = bool(feature_columns(ckpt.schema))
        model, tasks, in_channels = ckpt.model, ckpt.tasks, int(ckpt.meta["in_channels"])
        size = (int(ckpt.meta["image_size"][0]), int(ckpt.meta["image_size"][1]))
    if has_features:
        raise DataError(f"{model_path} was trained with tabular features; predicting from "
                        "images alone is not possible for it")
    files, skipped = collect_images(items)
    if not files:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
        raise DataError(f"no images found in {[str(i) for i in items]}"
                        + (f" (skipped: {reasons})" if reasons else ""))
    out = predict_files(model, tasks, files, in_channels, size,
                        select_device("cpu" if is_exported(model_path) else device))
    collected = pd.DataFrame({"file": [str(p) for p, _ in skipped],
                              "reason": [r for _, r in skipped]})
    all_skipped = pd.concat([collected, out.skipped], ignore_index=True)
    if out.predictions.empty:
        reasons = "; ".join(f"{f}: {r}" for f, r in all_skipped.head(5).itertuples(index=False))
        raise DataError(f"none of the {len(files)} image file(s) in {[str(i) for i in items]} "
                        f"could be read ({reasons})")
    return PredictOutput(out.predictions, all_skipped)
