"""MobileNetV3 backbones (Howard et al. 2019) from ``torchvision.models`` with ``weights=None``.

The backbone is ``features`` + global average pooling (576 features for ``small``, 960 for
``large``); the classifier MLP (``Linear -> Hardswish -> Dropout -> Linear``) is dropped.
Stages: a new stage starts at each stride-2 block (output strides 4, 8, 16, 32); the blocks
before the first one join the stem, the final 1×1 expansion conv joins the last stage.

Adaptations: ``in_channels != 3`` replaces the stem conv (3×3 stride 2) by one with
``in_channels`` inputs; ``small_input=True`` sets the stem stride and the first stride-2
block's stride to 1, so the output stride is 8 (as for the small-input ResNet). The stem keeps
its 3×3 kernel, so an ImageNet stem still loads. State-dict keys are torchvision's
(``features.0.0.weight``, ...).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mtl.models.backbones._adapt import (
    last_conv_channels,
    make_conv_like,
    split_at_strides,
    unstride_first,
)
from mtl.models.backbones.registry import register_backbone
from mtl.models.base import Backbone

__all__ = ["InvertedResidualBackbone"]


class InvertedResidualBackbone(Backbone):
    """A torchvision MobileNetV3 / EfficientNet trunk (``features`` + pooling).

    Both families share the layout: ``features[0]`` is a ``Conv2dNormActivation`` stem, then
    inverted-residual blocks (or stages of them), then a 1×1 expansion conv.
    """

    stem_weight_key = "features.0.0.weight"

    def __init__(self, arch: str, in_channels: int, small_input: bool = False, **kw: Any) -> None:
        super().__init__()
        # Imported here, not at module level: every `mtl` stage imports the backbone
        # registry, and torchvision (with torch._dynamo) costs about 3 s CPU per process.
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, **kw)
        features: nn.Sequential = net.features
        stem = features[0]  # Conv2dNormActivation: [conv, norm, (activation)]
        assert isinstance(stem, nn.Sequential)
        stem_conv = stem[0]
        assert isinstance(stem_conv, nn.Conv2d)
        # Group before changing strides: the grouping follows the ImageNet layout.
        lead, stage_blocks = split_at_strides(list(features)[1:])
        if small_input:
            stem[0] = make_conv_like(stem_conv, in_channels, stride=1)
            for block in stage_blocks[0][:1]:
                unstride_first(block)
        elif in_channels != 3:
            stem[0] = make_conv_like(stem_conv, in_channels)
        self.features = features
        self.avgpool = net.avgpool
        stages = [nn.Sequential(*blocks) for blocks in stage_blocks]
        self.set_structure(
            stem=nn.Sequential(features[0], *lead),
            stages=stages,
            # [B, C, h, w] -> [B, C, 1, 1] -> [B, C]
            neck=nn.Sequential(self.avgpool, nn.Flatten(1)),
            stage_channels=[last_conv_channels(s) for s in stages],
            out_features=last_conv_channels(stages[-1]),
        )


def _builder(arch: str) -> None:
    @register_backbone(arch)
    def build(in_channels: int, small_input: bool = False, **kw: Any) -> Backbone:
        return InvertedResidualBackbone(arch, in_channels, small_input=small_input, **kw)

    build.__doc__ = f"torchvision ``{arch}`` (weights=None); see :class:`InvertedResidualBackbone`."


for _arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
    _builder(_arch)
