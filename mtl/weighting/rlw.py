"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, TMLR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["RLW"]


@register_weighting("rlw")
class RLW(Weighting):
    """Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022.

    Each step draws ``w~ ~ N(0, I)`` and uses ``w = softmax(w~)`` over the present tasks (the
    weights sum to 1, as in the paper). The draw uses torch's global CPU generator, so
    ``torch.manual_seed`` makes it reproducible and identical on CPU and GPU.

    Args:
        distribution: ``"normal"`` (the paper's default) or ``"uniform"`` (``U(0, 1)``).
    """

    level = "loss"

    def __init__(self, num_tasks: int, distribution: str = "normal") -> None:
        super().__init__(num_tasks)
        if distribution not in ("normal", "uniform"):
            raise ValueError(f"rlw distribution must be normal|uniform, got {distribution!r}")
        self.distribution = distribution

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        draw = (
            torch.randn(self.num_tasks)
            if self.distribution == "normal"
            else torch.rand(self.num_tasks)
        )
        logits = draw.to(device=losses.device, dtype=losses.dtype).masked_fill(
            ~present, float("-inf")
        )
        return torch.nan_to_num(torch.softmax(logits, dim=0), nan=0.0)
