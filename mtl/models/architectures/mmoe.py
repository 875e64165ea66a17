"""Multi-gate Mixture-of-Experts (Ma et al. 2018, KDD)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.architectures.common import FeatureFusion, TaskHeads, check_heads, unique_trainable
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["MMoE"]


class MMoE(MultiTaskModel):
    """Multi-gate Mixture-of-Experts (Ma et al. 2018, "Modeling Task Relationships in
    Multi-task Learning with Multi-gate Mixture-of-Experts", KDD)::

        h = concat(backbone(x), mlp(features)) [B, D]
        e_i = ReLU(W_i h + b_i) [B, E_d]                 (i = 1..num_experts, shared)
        z = concat(h, e_1, ..., e_E) [B, D + E·E_d]      (shared representation, ``encode``)
        g_t = softmax(G_t h) [B, E]                      (one gate per task, in ``decode``)
        out_t = tower_t(sum_i g_t[:, i] e_i) [B, K_t]

    ``z`` carries both what the gates read (``h``) and the expert outputs, so that every shared
    parameter (backbone, feature MLP, experts) lies below ``z`` and only task-specific ones
    (gate ``G_t``, tower ``t``) above it: a representation-level backend, which back-propagates
    one combined direction through ``z`` and each task's own gradient through its head, then
    trains the experts too. The paper's experts read the raw input features; here they read
    the image backbone's (fused) features. All experts are one
    ``Linear(D, E·E_d)`` (equivalent to E separate linear experts, one matmul).
    Shared parameters: backbone + feature MLP + experts; task ``t``'s: ``G_t`` + tower ``t``.
    """

    supports_representation = True

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, int],
        num_features: int = 0,
        num_experts: int = 4,
        expert_features: int = 128,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        if num_experts < 1 or expert_features < 1:
            raise ValueError("num_experts and expert_features must be >= 1")
        self.backbone = backbone
        self.fusion = FeatureFusion(backbone.out_features, num_features, feature_hidden)
        d = self.fusion.out_features
        self.num_experts, self.expert_features = num_experts, expert_features
        self.experts = nn.Linear(d, num_experts * expert_features)
        self.gates = nn.ModuleList(nn.Linear(d, num_experts) for _ in heads)
        self.towers = TaskHeads(expert_features, heads, head_hidden, dropout)
        self.gate_input_size = d
        self.representation_size = d + num_experts * expert_features

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> shared ``z = [h, experts] [B, D + E·E_d]``."""
        h = self.fusion(self.backbone(x), features)  # [B, D]
        experts = torch.relu(self.experts(h))  # [B, E·E_d]
        return torch.cat([h, experts], dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, D + E·E_d]`` -> per-task gates and towers -> ``{task: [B, K_task]}``."""
        if z.dim() != 2 or z.shape[1] != self.representation_size:
            raise ValueError(f"expected z [B, {self.representation_size}], got {tuple(z.shape)}")
        h, flat = z.split([self.gate_input_size, z.shape[1] - self.gate_input_size], dim=1)
        experts = flat.reshape(-1, self.num_experts, self.expert_features)  # [B, E, E_d]
        out: dict[str, Tensor] = {}
        for task, gate, tower in zip(self.towers.tasks, self.gates, self.towers.heads, strict=True):
            weights = torch.softmax(gate(h), dim=-1)  # [B, E]
            mixed = torch.einsum("be,bed->bd", weights, experts)  # [B, E_d]
            out[task] = tower(mixed)
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return unique_trainable(self.backbone, self.fusion, self.experts)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.towers.task_index(task)
        return unique_trainable(self.gates[i], self.towers.heads[i])


@register_architecture("mmoe")
def build_mmoe(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`MMoE`."""
    return MMoE(make_backbone(), heads, num_features, **kw)
