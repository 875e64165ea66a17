"""ResNet backbones (He et al. 2016) from ``torchvision.models`` with ``weights=None``.

Adaptations: ``in_channels != 3`` replaces the 7×7 stride-2 stem conv by one with
``in_channels`` inputs; ``small_input=True`` (CIFAR-style, for ~32 px images) uses a 3×3
stride-1 stem and drops the max-pool, so the output stride is 8 instead of 32 (a 32×32 image
ends as a 4×4 map rather than 1×1). Stages = ``layer1..layer4``; neck = global average pool.
State-dict keys are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``, ...).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mtl.models.backbones._adapt import last_conv_channels, make_conv_like
from mtl.models.backbones.registry import register_backbone
from mtl.models.base import Backbone

__all__ = ["ResNetBackbone"]


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, ``[B, C, H, W] -> [B, 512 or 2048]``."""

    stem_weight_key = "conv1.weight"

    def __init__(self, arch: str, in_channels: int, small_input: bool = False, **kw: Any) -> None:
        super().__init__()
        # Imported here, not at module level: every `mtl` stage imports the backbone
        # registry, and torchvision (with torch._dynamo) costs about 3 s CPU per process.
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, **kw)
        if small_input:
            net.conv1 = make_conv_like(net.conv1, in_channels, kernel_size=3, stride=1, padding=1)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = make_conv_like(net.conv1, in_channels)
        # Registered under torchvision's names so ImageNet state dicts load unchanged.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.avgpool = net.avgpool
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        self.set_structure(
            stem=nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool),
            stages=stages,
            # [B, C, h, w] -> [B, C, 1, 1] -> [B, C]
            neck=nn.Sequential(self.avgpool, nn.Flatten(1)),
            stage_channels=[last_conv_channels(s) for s in stages],
            out_features=last_conv_channels(self.layer4),
        )


def _builder(arch: str) -> None:
    @register_backbone(arch)
    def build(in_channels: int, small_input: bool = False, **kw: Any) -> Backbone:
        return ResNetBackbone(arch, in_channels, small_input=small_input, **kw)

    build.__doc__ = f"torchvision ``{arch}`` (weights=None); see :class:`ResNetBackbone`."


for _arch in ("resnet18", "resnet34", "resnet50"):
    _builder(_arch)
