"""PCGrad: gradient surgery (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["PCGrad"]


@register_weighting("pcgrad")
class PCGrad(GramWeighting):
    """Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020.

    For each task ``i`` and every other task ``j`` in a random order: if the (already
    projected) ``g_i'`` conflicts with the original ``g_j`` (``g_i' . g_j < 0``), remove the
    conflicting component ``g_i' -= (g_i' . g_j / ||g_j||^2) g_j``. ``d = sum_i g_i'``.

    Every ``g_i'`` stays a linear combination ``C_i G`` of the original gradients, so the whole
    surgery runs on the ``K x K`` Gram matrix (``g_i' . g_j = (C M)_ij``) and ``d = (1^T C) G``;
    the effective weights are the column sums of ``C``. Orders come from torch's global RNG.
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        m = gram.numpy()
        k = m.shape[0]
        coef = torch.eye(k, dtype=torch.float64).numpy()  # C [K, K]: g_i' = sum_j C_ij g_j
        for i in range(k):
            for j in torch.randperm(k).tolist():
                if j == i or m[j, j] <= 0.0:
                    continue
                dot = float(coef[i] @ m[:, j])  # g_i' . g_j
                if dot < 0.0:
                    coef[i, j] -= dot / m[j, j]
        return gram.new_tensor(coef.sum(axis=0))
