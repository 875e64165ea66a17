"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji, ICML 2024)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from torch import Tensor

from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["FairGrad"]


@register_weighting("fairgrad")
class FairGrad(GramWeighting):
    """Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.

    alpha-fair allocation of the update among the tasks: ``d = sum_t w_t g_t`` with ``w > 0``
    solving ``G G^T w = w^(-1/alpha)`` (element-wise power). ``alpha = 1`` is proportional
    fairness (Nash-MTL's equation ``w_t (M w)_t = 1``), ``alpha -> inf`` max-min fairness.
    As in the authors' code (and LibMTL's port), the equation is solved by
    ``scipy.optimize.least_squares`` with bounds ``(0, inf)`` from ``w = 1/K``.

    Deliberate differences: the system is solved on the Gram matrix divided by its mean
    diagonal ``s`` and the solution rescaled by ``s^(-alpha/(alpha+1))`` (the exact solution
    of the original system; it keeps the solver's tolerances meaningful at any gradient
    scale). The reference code back-propagates ``sum_t w_t L_t``, so the heads also get
    ``w_t`` times their gradient; here, as for every gradient-level method in mtl (Nash-MTL
    included), each head gets its own task's gradient. Where no positive solution exists (the
    gradients are Pareto-stationary) the least-squares compromise is used, as in the
    reference; a present task whose gradient is exactly zero gets weight 0 (the equation has
    no solution for it; the reference's solver returned a large arbitrary weight). Both
    backends (only the Gram matrix is needed).

    Args:
        alpha: the fairness parameter (1.0, LibMTL's default; must be > 0).
    """

    def __init__(self, num_tasks: int, alpha: float = 1.0) -> None:
        super().__init__(num_tasks)
        if not alpha > 0:
            raise ValueError(f"fairgrad alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        m = gram.numpy()
        k = m.shape[0]
        w = np.zeros(k)
        diag = np.diag(m)
        # a task with a zero gradient has no solution (w_t^(-1/alpha) = 0): it gets weight 0
        # and the others are solved without it (the reference's solver returned a huge w_t)
        live = np.flatnonzero(diag > 1e-20 * max(float(diag.max()), 1e-300))
        if live.size == 0:  # every gradient is zero: any weights give d = 0
            return gram.new_tensor(w)
        scale = float(diag[live].mean())
        a = m[np.ix_(live, live)] / scale  # [K', K'], mean diagonal 1
        inv_alpha = 1.0 / self.alpha

        def residual(x: np.ndarray) -> np.ndarray:
            return a @ x - np.power(1.0 / x, inv_alpha)

        res = least_squares(residual, np.full(live.size, 1.0 / k), bounds=(0, np.inf))
        # a w~ = w~^(-1/alpha) -> w = c w~ solves (s a) w = w^(-1/alpha) for c = s^(-a/(a+1))
        w[live] = res.x * scale ** (-self.alpha / (self.alpha + 1.0))
        return gram.new_tensor(w)
