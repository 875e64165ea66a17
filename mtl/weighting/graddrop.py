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

    Per coordinate, the sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` picks a sign
    (positive with probability ``P``, one uniform draw per coordinate from torch's RNG) and
    only the task gradients with that sign are kept: ``d = sum_t M_t g_t`` (plus ``leak``
    times the dropped part). The paper applies it to activations; ``backend="representation"``
    is that setting, ``"full"`` applies it to the shared parameters.

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

    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        tasks = present.nonzero().squeeze(1)
        weights = grads.new_zeros(self.num_tasks)
        if tasks.numel() == 0:
            return grads.new_zeros(grads.shape[1]), weights
        g = grads.index_select(0, tasks)  # [K, P]
        purity = 0.5 * (1.0 + g.sum(0) / (g.abs().sum(0) + 1e-7))  # [P]
        u = torch.rand(purity.shape, device=g.device, dtype=g.dtype)
        keep = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))  # [K, P]
        mask = self.leak + (1.0 - self.leak) * keep.to(g.dtype)
        kept = g * mask
        mass = g.abs().sum(1)
        weights[tasks] = torch.where(mass > 0, kept.abs().sum(1) / mass.clamp_min(1e-30), 0.0)
        return kept.sum(0), weights
