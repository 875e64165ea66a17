"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting._solvers import nash_weights
from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["NashMTL"]


@register_weighting("nash_mtl")
class NashMTL(GramWeighting):
    """Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as
    a Bargaining Game", ICML 2022.

    The Nash bargaining direction ``d = sum_t alpha_t g_t`` with ``G G^T alpha = 1 / alpha``.
    Instead of the paper's sequence of convex programs (cvxpy), the equation is solved as
    the stationarity condition of the concave problem ``max_a sum_t log (M a)_t - a^T M a/2``
    by a damped Newton method in task space (no optional dependency). The direction is then
    clipped to ``max_norm`` (the paper clips the shared gradient norm to 1). When the problem is
    infeasible (the gradients are Pareto-stationary: no direction decreases every loss) the
    previous weights are reused, as the authors' code does on solver failure.

    Args:
        max_norm: clip ``||d||`` to this value (0 disables).
        update_weights_every: solve every this many steps, reusing ``alpha`` in between.
        optim_niter: Newton iterations.
    """

    def __init__(
        self,
        num_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        super().__init__(num_tasks)
        if update_weights_every < 1:
            raise ValueError("nash_mtl update_weights_every must be >= 1")
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = int(optim_niter)
        self.register_buffer("alpha", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.alpha: Tensor
        self.step: Tensor

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        alpha = self.alpha.detach().cpu()[tasks]
        if int(self.step) % self.update_weights_every == 0:
            solved = nash_weights(gram.numpy(), max_iter=self.optim_niter)
            if solved is not None:
                alpha = torch.from_numpy(solved)
                self.alpha[tasks.to(self.alpha.device)] = alpha.to(self.alpha)
        self.step += 1
        if self.max_norm > 0:
            norm = float(alpha @ gram @ alpha) ** 0.5
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha
