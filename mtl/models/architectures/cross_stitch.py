"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert 2016, CVPR)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.architectures.common import (
    FeatureFusion,
    TaskHeads,
    check_heads,
    decode_per_task,
    unique_trainable,
)
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["CrossStitch", "CrossStitchUnit"]


class CrossStitchUnit(nn.Module):
    """A cross-stitch unit over T columns: ``x'_t = sum_s alpha[t, s, c] * x_s`` per channel c.

    Initialised as in the paper with ``alpha_S = init_self`` on the diagonal and the rest
    ``(1 - init_self) / (T - 1)`` off it (each output is a convex mix of the columns).
    """

    def __init__(self, num_columns: int, channels: int, init_self: float = 0.9) -> None:
        super().__init__()
        t = num_columns
        off = (1.0 - init_self) / (t - 1) if t > 1 else 0.0
        alpha = torch.full((t, t), off)
        alpha.fill_diagonal_(init_self if t > 1 else 1.0)
        # [T, T] -> [T, T, C]: one mixing matrix per channel
        self.alpha = nn.Parameter(alpha[:, :, None].repeat(1, 1, channels))

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """``T`` maps ``[B, C, H, W]`` -> ``T`` mixed maps of the same shape."""
        stacked = torch.stack(list(xs), dim=0)  # [T, B, C, H, W]
        mixed = torch.einsum("tsc,sbchw->tbchw", self.alpha.to(stacked.dtype), stacked)
        return list(mixed.unbind(0))


class CrossStitch(MultiTaskModel):
    """Cross-stitch network (Misra et al. 2016, "Cross-stitch Networks for Multi-task
    Learning", CVPR): one backbone column per task, linked after every stage by a
    :class:`CrossStitchUnit`::

        h_t = stem_t(x);  for each stage j: h_t = stage_t,j(h_t);  (h_1..h_T) = cs_j(h_1..h_T)
        z_t = concat(neck_t(h_t), mlp(features));  out_t = head_t(z_t)

    Every column gets the same (optionally pretrained) weights at the start. Because a unit
    follows the last stage too, every column's stem and stages (and every unit) affect every
    task: those are the shared parameters, with the feature MLP. Task ``t``'s parameters are
    its column's neck (e.g. ConvNeXt's final LayerNorm; nothing for a ResNet) and ``head_t``.
    No single shared representation: ``encode`` returns ``[B, T, D]`` and
    ``supports_representation`` is False. Cost: T backbones.
    """

    supports_representation = False

    def __init__(
        self,
        backbones: Sequence[Backbone],
        heads: Mapping[str, int],
        num_features: int = 0,
        init_self: float = 0.9,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        if len(backbones) != len(heads):
            raise ValueError(f"need one backbone column per task: {len(backbones)} vs {len(heads)}")
        first = backbones[0]
        if not all(b.is_staged for b in backbones):
            raise TypeError("cross-stitch needs staged backbones (Backbone.set_structure)")
        for b in backbones[1:]:
            if b.stage_channels != first.stage_channels or b.out_features != first.out_features:
                raise ValueError("all cross-stitch columns must have the same architecture")
        self.columns = nn.ModuleList(backbones)
        self.units = nn.ModuleList(
            CrossStitchUnit(len(backbones), c, init_self) for c in first.stage_channels
        )
        self.fusion = FeatureFusion(first.out_features, num_features, feature_hidden)
        self.heads = TaskHeads(self.fusion.out_features, heads, head_hidden, dropout)
        self.representation_size = self.fusion.out_features

    def _columns(self) -> list[Backbone]:
        return [c for c in self.columns if isinstance(c, Backbone)]

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> per-task representations ``[B, T, D]``."""
        self.fusion.check(features, x.shape[0])
        columns = self._columns()
        hs = [col.stem(x) for col in columns]
        for j, unit in enumerate(self.units):
            hs = unit([col.stages[j](h) for col, h in zip(columns, hs, strict=True)])
        reps = [self.fusion(col.neck(h), features) for col, h in zip(columns, hs, strict=True)]
        return torch.stack(reps, dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, T, D]`` -> ``{task: head_task(z[:, task]) [B, K_task]}``."""
        return decode_per_task(self.heads, z)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        trunks = [part for col in self._columns() for part in (col.stem, *col.stages)]
        return unique_trainable(*trunks, self.units, self.fusion)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.heads.task_index(task)
        return unique_trainable(self._columns()[i].neck, self.heads.heads[i])


@register_architecture("cross_stitch")
def build_cross_stitch(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`CrossStitch`: one fresh backbone column per task."""
    return CrossStitch([make_backbone() for _ in heads], heads, num_features, **kw)
