"""Image backbones, one family per module, registered by name (timm-style).

``create_backbone(name, in_channels, pretrained=None, **kw)`` builds one; ``list_backbones()``
names them. Every backbone is a staged :class:`~mtl.models.base.Backbone` (stem, stages, neck)
returning ``[B, out_features]``; weights are never downloaded (``pretrained`` is a local file).
"""

from __future__ import annotations

# Importing the family modules registers their backbones.
from mtl.models.backbones import convnext, efficientnet, mobilenet, resnet, smallcnn
from mtl.models.backbones.pretrained import PretrainedReport, adapt_input_conv, load_pretrained
from mtl.models.backbones.registry import (
    BackboneBuilder,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "BackboneBuilder",
    "PretrainedReport",
    "adapt_input_conv",
    "convnext",
    "create_backbone",
    "efficientnet",
    "list_backbones",
    "load_pretrained",
    "mobilenet",
    "register_backbone",
    "resnet",
    "smallcnn",
]
