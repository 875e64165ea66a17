"""ConvNeXt-Tiny backbone (Liu et al. 2022) from ``torchvision.models`` with ``weights=None``.

Backbone = ``features`` + global average pooling + the classifier's ``LayerNorm2d`` (768
features); the final ``Linear`` is replaced by ``Identity``. Stages: the four block stages,
each with the 2×2 stride-2 downsampling layer before it (output strides 4, 8, 16, 32).

Adaptations: ``in_channels != 3`` replaces the 4×4 stride-4 patchify stem conv by one with
``in_channels`` inputs; ``small_input=True`` uses a 3×3 stride-1 stem instead (output stride 8,
as for the other small-input backbones; an ImageNet stem then does not load and is reported).
Without ``small_input`` images need >= 32 px (the map must survive three 2×2 downsamplings
after the stride-4 stem). ``stochastic_depth_prob`` (default 0.1) can be passed as a keyword.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mtl.models.backbones._adapt import last_conv_channels, make_conv_like
from mtl.models.backbones.registry import register_backbone
from mtl.models.base import Backbone

__all__ = ["ConvNeXtBackbone"]


class ConvNeXtBackbone(Backbone):
    """A torchvision ConvNeXt trunk, ``[B, C, H, W] -> [B, 768]`` for the tiny variant."""

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
        if small_input:
            stem[0] = make_conv_like(stem_conv, in_channels, kernel_size=3, stride=1, padding=1)
        elif in_channels != 3:
            stem[0] = make_conv_like(stem_conv, in_channels)
        # features = [stem, stage1, down2, stage2, down3, stage3, down4, stage4]
        stages = [features[1]] + [nn.Sequential(features[i], features[i + 1]) for i in (2, 4, 6)]
        net.classifier[2] = nn.Identity()  # the ImageNet Linear: its keys are ignored on load
        self.features = features
        self.avgpool = net.avgpool
        self.classifier = net.classifier  # [LayerNorm2d, Flatten, Identity]
        self.set_structure(
            stem=features[0],
            stages=stages,
            # [B, 768, h, w] -> pool [B, 768, 1, 1] -> LayerNorm2d -> flatten [B, 768]
            neck=nn.Sequential(self.avgpool, self.classifier),
            stage_channels=[last_conv_channels(s) for s in stages],
            out_features=last_conv_channels(stages[-1]),
        )


@register_backbone("convnext_tiny")
def convnext_tiny(in_channels: int, small_input: bool = False, **kw: Any) -> Backbone:
    """torchvision ``convnext_tiny`` (weights=None); see :class:`ConvNeXtBackbone`."""
    return ConvNeXtBackbone("convnext_tiny", in_channels, small_input=small_input, **kw)
