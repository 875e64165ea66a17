"""DSelect-k gates over shared experts (Hazimeh et al. 2021, NeurIPS)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.architectures.common import FeatureFusion, TaskHeads, check_heads, unique_trainable
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["DSelectK", "DSelectKGate", "smooth_step"]


def smooth_step(t: Tensor, gamma: float = 1.0) -> Tensor:
    """The paper's smooth-step: 0 for ``t <= -gamma/2``, 1 for ``t >= gamma/2``, and the cubic
    ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` in between (C^1; exactly 0 or 1 in its tails, so
    a gate can reach a binary value in finite time).

    ``t`` is clamped to ``[-gamma/2, gamma/2]`` before the cubic: ``torch.where`` evaluates
    both branches and back-propagates ``0 * d(cubic)/dt`` through the unused one, and in float16
    ``3 t^2`` overflows to inf for ``|t| > ~148`` (fp16 AMP), so ``0 * inf`` would make the
    gradient NaN. The clamp changes no value (the tails are constants) and no gradient."""
    half = gamma / 2
    tc = t.clamp(-half, half)  # the cubic only ever sees its own domain
    cubic = (-2.0 / gamma**3) * tc**3 + (3.0 / (2.0 * gamma)) * tc + 0.5
    return torch.where(t <= -half, torch.zeros_like(t), torch.where(t >= half, 1, cubic))


class DSelectKGate(nn.Module):
    """One task's per-example DSelect-k gate over ``n = 2^m`` experts with ``k`` selectors.

    ``a = Z h [B, k, m]`` (selector ``i``'s ``m`` binary variables), ``r_i[e] = prod_j
    (S(a_ij) if bit j of e is 1 else 1 - S(a_ij))`` ``[B, k, n]`` (a distribution over the
    experts for any ``a``, since ``n`` is a power of 2), ``q = sum_i softmax(W h)_i r_i``
    ``[B, n]``: convex weights with at most ``k`` non-zeros once every ``S(a_ij)`` is 0 or 1.
    Initialised as LibMTL's port of the official implementation: ``Z`` uniform in
    ``±gamma/100``, ``W`` in ``±0.05``.
    """

    codes: Tensor

    def __init__(self, in_features: int, num_experts: int, num_nonzeros: int, gamma: float) -> None:
        super().__init__()
        bits = int(math.log2(num_experts))
        self.num_nonzeros, self.num_bits, self.gamma = num_nonzeros, bits, gamma
        self.z_logits = nn.Linear(in_features, num_nonzeros * bits)
        self.w_logits = nn.Linear(in_features, num_nonzeros)
        nn.init.uniform_(self.z_logits.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.z_logits.bias, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.w_logits.weight, -0.05, 0.05)
        nn.init.uniform_(self.w_logits.bias, -0.05, 0.05)
        # [n, m] bool: bit j (most significant first, as np.binary_repr) of expert e's index
        shifts = torch.arange(bits - 1, -1, -1)
        codes = (torch.arange(num_experts)[:, None] >> shifts) & 1
        self.register_buffer("codes", codes.bool(), persistent=False)

    def selectors(self, h: Tensor) -> Tensor:
        """``h [B, in]`` -> each selector's distribution over the experts ``[B, k, n]``."""
        a = self.z_logits(h).reshape(-1, self.num_nonzeros, 1, self.num_bits)  # [B, k, 1, m]
        s = smooth_step(a, self.gamma)
        # [B, k, n, m] -> product over the bits -> [B, k, n]
        return torch.where(self.codes, s, 1 - s).prod(dim=-1)

    def forward(self, h: Tensor) -> Tensor:
        """``h [B, in]`` -> expert weights ``[B, n]`` (each row sums to 1)."""
        selector_weights = torch.softmax(self.w_logits(h), dim=-1)  # [B, k]
        return torch.einsum("bk,bkn->bn", selector_weights, self.selectors(h))


class DSelectK(MultiTaskModel):
    """DSelect-k (Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi 2021,
    "DSelect-k: Differentiable Selection in the Mixture of Experts with Applications to
    Multi-Task Learning", NeurIPS): MMoE's shared experts with one per-example
    :class:`DSelectKGate` per task instead of a softmax gate::

        h = concat(backbone(x), mlp(features)) [B, D]
        e_i = ReLU(W_i h) [B, E_d]                     (i = 1..n, shared experts)
        z = concat(h, e_1, ..., e_n) [B, D + n·E_d]    (shared representation, ``encode``)
        out_t = tower_t(sum_i q_t(h)[:, i] e_i) [B, K_t]

    Representation: ``z`` as in :class:`~mtl.models.architectures.MMoE`: the backbone, the
    feature MLP and the experts (the shared parameters) lie below it; each task's gate reads
    ``h`` from ``z`` and, with its tower, lies above it (task ``t``'s parameters), so no
    parameter gets its gradient twice and every task's gradient reaches the experts' slices.

    Hyperparameters: ``num_experts`` (n, a power of 2), ``num_nonzeros`` (k) and ``gamma``
    (the smooth-step's width), defaults 2 and 1.0 as LibMTL. Differences from the
    paper: per-example gating only (no static gate); experts read the image backbone's
    features. **The paper's entropy regulariser is not implemented** (nor its penalty for
    ``n`` not a power of 2): the training loss has no hook for an architecture's own term, so
    ``n`` must be a power of 2, where every selector is a distribution by construction, and
    the gates become binary only as the task losses drive them into the smooth-step's flat
    tails. LibMTL's port differs: its ``_smooth_step_fun`` ignores ``kgamma`` (always 1) and
    it regularises only the last task's gate, by a ``backward`` inside ``forward``.
    """

    supports_representation = True

    def __init__(
        self,
        backbone: Backbone,
        heads: Mapping[str, int],
        num_features: int = 0,
        num_experts: int = 4,
        num_nonzeros: int = 2,
        gamma: float = 1.0,
        expert_features: int = 128,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        if num_experts < 2 or num_experts & (num_experts - 1):
            raise ValueError(
                f"num_experts must be a power of 2 >= 2 (this DSelect-k has no penalty for "
                f"unused binary codes), got {num_experts}"
            )
        if not 1 <= num_nonzeros <= num_experts:
            raise ValueError(f"num_nonzeros must be in [1, {num_experts}], got {num_nonzeros}")
        if gamma <= 0 or expert_features < 1:
            raise ValueError(
                f"gamma must be > 0 and expert_features >= 1, got {gamma}, {expert_features}"
            )
        self.backbone = backbone
        self.fusion = FeatureFusion(backbone.out_features, num_features, feature_hidden)
        d = self.fusion.out_features
        self.num_experts, self.expert_features = num_experts, expert_features
        self.experts = nn.Linear(d, num_experts * expert_features)
        self.gates = nn.ModuleList(
            DSelectKGate(d, num_experts, num_nonzeros, gamma) for _ in heads
        )
        self.towers = TaskHeads(expert_features, heads, head_hidden, dropout)
        self.gate_input_size = d
        self.representation_size = d + num_experts * expert_features

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> ``z = [h, experts] [B, D + n·E_d]``."""
        h = self.fusion(self.backbone(x), features)  # [B, D]
        return torch.cat([h, torch.relu(self.experts(h))], dim=1)

    def expert_weights(self, task: str, z: Tensor) -> Tensor:
        """Task ``task``'s gate weights over the experts for ``z = encode(...)``: ``[B, n]``."""
        h = z[:, : self.gate_input_size]
        return self.gates[self.towers.task_index(task)](h)  # type: ignore[no-any-return]

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, D + n·E_d]`` -> per-task DSelect-k gates and towers -> ``{task: [B, K]}``."""
        if z.dim() != 2 or z.shape[1] != self.representation_size:
            raise ValueError(f"expected z [B, {self.representation_size}], got {tuple(z.shape)}")
        h, flat = z.split([self.gate_input_size, z.shape[1] - self.gate_input_size], dim=1)
        experts = flat.reshape(-1, self.num_experts, self.expert_features)  # [B, n, E_d]
        out: dict[str, Tensor] = {}
        for task, gate, tower in zip(self.towers.tasks, self.gates, self.towers.heads, strict=True):
            mixed = torch.einsum("bn,bnd->bd", gate(h), experts)  # [B, E_d]
            out[task] = tower(mixed)
        return out

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return unique_trainable(self.backbone, self.fusion, self.experts)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.towers.task_index(task)
        return unique_trainable(self.gates[i], self.towers.heads[i])


@register_architecture("dselect_k")
def build_dselect_k(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`DSelectK`."""
    return DSelectK(make_backbone(), heads, num_features, **kw)
