"""The model zoo: backbones × multi-task architectures, built by name.

``create_model("hps", "smallcnn", tasks, in_channels=1)`` is the pipeline's entry point; see
:mod:`mtl.models.backbones` and :mod:`mtl.models.architectures` for the registries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl.models.architectures import (
    MTAN,
    CrossStitch,
    HardParameterSharing,
    MMoE,
    create_architecture,
    list_architectures,
    register_architecture,
)
from mtl.models.backbones import (
    PretrainedReport,
    create_backbone,
    list_backbones,
    load_pretrained,
    register_backbone,
)
from mtl.models.base import Backbone, MultiTaskModel
from mtl.tasks import TaskSchema, head_size

__all__ = [
    "MTAN",
    "Backbone",
    "CrossStitch",
    "HardParameterSharing",
    "MMoE",
    "MultiTaskModel",
    "PretrainedReport",
    "create_architecture",
    "create_backbone",
    "create_model",
    "list_architectures",
    "list_backbones",
    "load_pretrained",
    "register_architecture",
    "register_backbone",
]


def create_model(
    architecture: str,
    backbone: str,
    tasks: Sequence[TaskSchema],
    in_channels: int,
    num_features: int = 0,
    pretrained: str | None = None,
    architecture_kwargs: Mapping[str, Any] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> MultiTaskModel:
    """Build a multi-task model with one head per task (``head_size(task)`` outputs each).

    ``architecture`` / ``backbone`` are registered names (``list_architectures()``,
    ``list_backbones()``); ``num_features`` is the width of the tabular features given to
    ``forward`` (0: none); ``pretrained`` is a local backbone state-dict file (never
    downloaded); the kwargs mappings go to the architecture and to the backbone builder (e.g.
    ``{"small_input": True}``). Output keys follow the order of ``tasks``.
    """
    if not tasks:
        raise ValueError("create_model needs at least one task")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate task names: {duplicates}")
    return create_architecture(
        architecture,
        backbone,
        {t.name: head_size(t) for t in tasks},
        in_channels,
        num_features=num_features,
        pretrained=pretrained,
        backbone_kwargs=backbone_kwargs,
        **dict(architecture_kwargs or {}),
    )
