"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["Equal"]


@register_weighting("equal")
class Equal(Weighting):
    """``L = sum_t L_t`` (all weights 1) — the baseline every MTL paper compares against.

    Absent tasks get weight 0 (their masked loss is already an exact zero).
    """

    level = "loss"

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        return present.to(losses.dtype)
