"""Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["GradVac"]


@register_weighting("gradvac")
class GradVac(GramWeighting):
    """Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021.

    Keeps an EMA target ``phi_hat_ij`` of the cosine similarity of every task pair. For each
    task ``i`` and other task ``j`` (random order): when ``phi_ij = cos(g_i', g_j)`` is below
    its target, add ``||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (||g_j|| sqrt(1 - phi_hat^2)) g_j`` to ``g_i'``, so the cosine reaches the target; then
    ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``. ``d = sum_i g_i'``. Run on the Gram
    matrix (``g_i' = C_i G``), whole-model granularity. Only pairs of present tasks update
    their target.

    Args:
        beta: EMA rate of the targets (1e-2 in the paper).
    """

    def __init__(self, num_tasks: int, beta: float = 0.01) -> None:
        super().__init__(num_tasks)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gradvac beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self.register_buffer("rho", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))
        self.rho: Tensor

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        m = gram.numpy()
        k = m.shape[0]
        ids = tasks.tolist()
        rho = self.rho.detach().cpu().numpy().copy()
        coef = torch.eye(k, dtype=torch.float64).numpy()  # g_i' = sum_j C_ij g_j
        for i in range(k):
            for j in torch.randperm(k).tolist():
                if j == i or m[j, j] <= 0.0:
                    continue
                gi2 = float(coef[i] @ m @ coef[i])
                if gi2 <= 0.0:
                    continue
                gi_norm, gj_norm = math.sqrt(gi2), math.sqrt(float(m[j, j]))
                phi = max(-1.0, min(1.0, float(coef[i] @ m[:, j]) / (gi_norm * gj_norm)))
                target = float(rho[ids[i], ids[j]])
                if phi < target:
                    s_t = math.sqrt(max(1.0 - target * target, 1e-12))
                    s_p = math.sqrt(max(1.0 - phi * phi, 0.0))
                    coef[i, j] += gi_norm * (target * s_p - phi * s_t) / (gj_norm * s_t)
                rho[ids[i], ids[j]] = (1.0 - self.beta) * target + self.beta * phi
        self.rho.copy_(torch.from_numpy(rho))
        return gram.new_tensor(coef.sum(axis=0))
