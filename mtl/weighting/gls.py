"""Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh, CVPR-W 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["GLS"]


@register_weighting("gls")
class GLS(Weighting):
    """Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation
    and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.

    Minimises the geometric mean ``(prod_t L_t)^(1/K)`` of the ``K`` present losses. Its
    gradient is ``sum_t GM / (K L_t) grad L_t``, so the (detached) weights are
    ``GM / (K L_t)`` and ``sum_t w_t L_t = GM``.

    Args:
        eps: floor on the losses inside the log / division (a loss of exactly 0 has no
            geometric-mean gradient).
    """

    level = "loss"

    def __init__(self, num_tasks: int, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        self.eps = float(eps)

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        l_ = losses.detach().clamp_min(self.eps)
        mask = present.to(losses.dtype)
        k = mask.sum().clamp_min(1.0)
        log_gm = (torch.log(l_) * mask).sum() / k
        return torch.exp(log_gm) / (k * l_) * mask
