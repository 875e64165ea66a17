"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["Uncertainty", "UncertaintyForm"]

#: The likelihood behind a task's loss: Gaussian (regression) or softmax/Bernoulli with a
#: temperature (classification).
UncertaintyForm = Literal["regression", "classification"]


@register_weighting("uncertainty")
class Uncertainty(Weighting):
    """Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics", CVPR 2018.

    Learnable log-variances ``s_t = log sigma_t^2`` (``nn.Parameter``, trained by the model's
    optimiser — add ``weighting.parameters()`` to it). Per task, the paper's two forms:

    * ``"regression"`` (Gaussian likelihood, Eq. 5): ``1/(2 sigma^2) L + log sigma =
      0.5 exp(-s) L + 0.5 s``, weight ``0.5 exp(-s)``;
    * ``"classification"`` (softmax with temperature sigma^2, Eq. 10): ``1/sigma^2 L + log
      sigma = exp(-s) L + 0.5 s``, weight ``exp(-s)``.

    An absent task contributes neither term, so its ``s_t`` gets an exact zero gradient.

    Args:
        init_log_var: initial value of every ``s_t`` (0 -> weights 0.5 / 1).
        forms: one form per task (``None``: every task ``"regression"``, the form most
            implementations, LibMTL's included, use for all tasks).
    """

    level = "loss"

    def __init__(
        self,
        num_tasks: int,
        init_log_var: float = 0.0,
        forms: Sequence[UncertaintyForm] | None = None,
    ) -> None:
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(init_log_var)))
        chosen = ["regression"] * num_tasks if forms is None else list(forms)
        if len(chosen) != num_tasks or any(
            f not in ("regression", "classification") for f in chosen
        ):
            raise ValueError(
                f"uncertainty forms: expected {num_tasks} values, each 'regression' or "
                f"'classification'; got {forms!r}"
            )
        self.forms = tuple(chosen)
        # factor of exp(-s) L per task: 1/2 (Gaussian) or 1 (classification)
        coef = [1.0 if f == "classification" else 0.5 for f in chosen]
        self.register_buffer("coef", torch.tensor(coef), persistent=False)
        self.coef: Tensor

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        s = self.log_vars.to(device=losses.device, dtype=losses.dtype)
        return self.coef.to(device=losses.device, dtype=losses.dtype) * torch.exp(-s)

    def regularization(self, losses: Tensor, present: Tensor) -> Tensor:
        s = self.log_vars.to(device=losses.device, dtype=losses.dtype)
        return 0.5 * (s * present.to(losses.dtype)).sum()
