"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["DWA"]


@register_weighting("dwa")
class DWA(Weighting):
    """Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019.

    ``w_t = K exp(r_t / temperature) / sum_j exp(r_j / temperature)`` with the loss-descent
    rate ``r_t = L_t(e-1) / L_t(e-2)`` of the epoch means (given by :meth:`epoch_end`);
    ``r_t = 1`` until a task has two epochs of history (so the first two epochs are equal
    weighting). The softmax runs over the ``K`` tasks present in the batch. An epoch in which a
    task was never labelled (``present`` False at ``epoch_end``) leaves its history unchanged.

    Args:
        temperature: softmax temperature ``T`` (2 in the paper).
    """

    level = "loss"

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        # history[0] = L(e-1), history[1] = L(e-2); NaN = not seen yet.
        self.register_buffer(
            "history", torch.full((2, num_tasks), float("nan"), dtype=torch.float64)
        )
        self.history: Tensor

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        hist = self.history.to(device=losses.device, dtype=losses.dtype)
        ratio = hist[0] / hist[1]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))  # [T]
        logits = (ratio / self.temperature).masked_fill(~present, float("-inf"))
        k = present.sum().clamp_min(1).to(losses.dtype)
        w = k * torch.softmax(logits, dim=0)
        return torch.nan_to_num(w, nan=0.0)  # all tasks absent -> softmax of -inf is NaN

    def epoch_end(self, mean_losses: Tensor, present: Tensor) -> None:
        # no autograd graph for the method's own bookkeeping (a context, not a decorator:
        # mutmut does not mutate decorated functions)
        with torch.no_grad():
            m = present.to(self.history.device) & torch.isfinite(
                mean_losses.to(self.history.device)
            )
            new = mean_losses.detach().to(self.history)
            self.history[1] = torch.where(m, self.history[0], self.history[1])
            self.history[0] = torch.where(m, new, self.history[0])
