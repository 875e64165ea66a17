"""Multi-task architectures, one per module, registered by name (timm-style).

``create_architecture(name, backbone_name, heads, in_channels, ...)`` builds one;
``list_architectures()`` names them: ``hps`` and ``mmoe`` expose a shared representation,
``mtan`` and ``cross_stitch`` do not (``supports_representation = False``).
"""

from __future__ import annotations

# Importing the architecture modules registers them.
from mtl.models.architectures import cross_stitch, hps, mmoe, mtan
from mtl.models.architectures.common import FeatureFusion, TaskHeads
from mtl.models.architectures.cross_stitch import CrossStitch, CrossStitchUnit
from mtl.models.architectures.hps import HardParameterSharing
from mtl.models.architectures.mmoe import MMoE
from mtl.models.architectures.mtan import MTAN
from mtl.models.architectures.registry import (
    ArchitectureBuilder,
    BackboneFactory,
    create_architecture,
    list_architectures,
    register_architecture,
)

__all__ = [
    "MTAN",
    "ArchitectureBuilder",
    "BackboneFactory",
    "CrossStitch",
    "CrossStitchUnit",
    "FeatureFusion",
    "HardParameterSharing",
    "MMoE",
    "TaskHeads",
    "create_architecture",
    "cross_stitch",
    "hps",
    "list_architectures",
    "mmoe",
    "mtan",
    "register_architecture",
]
