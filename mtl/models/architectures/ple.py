"""Progressive Layered Extraction (Tang et al. 2020, RecSys)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.architectures.cgc import ExtractionLayer
from mtl.models.architectures.common import FeatureFusion, TaskHeads, check_heads, unique_trainable
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["PLE"]


class PLE(MultiTaskModel):
    """Progressive Layered Extraction (Tang, Liu, Zhao & Gong 2020, "Progressive Layered
    Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
    Recommendations", RecSys): ``num_levels`` stacked :class:`ExtractionLayer` s (CGC is one)::

        h = concat(backbone(x), mlp(features)) [B, D];   x_t^0 = s^0 = h
        level k: E_t^k = experts_t^k(x_t^k-1), E_s^k = experts_s^k(s^k-1)    [B, m, E_d]
                 x_t^k = gate_t^k(x_t^k-1) mixes [E_s^k, E_t^k]                  [B, E_d]
                 s^k   = gate_s^k(s^k-1) mixes [E_s^k, E_1^k, ..., E_T^k]         (k < L only)
        out_t = tower_t(x_t^L) [B, K_t]

    Which parameters only one task's loss reaches (task ``t``'s parameters): the last level's
    task-``t`` experts and gate, ``gate_t^(L-1)`` (``x_t^(L-1)`` feeds only level ``L``'s
    task-``t`` experts and gate) and tower ``t``. Everything else is shared: the lower levels'
    task experts feed the shared gate, hence every task.

    Representation (``encode``, for the representation backend): every tensor the task
    parameters read from below, concatenated into one ``z [B, representation_size]``:
    the inputs of the level-(L-1) task gates (``h`` once when ``L == 2``, else each
    ``x_t^(L-2)``), level L-1's shared and task experts' outputs, and level L's shared
    experts' outputs on ``s^(L-1)``; for ``L == 1`` it is CGC's ``[h, E_s]``. All shared
    parameters lie below ``z`` and only task parameters above it, so no parameter gets its
    gradient twice; every task's gradient w.r.t. ``z`` reaches the shared experts' slices, so
    the task gradients are not orthogonal by construction.

    Differences: experts are one-layer ReLU MLPs on the backbone's (fused) features (the
    paper's are MLPs on the raw features; LibMTL splits a ResNet into levels, one backbone copy
    per expert, and has no shared gate: its shared experts read each task's input). The
    defaults (2 levels, 1 shared and 1 task expert per level) are the smallest PLE that is not
    CGC, not the paper's experimental settings.
    """

    supports_representation = True

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, int],
        num_features: int = 0,
        num_levels: int = 2,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_features: int = 128,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.backbone = backbone
        self.fusion = FeatureFusion(backbone.out_features, num_features, feature_hidden)
        d, t, e = self.fusion.out_features, len(heads), expert_features
        self.num_levels = num_levels
        self.levels = nn.ModuleList(
            ExtractionLayer(
                d if k == 0 else e,
                t,
                num_shared_experts,
                num_task_experts,
                e,
                shared_gate=k < num_levels - 1,
            )
            for k in range(num_levels)
        )
        self.towers = TaskHeads(e, heads, head_hidden, dropout)
        m_s, m_t = num_shared_experts * e, num_task_experts * e
        # z's slices, in order: gate inputs, level L-1's shared and task experts, level L's
        # shared experts (sizes per sample).
        if num_levels == 1:
            self._split = [d, 0, 0, m_s]
        else:
            gate_in = d if num_levels == 2 else t * e
            self._split = [gate_in, m_s, t * m_t, m_s]
        self.representation_size = sum(self._split)

    def _level(self, k: int) -> ExtractionLayer:
        layer = self.levels[k]
        assert isinstance(layer, ExtractionLayer)
        return layer

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> ``z [B, representation_size]``."""
        h = self.fusion(self.backbone(x), features)  # [B, D]
        num_tasks, big = len(self.towers.tasks), self.num_levels
        if big == 1:
            return torch.cat([h, self._level(0).shared(h).flatten(1)], dim=1)
        xs, s = [h] * num_tasks, h
        for k in range(big - 2):  # levels entirely below z
            layer = self._level(k)
            shared = layer.shared(s)  # [B, m_s, E_d]
            own = [layer.task(i, xi) for i, xi in enumerate(xs)]  # T × [B, m_t, E_d]
            s = layer.mix_shared(s, shared, own)
            xs = [layer.mix_task(i, xi, shared, own[i]) for i, xi in enumerate(xs)]
        below = self._level(big - 2)  # level L-1: its task gates are above z
        shared = below.shared(s)
        own = [below.task(i, xi) for i, xi in enumerate(xs)]
        s = below.mix_shared(s, shared, own)  # s^(L-1) [B, E_d]
        top_shared = self._level(big - 1).shared(s)  # [B, m_s, E_d]
        gate_in = h if big == 2 else torch.cat(xs, dim=1)  # [B, D] or [B, T·E_d]
        parts = [gate_in, shared.flatten(1), torch.cat(own, dim=1).flatten(1)]
        return torch.cat([*parts, top_shared.flatten(1)], dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, representation_size]`` -> the task-specific rest -> ``{task: [B, K]}``."""
        if z.dim() != 2 or z.shape[1] != self.representation_size:
            raise ValueError(f"expected z [B, {self.representation_size}], got {tuple(z.shape)}")
        gate_in, below_shared, below_own, top_shared = z.split(self._split, dim=1)
        top = self._level(self.num_levels - 1)
        width, num_tasks = top.width, len(self.towers.tasks)
        top_shared = top_shared.reshape(-1, top.num_shared, width)  # [B, m_s, E_d]
        if self.num_levels > 1:
            below = self._level(self.num_levels - 2)
            below_shared = below_shared.reshape(-1, below.num_shared, width)
            # [B, T, m_t, E_d]: level L-1's task experts
            below_own = below_own.reshape(-1, num_tasks, below.num_task, width)
        out: dict[str, Tensor] = {}
        for i, (task, tower) in enumerate(zip(self.towers.tasks, self.towers.heads, strict=True)):
            if self.num_levels == 1:
                xi = gate_in  # h
            else:
                gi = gate_in if self.num_levels == 2 else gate_in[:, i * width : (i + 1) * width]
                xi = below.mix_task(i, gi, below_shared, below_own[:, i])  # x_t^(L-1)
            out[task] = tower(top.mix_task(i, xi, top_shared, top.task(i, xi)))
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        parts: list[nn.Module] = [self.backbone, self.fusion, *self.levels[: self.num_levels - 2]]
        if self.num_levels > 1:
            below = self._level(self.num_levels - 2)
            assert below.shared_gate is not None
            parts += [below.shared_experts, below.task_experts, below.shared_gate]
        parts.append(self._level(self.num_levels - 1).shared_experts)
        return unique_trainable(*parts)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.towers.task_index(task)
        top = self._level(self.num_levels - 1)
        parts = [top.task_experts[i], top.task_gates[i], self.towers.heads[i]]
        if self.num_levels > 1:
            parts.append(self._level(self.num_levels - 2).task_gates[i])
        return unique_trainable(*parts)


@register_architecture("ple")
def build_ple(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`PLE`."""
    return PLE(make_backbone(), heads, num_features, **kw)
