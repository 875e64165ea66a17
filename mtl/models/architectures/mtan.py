"""Multi-Task Attention Network (Liu, Johns & Davison 2019, CVPR)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
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

__all__ = ["MTAN"]


def _attention(in_channels: int, mid: int, out_channels: int) -> nn.Sequential:
    """The paper's attention block g: [1×1 conv, BN, ReLU, 1×1 conv, BN, sigmoid]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )


class MTAN(MultiTaskModel):
    """Multi-Task Attention Network (Liu, Johns & Davison 2019, "End-to-End Multi-Task
    Learning with Attention", CVPR), over the stages of any staged backbone.

    The backbone is the shared network; each task has a soft-attention module per stage that
    selects from the shared feature map ``s_j [B, C_j, H_j, W_j]`` (stage ``j``'s output)::

        a_t,0 = g_t,0(s_0) * s_0
        a_t,j = g_t,j(concat(s_j, f_j-1(pool(a_t,j-1)))) * s_j      (j >= 1)
        h_t = neck(a_t,J-1) [B, out_features];  z_t = concat(h_t, mlp(features))
        out_t = head_t(z_t)

    ``g`` (task-specific) is [1×1 conv, BN, ReLU, 1×1 conv, BN, sigmoid] with a bottleneck of
    ``C_j / attention_reduction`` channels (the paper keeps ``C_j``; big backbones would make
    that millions of parameters per task and stage). ``f_j`` (shared by the tasks, as in the
    paper's code) is [3×3 conv C_j -> C_j+1, BN, ReLU]; ``pool`` is an adaptive max-pool to
    stage ``j+1``'s size, applied *before* ``f_j`` (the paper pools after it: same output size,
    cheaper). Differences from the paper: the mask is computed from and applied to the stage
    output (the paper reads an intermediate layer of the block), and the backbone's neck
    (global pooling, shared) turns each task's last map into a vector.

    There is no single shared representation: ``encode`` returns the per-task
    representations stacked as ``[B, T, D]`` and ``supports_representation`` is False.
    Shared parameters: backbone (incl. its neck) + ``f`` + feature MLP; task ``t``'s:
    its attention modules ``g_t,*`` + ``head_t``.
    """

    supports_representation = False

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, int],
        num_features: int = 0,
        attention_reduction: int = 4,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        if attention_reduction < 1:
            raise ValueError(f"attention_reduction must be >= 1, got {attention_reduction}")
        if not backbone.is_staged:
            raise TypeError(f"MTAN needs a staged backbone, got {type(backbone).__name__}")
        self.backbone = backbone
        chans = backbone.stage_channels
        mids = [max(c // attention_reduction, min(c, 16)) for c in chans]
        # attention[t][j]: stage 0 sees s_0, later stages concat(s_j, f(previous attention)).
        self.attention = nn.ModuleList(
            nn.ModuleList(
                _attention(c if j == 0 else 2 * c, mids[j], c) for j, c in enumerate(chans)
            )
            for _ in heads
        )
        # shared[j]: [B, C_j, H_j+1, W_j+1] -> [B, C_j+1, H_j+1, W_j+1]
        self.shared = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[j], chans[j + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[j + 1]),
                nn.ReLU(inplace=True),
            )
            for j in range(len(chans) - 1)
        )
        self.fusion = FeatureFusion(backbone.out_features, num_features, feature_hidden)
        self.heads = TaskHeads(self.fusion.out_features, heads, head_hidden, dropout)
        self.representation_size = self.fusion.out_features

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> per-task representations ``[B, T, D]``."""
        self.fusion.check(features, x.shape[0])
        stages = self.backbone.forward_stages(x)  # s_j: [B, C_j, H_j, W_j]
        reps: list[Tensor] = []
        for task_attention in self.attention:
            assert isinstance(task_attention, nn.ModuleList)
            a: Tensor | None = None
            for j, (s, g) in enumerate(zip(stages, task_attention, strict=True)):
                if a is None:
                    inp = s
                else:
                    prev = F.adaptive_max_pool2d(a, s.shape[-2:])  # [B, C_j-1, H_j, W_j]
                    inp = torch.cat([s, self.shared[j - 1](prev)], dim=1)  # [B, 2 C_j, ...]
                a = g(inp) * s
            assert a is not None
            reps.append(self.fusion(self.backbone.neck(a), features))  # [B, D]
        return torch.stack(reps, dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, T, D]`` -> ``{task: head_task(z[:, task]) [B, K_task]}``."""
        return decode_per_task(self.heads, z)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return unique_trainable(self.backbone, self.shared, self.fusion)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.heads.task_index(task)
        return unique_trainable(self.attention[i], self.heads.heads[i])


@register_architecture("mtan")
def build_mtan(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`MTAN`."""
    return MTAN(make_backbone(), heads, num_features, **kw)
