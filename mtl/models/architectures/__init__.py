"""Multi-task architectures, one per module, registered by name (timm-style).

``create_architecture(name, backbone_name, heads, in_channels, ...)`` builds one;
``list_architectures()`` names them: ``hps``, ``mmoe``, ``cgc``, ``ple`` and ``dselect_k`` expose
a shared representation, ``mtan``, ``cross_stitch`` and ``ltb`` do not
(``supports_representation = False``).
"""

from __future__ import annotations

# Importing the architecture modules registers them.
from mtl.models.architectures import cgc, cross_stitch, dselect_k, hps, ltb, mmoe, mtan, ple
from mtl.models.architectures.cgc import CGC, ExtractionLayer
from mtl.models.architectures.common import FeatureFusion, TaskHeads
from mtl.models.architectures.cross_stitch import CrossStitch, CrossStitchUnit
from mtl.models.architectures.dselect_k import DSelectK, DSelectKGate
from mtl.models.architectures.hps import HardParameterSharing
from mtl.models.architectures.ltb import LTB
from mtl.models.architectures.mmoe import MMoE
from mtl.models.architectures.mtan import MTAN
from mtl.models.architectures.ple import PLE
from mtl.models.architectures.registry import (
    ArchitectureBuilder,
    BackboneFactory,
    create_architecture,
    list_architectures,
    register_architecture,
)

__all__ = [
    "CGC",
    "LTB",
    "MTAN",
    "PLE",
    "ArchitectureBuilder",
    "BackboneFactory",
    "CrossStitch",
    "CrossStitchUnit",
    "DSelectK",
    "DSelectKGate",
    "ExtractionLayer",
    "FeatureFusion",
    "HardParameterSharing",
    "MMoE",
    "TaskHeads",
    "cgc",
    "create_architecture",
    "cross_stitch",
    "dselect_k",
    "hps",
    "list_architectures",
    "ltb",
    "mmoe",
    "mtan",
    "ple",
    "register_architecture",
]
