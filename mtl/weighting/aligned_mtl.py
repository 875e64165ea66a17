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
        eps_rank: relative eigenvalue threshold of the numerical rank. ``None``: the larger
            of the authors' ``K`` times float32 epsilon and ``sqrt(P)`` times the epsilon of
            the gradients' dtype, the rounding noise of a ``P``-long dot product (measured on
            float32 gradients of a rank-2 system: 5e-8 at P=1e3, 9e-6 at P=1e6 relative to
            the largest eigenvalue). Below it, noise eigenvalues were taken as directions and
            scaled up by ``1/sqrt(lambda)``.
    """

    def __init__(self, num_tasks: int, eps_rank: float | None = None) -> None:
        super().__init__(num_tasks)
        self.eps_rank = eps_rank
        self._noise = 0.0  # relative rounding noise of the last Gram matrix (set by combine)

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        p = grads.shape[1]
        self._noise = max(
            grads.shape[0] * torch.finfo(torch.float32).eps,
            p**0.5 * torch.finfo(grads.dtype).eps,
        )
        return super().combine(grads, losses, tasks)

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = gram.shape[0]
        lam, vec = torch.linalg.eigh(gram)  # ascending eigenvalues
        if self.eps_rank is not None:
            rel = self.eps_rank
        else:  # combine() sets the noise level; called on a Gram matrix directly: float32's
            rel = self._noise or k * torch.finfo(torch.float32).eps
        keep = lam > lam.max().clamp_min(0.0) * rel
        if not bool(keep.any()):
            return gram.new_zeros(k)
        lam, vec = lam[keep], vec[:, keep]  # [r], [K, r]
        b = lam.min().sqrt() * (vec / lam.sqrt()) @ vec.T  # [K, K]
        return b.sum(0)
