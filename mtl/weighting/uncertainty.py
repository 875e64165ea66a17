"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["Uncertainty"]


@register_weighting("uncertainty")
class Uncertainty(Weighting):
    """Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018.

    Learnable log-variances ``s_t = log sigma_t^2`` (``nn.Parameter``, trained by the model's
    optimiser — add ``weighting.parameters()`` to it): ``L = sum_t 0.5 exp(-s_t) L_t + 0.5 s_t``.
    The weights are ``0.5 exp(-s_t)``. An absent task contributes neither term, so its ``s_t``
    gets an exact zero gradient.

    Args:
        init_log_var: initial value of every ``s_t`` (0 -> weights 0.5).
    """

    level = "loss"

    def __init__(self, num_tasks: int, init_log_var: float = 0.0) -> None:
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(init_log_var)))

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        s = self.log_vars.to(device=losses.device, dtype=losses.dtype)
        return 0.5 * torch.exp(-s)

    def regularization(self, losses: Tensor, present: Tensor) -> Tensor:
        s = self.log_vars.to(device=losses.device, dtype=losses.dtype)
        return 0.5 * (s * present.to(losses.dtype)).sum()
