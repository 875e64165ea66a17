"""Static (user-given) loss weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["Static"]


@register_weighting("static")
class Static(Weighting):
    """``L = sum_t c_t L_t`` with fixed user weights ``c`` (hand-tuned / grid-searched).

    Args:
        weights: one non-negative weight per task; ``None`` means all ones (= ``equal``).
    """

    level = "loss"

    def __init__(self, num_tasks: int, weights: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        values = [1.0] * num_tasks if weights is None else [float(w) for w in weights]
        if len(values) != num_tasks:
            raise ValueError(f"static weights: expected {num_tasks} values, got {len(values)}")
        if any(not (w >= 0.0) or w == float("inf") for w in values):
            raise ValueError(f"static weights must be finite and >= 0, got {values}")
        self.register_buffer("static_weights", torch.tensor(values, dtype=torch.float64))
        self.static_weights: Tensor

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        return self.static_weights.to(device=losses.device, dtype=losses.dtype)
