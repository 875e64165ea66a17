"""EfficientNet-B0 backbone (Tan & Le 2019) from ``torchvision.models`` with ``weights=None``.

Same layout and adaptations as MobileNetV3 (see :mod:`mtl.models.backbones.mobilenet`):
``features`` + global average pooling, 1280 features; stages start at the stride-2 MBConv
stages (output strides 4, 8, 16, 32); ``in_channels != 3`` replaces the 3×3 stride-2 stem
conv; ``small_input=True`` sets the stem stride and the first stride-2 stage's stride to 1
(output stride 8). ``stochastic_depth_prob`` (default 0.2) can be passed as a keyword.
"""

from __future__ import annotations

from typing import Any

from mtl.models.backbones.mobilenet import InvertedResidualBackbone
from mtl.models.backbones.registry import register_backbone
from mtl.models.base import Backbone

__all__ = ["efficientnet_b0"]


@register_backbone("efficientnet_b0")
def efficientnet_b0(in_channels: int, small_input: bool = False, **kw: Any) -> Backbone:
    """torchvision ``efficientnet_b0`` (weights=None); see :class:`InvertedResidualBackbone`."""
    return InvertedResidualBackbone("efficientnet_b0", in_channels, small_input=small_input, **kw)
