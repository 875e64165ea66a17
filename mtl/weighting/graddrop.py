"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov,
NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["GradDrop"]


@register_weighting("graddrop")
class GradDrop(Weighting):
    """Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing
    Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.

    The paper's setting is ``backend="representation"``: the task gradients of the activations
    ``z [B, F...]`` are first summed over the batch weighted by the sign of the activation,
    ``S_t = sum_b sign(z_b) g_{t,b}`` (``[F]``, Algorithm 1 and the official code), the sign
    purity ``P = (1 + sum_t S_t / sum_t |S_t|) / 2`` picks a sign per *feature* (positive with
    probability ``P``, one uniform draw per feature from torch's RNG), and task ``t`` keeps
    its gradient on a feature, for every sample, iff ``S_t`` has that sign: one mask
    ``M_t [F]`` broadcast over the batch, ``d = sum_t M_t g_t`` (plus ``leak`` times the
    dropped part). With ``backend="full"`` the gradients of the shared parameters are already
    summed over the batch, so each parameter coordinate is a feature with ``S_t = g_t``.

    The mask is not a linear combination of the task gradients, so the logged "effective
    weight" of a task is the fraction of its gradient's L1 mass that was kept.

    Args:
        leak: fraction of the dropped gradient kept anyway (0 in the paper).
    """

    level = "gradient"
    backends = ("full", "representation")

    def __init__(self, num_tasks: int, leak: float = 0.0) -> None:
        super().__init__(num_tasks)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"graddrop leak must be in [0, 1], got {leak}")
        self.leak = float(leak)
        self._signs: Tensor | None = None  # sign(z) [B, F] of the current step's representation

    def set_representation(self, representation: Tensor | None) -> None:
        self._signs = (
            None if representation is None else torch.sign(representation.flatten(1).detach())
        )

    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        tasks = present.nonzero().squeeze(1)
        weights = grads.new_zeros(self.num_tasks)
        if tasks.numel() == 0:
            return grads.new_zeros(grads.shape[1]), weights
        g = grads.index_select(0, tasks)  # [K, P]
        k, p = g.shape
        signs = self._signs
        if signs is not None and signs.numel() == p:
            per_sample = g.view(k, signs.shape[0], -1)  # [K, B, F]
            summed = (per_sample * signs.to(g)[None]).sum(1)  # [K, F]: sign-weighted batch sums
        else:  # parameters: a coordinate is a feature, its gradient already a batch sum
            per_sample = g.view(k, 1, p)
            summed = g
        purity = 0.5 * (1.0 + summed.sum(0) / (summed.abs().sum(0) + 1e-7))  # [F]
        u = torch.rand(purity.shape, device=g.device, dtype=g.dtype)
        keep = ((purity > u) & (summed > 0)) | ((purity < u) & (summed < 0))  # [K, F]
        mask = self.leak + (1.0 - self.leak) * keep.to(g.dtype)
        kept = (per_sample * mask[:, None, :]).reshape(k, p)  # one mask per feature
        mass = g.abs().sum(1)
        weights[tasks] = torch.where(mass > 0, kept.abs().sum(1) / mass.clamp_min(1e-30), 0.0)
        return kept.sum(0), weights
