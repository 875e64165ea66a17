"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022)."""

from __future__ import annotations

import warnings

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
    Instead of the paper's sequence of convex programs (cvxpy), the equation is solved as the
    minimiser of the strictly convex ``a^T M a / 2 - sum_t log a_t`` by Newton's method with a
    line search in task space (no optional dependency); the solution is certified (``alpha >
    0`` and ``alpha_t (M alpha)_t = 1`` within 1e-4) before it is used. The direction is then
    clipped to ``max_norm`` (the paper clips the shared gradient norm to 1).

    When no certified solution exists (the gradients are Pareto-stationary or nearly so: no
    direction decreases every loss) a ``RuntimeWarning`` naming the step is issued, and the
    previous weights are reused if they still decrease every present task's loss (the
    authors' code reuses them unconditionally); otherwise the step is refused: weights 0, no
    update of the shared parameters (deliberate: never a silent non-solution).

    Args:
        max_norm: clip ``||d||`` to this value (0 disables).
        update_weights_every: solve every this many steps, reusing ``alpha`` in between.
        optim_niter: Newton iterations (100; the paper's 20 counts its convex programs).
    """

    def __init__(
        self,
        num_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 100,
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
        step = int(self.step)
        self.step += 1
        alpha = self.alpha.detach().cpu()[tasks]
        if step % self.update_weights_every == 0:
            solved, reason = nash_weights(gram.numpy(), max_iter=self.optim_niter)
            if solved is not None:
                alpha = torch.from_numpy(solved)
                self.alpha[tasks.to(self.alpha.device)] = alpha.to(self.alpha)
            elif bool(((gram @ alpha) > 0).all()):
                warnings.warn(
                    f"nash_mtl step {step}: no Nash bargaining solution ({reason}); reusing "
                    "the previous weights, which still decrease every present task's loss",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                warnings.warn(
                    f"nash_mtl step {step}: no Nash bargaining solution ({reason}) and the "
                    "previous weights would increase a task's loss; step refused (no update of "
                    "the shared parameters)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return gram.new_zeros(gram.shape[0])
        if self.max_norm > 0:
            norm = float(alpha @ gram @ alpha) ** 0.5
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha
