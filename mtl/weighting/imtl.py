"""IMTL: Impartial Multi-Task Learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang,
ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.weighting.base import GradientWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["IMTL"]


@register_weighting("imtl")
class IMTL(GradientWeighting):
    """Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021.

    **IMTL-G** (gradient balance): find ``alpha`` (summing to 1) such that the aggregated
    ``d = sum_t alpha_t g_t`` has equal projections on every unit gradient ``u_t``. Closed
    form: with ``D = [g_1 - g_t]_t``, ``U = [u_1 - u_t]_t`` (t = 2..K),
    ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum alpha_{2:K}``; all inner
    products come from the Gram matrix.

    **IMTL-L** (loss balance, ``hybrid=True``, the paper's full method): learnable scales
    ``s_t`` (``nn.Parameter``; add ``weighting.parameters()`` to the optimiser); the tasks'
    losses become ``e^{s_t} L_t - s_t``, i.e. IMTL-G sees ``e^{s_t} g_t``, the heads get
    ``e^{s_t}`` times their gradient, and ``s_t`` gets ``e^{s_t} L_t - 1``.

    Args:
        hybrid: also learn the IMTL-L loss scales (``False`` = IMTL-G only).
    """

    def __init__(self, num_tasks: int, hybrid: bool = True) -> None:
        super().__init__(num_tasks)
        self.hybrid = bool(hybrid)
        if self.hybrid:
            self.loss_scale = nn.Parameter(torch.zeros(num_tasks))

    def _scales(self, ref: Tensor) -> Tensor:
        if not self.hybrid:
            return torch.ones(self.num_tasks, device=ref.device, dtype=ref.dtype)
        return self.loss_scale.detach().to(device=ref.device, dtype=ref.dtype).exp()

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = grads.shape[0]
        scale = self._scales(grads)[tasks]  # [K]
        gram = (grads @ grads.T).to(device="cpu", dtype=torch.float64)
        sc = scale.to(device="cpu", dtype=torch.float64)
        gram = gram * sc[:, None] * sc[None, :]  # Gram matrix of the scaled gradients
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        live = norms > 1e-12 * norms.max().clamp_min(1e-300)
        alpha = torch.zeros(k, dtype=torch.float64)
        idx = live.nonzero().squeeze(1)
        if idx.numel() == 1:
            alpha[idx] = 1.0
        elif idx.numel() > 1:
            m = gram[idx][:, idx]
            mu = m / norms[idx][None, :]  # mu[a, b] = g_a . u_b
            g1u = mu[0, 0] - mu[0, 1:]  # [K-1]: g_1 . (u_1 - u_j)
            du = mu[0, 0] - mu[0, 1:][None, :] - mu[1:, 0][:, None] + mu[1:, 1:]  # D U^T
            rest = torch.linalg.lstsq(du.T, g1u.unsqueeze(1)).solution.squeeze(1)
            alpha[idx] = torch.cat([(1.0 - rest.sum()).unsqueeze(0), rest])
        return (alpha * sc).to(device=grads.device, dtype=grads.dtype)

    def head_scales(self, losses: Tensor, present: Tensor) -> Tensor | None:
        return self._scales(losses) if self.hybrid else None

    def regularization(self, losses: Tensor, present: Tensor) -> Tensor | None:
        if not self.hybrid:
            return None
        s = self.loss_scale.to(device=losses.device, dtype=losses.dtype)
        mask = present.to(losses.dtype)
        # d/ds (e^s L - s) = e^s L - 1; losses are detached, so only s is trained by this term.
        return ((s.exp() * losses.detach() - s) * mask).sum()
