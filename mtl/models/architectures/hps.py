"""Hard parameter sharing (Caruana 1993; Ruder 2017, "An Overview of Multi-Task Learning in
Deep Neural Networks"): one shared backbone, one head per task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from mtl.models.architectures.common import FeatureFusion, TaskHeads, check_heads, unique_trainable
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["HardParameterSharing"]


class HardParameterSharing(MultiTaskModel):
    """Hard parameter sharing (Caruana 1993, "Multitask Learning: A Knowledge-Based Source of
    Inductive Bias"; the MTL baseline of Ruder 2017)::

        x [B, C, H, W] -> backbone -> h [B, D]
        z = concat(h, mlp(features)) [B, D + F_h]   (just h when num_features == 0)
        out_t = head_t(z) [B, K_t]

    ``z`` is the shared representation (``encode``). Shared parameters: backbone + feature MLP;
    task ``t``'s parameters: ``head_t``.
    """

    supports_representation = True

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, int],
        num_features: int = 0,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        self.backbone = backbone
        self.fusion = FeatureFusion(backbone.out_features, num_features, feature_hidden)
        self.heads = TaskHeads(self.fusion.out_features, heads, head_hidden, dropout)
        self.representation_size = self.fusion.out_features

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> shared ``z [B, D']``."""
        return self.fusion(self.backbone(x), features)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, D']`` -> ``{task: [B, K_task]}``."""
        return self.heads(z)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return unique_trainable(self.backbone, self.fusion)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return unique_trainable(self.heads[task])


@register_architecture("hps")
def build_hps(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`HardParameterSharing`."""
    return HardParameterSharing(make_backbone(), heads, num_features, **kw)
