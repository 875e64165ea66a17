"""Customized Gate Control (Tang et al. 2020, RecSys), and its extraction layer (PLE's level)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.architectures.common import FeatureFusion, TaskHeads, check_heads, unique_trainable
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["CGC", "ExtractionLayer"]


class ExtractionLayer(nn.Module):
    """One extraction layer of CGC / PLE (Tang et al. 2020), over ``T`` tasks.

    Experts are one-layer ReLU MLPs ``in_features -> expert_features``; all experts of a group
    are one ``Linear`` (equivalent to separate experts, one matmul). With ``x_t`` the input of
    task ``t`` and ``s`` the shared input (the same tensor at the first level)::

        E_t = ReLU(W_t x_t) [B, m_t, E_d]           (task t's experts)
        E_s = ReLU(W_s s)   [B, m_s, E_d]           (shared experts)
        g_t = softmax(G_t x_t) [B, m_s + m_t]       (task t's gate: its own and the shared experts)
        x'_t = sum_i g_t[:, i] [E_s, E_t][:, i]     [B, E_d]
        g_s = softmax(G_s s) [B, m_s + T m_t]       (shared gate: every expert; PLE's lower levels)
        s' = sum_i g_s[:, i] [E_s, E_1, ..., E_T][:, i]

    The gate outputs list the shared experts first (as LibMTL's ``torch.cat``).
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_shared_experts: int,
        num_task_experts: int,
        expert_features: int,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        if num_tasks < 1 or num_shared_experts < 1 or num_task_experts < 1 or expert_features < 1:
            raise ValueError(
                "an extraction layer needs >= 1 task, >= 1 shared and >= 1 task-specific expert "
                f"and expert_features >= 1; got num_tasks={num_tasks}, num_shared_experts="
                f"{num_shared_experts}, num_task_experts={num_task_experts}, "
                f"expert_features={expert_features}"
            )
        self.num_shared, self.num_task, self.width = (
            num_shared_experts,
            num_task_experts,
            expert_features,
        )
        self.shared_experts = nn.Linear(in_features, num_shared_experts * expert_features)
        self.task_experts = nn.ModuleList(
            nn.Linear(in_features, num_task_experts * expert_features) for _ in range(num_tasks)
        )
        self.task_gates = nn.ModuleList(
            nn.Linear(in_features, num_shared_experts + num_task_experts) for _ in range(num_tasks)
        )
        self.shared_gate: nn.Linear | None = None
        if shared_gate:
            self.shared_gate = nn.Linear(
                in_features, num_shared_experts + num_tasks * num_task_experts
            )

    def shared(self, s: Tensor) -> Tensor:
        """``s [B, in]`` -> shared experts' outputs ``[B, m_s, E_d]``."""
        return torch.relu(self.shared_experts(s)).reshape(-1, self.num_shared, self.width)

    def task(self, i: int, x: Tensor) -> Tensor:
        """``x [B, in]`` -> task ``i``'s experts' outputs ``[B, m_t, E_d]``."""
        return torch.relu(self.task_experts[i](x)).reshape(-1, self.num_task, self.width)

    def mix_task(self, i: int, x: Tensor, shared: Tensor, own: Tensor) -> Tensor:
        """Task ``i``'s gate on its input ``x [B, in]`` mixes ``[shared, own]`` -> ``[B, E_d]``."""
        weights = torch.softmax(self.task_gates[i](x), dim=-1)  # [B, m_s + m_t]
        experts = torch.cat([shared, own], dim=1)  # [B, m_s + m_t, E_d]
        return torch.einsum("be,bed->bd", weights, experts)

    def mix_shared(self, s: Tensor, shared: Tensor, own: Sequence[Tensor]) -> Tensor:
        """The shared gate on ``s [B, in]`` mixes every expert -> ``[B, E_d]``."""
        if self.shared_gate is None:
            raise RuntimeError("this extraction layer was built without a shared gate")
        weights = torch.softmax(self.shared_gate(s), dim=-1)  # [B, m_s + T m_t]
        experts = torch.cat([shared, *own], dim=1)  # [B, m_s + T m_t, E_d]
        return torch.einsum("be,bed->bd", weights, experts)


class CGC(MultiTaskModel):
    """Customized Gate Control (Tang, Liu, Zhao & Gong 2020, "Progressive Layered Extraction
    (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys),
    one :class:`ExtractionLayer` without a shared gate::

        h = concat(backbone(x), mlp(features)) [B, D]
        E_s = ReLU(W_s h) [B, m_s, E_d]     (shared experts)
        E_t = ReLU(W_t h) [B, m_t, E_d]     (task t's experts)
        out_t = tower_t(sum_i softmax(G_t h)[:, i] [E_s, E_t][:, i]) [B, K_t]

    Representation (``encode``, for the representation backend): ``z = concat(h, E_s)``
    ``[B, D + m_s·E_d]``: everything every task's loss depends on (backbone, feature MLP,
    shared experts) lies below ``z``; task ``t``'s experts, gate and tower read ``h`` from
    ``z`` above it and only task ``t``'s loss reaches them. So no parameter gets its gradient
    twice, and the task gradients w.r.t. ``z`` overlap on both ``h`` and ``E_s``.
    Shared parameters: backbone + feature MLP + shared experts; task ``t``'s: its experts,
    its gate, its tower.

    Differences from the paper and from LibMTL's port: experts are one-layer ReLU MLPs on the
    image backbone's (fused) features, as in :class:`~mtl.models.architectures.MMoE` here
    (the paper's experts are MLPs on the raw input features; LibMTL makes each expert a whole
    backbone copy). The expert counts are not taken from the paper's experiments (LibMTL has
    no defaults either): 1 shared and 1 per task give each task two experts to choose from.
    """

    supports_representation = True

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, int],
        num_features: int = 0,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_features: int = 128,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        self.backbone = backbone
        self.fusion = FeatureFusion(backbone.out_features, num_features, feature_hidden)
        d = self.fusion.out_features
        self.layer = ExtractionLayer(
            d, len(heads), num_shared_experts, num_task_experts, expert_features, shared_gate=False
        )
        self.towers = TaskHeads(expert_features, heads, head_hidden, dropout)
        self.gate_input_size = d
        self.representation_size = d + num_shared_experts * expert_features

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> ``z = [h, E_s] [B, D + m_s·E_d]``."""
        h = self.fusion(self.backbone(x), features)  # [B, D]
        return torch.cat([h, self.layer.shared(h).flatten(1)], dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, D + m_s·E_d]`` -> per-task experts, gates, towers -> ``{task: [B, K]}``."""
        if z.dim() != 2 or z.shape[1] != self.representation_size:
            raise ValueError(f"expected z [B, {self.representation_size}], got {tuple(z.shape)}")
        h, flat = z.split([self.gate_input_size, z.shape[1] - self.gate_input_size], dim=1)
        shared = flat.reshape(-1, self.layer.num_shared, self.layer.width)  # [B, m_s, E_d]
        out: dict[str, Tensor] = {}
        for i, (task, tower) in enumerate(zip(self.towers.tasks, self.towers.heads, strict=True)):
            out[task] = tower(self.layer.mix_task(i, h, shared, self.layer.task(i, h)))
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return unique_trainable(self.backbone, self.fusion, self.layer.shared_experts)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.towers.task_index(task)
        return unique_trainable(
            self.layer.task_experts[i], self.layer.task_gates[i], self.towers.heads[i]
        )


@register_architecture("cgc")
def build_cgc(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`CGC`."""
    return CGC(make_backbone(), heads, num_features, **kw)
