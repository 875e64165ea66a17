"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, CVPR 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["AlignedMTL"]


@register_weighting("aligned_mtl")
class AlignedMTL(GramWeighting):
    """Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for
    Multi-Task Learning", CVPR 2023.

    Aligns the principal components of the gradient system so it has condition number 1:
    with ``M = G G^T = V diag(lambda) V^T`` (rank ``r``), ``B = sqrt(lambda_min) V
    diag(lambda)^(-1/2) V^T`` and ``d = (B^T pref)^T G``; with the default preference (all
    ones, as the authors' code) the weights are ``B.sum(0)``.

    Args:
        eps_rank: relative eigenvalue threshold of the numerical rank (``None``: ``K`` times
            float64 machine epsilon, as ``torch.linalg.matrix_rank``).
    """

    def __init__(self, num_tasks: int, eps_rank: float | None = None) -> None:
        super().__init__(num_tasks)
        self.eps_rank = eps_rank

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = gram.shape[0]
        lam, vec = torch.linalg.eigh(gram)  # ascending eigenvalues
        rel = self.eps_rank if self.eps_rank is not None else k * torch.finfo(gram.dtype).eps
        keep = lam > lam.max().clamp_min(0.0) * rel
        if not bool(keep.any()):
            return gram.new_zeros(k)
        lam, vec = lam[keep], vec[:, keep]  # [r], [K, r]
        b = lam.min().sqrt() * (vec / lam.sqrt()) @ vec.T  # [K, K]
        return b.sum(0)
