"""The checkpoint format (``models/model.pt``) and safe loading of every ``.pt`` file mtl reads.

A checkpoint holds the best model's ``state_dict``, the select stage's ``schema.json`` and how
to rebuild the model. Every file is read with ``torch.load(..., weights_only=True)``: a file
carrying a pickle payload (arbitrary code) is refused with :class:`CheckpointError` before
anything in it runs.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtl.schema import TaskSchema

if TYPE_CHECKING:  # annotations only: backbones load pretrained files through this module
    from mtl.config import TrainConfig
    from mtl.models.base import MultiTaskModel

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "build_checkpoint",
    "load_checkpoint",
    "safe_load",
    "save_checkpoint",
]

FORMAT = "mtl.checkpoint/1"


class CheckpointError(ValueError):
    """A ``.pt`` file that cannot be loaded safely or lacks what mtl expects."""


def safe_load(path: Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a pickle payload is refused, never executed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to load this {what}: expected tensors and plain containers only "
            f"(torch.load weights_only=True), found a pickled object ({first}). Nothing in it "
            "was run; only load files you trust, re-saved as a plain state dict.") from None


@dataclass(frozen=True)
class Checkpoint:
    """A trained model rebuilt from its checkpoint, with the checkpoint's metadata."""

    model: MultiTaskModel
    tasks: tuple[TaskSchema, ...]
    schema: dict[str, Any]
    meta: dict[str, Any]  # architecture, backbone, kwargs, in_channels, image_size, num_features
    raw: dict[str, Any]


def build_checkpoint(state_dict: Mapping[str, torch.Tensor], schema: Mapping[str, Any],
                     cfg: TrainConfig, in_channels: int, image_size: tuple[int, int] | list[int],
                     num_features: int, best_epoch: int, val_score: float) -> dict[str, Any]:
    """The checkpoint payload (``mtl.checkpoint/1``) of a trained model (with the
    ``train.distill`` settings it was trained with)."""
    return {
        "format": FORMAT,
        "state_dict": dict(state_dict),
        "schema": dict(schema),
        "model": {"architecture": cfg.architecture, "backbone": cfg.backbone,
                  "architecture_kwargs": dict(cfg.architecture_kwargs),
                  "backbone_kwargs": dict(cfg.backbone_kwargs),
                  "in_channels": in_channels, "image_size": list(image_size),
                  "num_features": num_features},
        "best_epoch": best_epoch,
        "val_score": val_score,
        # knowledge distillation from the single-task baselines (train.distill), as trained
        "distill": cfg.distill.model_dump(mode="json"),
    }


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` atomically (a kill during the write leaves no half file at ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Rebuild the trained model saved at ``path`` (``weights_only`` safe loading)."""
    from mtl.models import create_model

    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}: run the train stage first")
    raw = safe_load(path, "model checkpoint")
    if not isinstance(raw, dict) or not {"state_dict", "schema", "model"} <= raw.keys():
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: expected an mtl checkpoint with state_dict, schema and "
                              f"model, found {found}")
    tasks = tuple(TaskSchema.from_dict(d) for d in raw["schema"]["tasks"])
    m = raw["model"]
    model = create_model(m["architecture"], m["backbone"], tasks, in_channels=m["in_channels"],
                         num_features=m.get("num_features", 0),
                         architecture_kwargs=m.get("architecture_kwargs"),
                         backbone_kwargs=m.get("backbone_kwargs"))
    model.load_state_dict(raw["state_dict"])
    return Checkpoint(model, tasks, raw["schema"], m, raw)
