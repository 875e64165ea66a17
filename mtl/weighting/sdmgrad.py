"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao, Ban & Ji,
NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl.weighting._simplex import project_simplex
from mtl.weighting.base import GradientWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["SDMGrad"]


@register_weighting("sdmgrad")
class SDMGrad(GradientWeighting):
    """Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms", NeurIPS 2023.

    The paper's update (Alg. 1; LibMTL's ``SDMGrad``, from the authors' code) with three
    independent mini-batches ``xi, xi', zeta`` per step: ``niter`` projected SGD steps
    (learning rate ``inner_lr``, momentum ``inner_momentum``, restarted every step) on the
    weights ``w``, warm-started from the previous step's::

        A = G_xi G_xi'^T / s^2,  s = mean_t sqrt(max(A_tt, 0))   (before the division)
        w <- Proj_simplex(w - lr * momentum_buffer(A w + lamda * mean_j A[:, j]))

    then ``d = (G_zeta^T w + lamda * mean_t g_zeta,t) / (1 + lamda)``: MGDA's min-norm
    direction pulled towards the average gradient (``lamda = 0``: stochastic MGDA).

    **How this implementation differs (one batch per step).** mtl's trainer draws one batch per
    optimiser step, so the three samples are three *consecutive* batches: the direction of step
    ``k`` uses the weights computed *before* batch ``k`` was seen, then ``w`` is updated with
    ``xi`` = the previous step's batch and ``xi'`` = this one. ``w`` is thus independent of the
    batch its direction is applied to and ``A`` is a product of two independent batches'
    gradients, as in the paper, but ``G_{k-1}`` was evaluated at the previous parameters (one
    step stale). Cost: one forward/backward per step (the paper's: three, on three batches)
    plus a ``[T, P]`` copy of the previous step's gradients (saved through
    ``get_extra_state``). The first step only records its gradients (``w`` stays uniform).
    The reference divides ``A`` by ``s^2 + 1e-8``; here by ``s^2`` (no update when ``s = 0``),
    so the weights are exactly invariant to a common gradient scale as in the paper (the
    absolute ``1e-8`` shrank the inner steps at gradient norms below ~1e-4). Heads get their
    own task's gradient of the one batch (LibMTL sums the three batches' head gradients).

    Partial labels: ``w`` is updated only over the tasks labelled both now and at some earlier
    step (each task's stored gradient is its last labelled one), projected onto the simplex
    face that keeps their current mass (the inner problem is solved on their weights divided by
    that mass), so the absent tasks' weights stay; the direction uses
    ``w`` renormalised over the present tasks and the mean over the present tasks. Only
    ``backend="full"``: representation gradients are per-sample and change meaning with every
    batch (LibMTL refuses it too).

    Args:
        lamda: weight of the average-gradient direction (0.3, LibMTL's default).
        niter: inner projected-SGD steps on ``w`` per step (20).
        inner_lr: learning rate of the inner SGD (5, hard-coded in the reference).
        inner_momentum: momentum of the inner SGD (0.5, hard-coded in the reference).
    """

    backends = ("full",)

    def __init__(
        self,
        num_tasks: int,
        lamda: float = 0.3,
        niter: int = 20,
        inner_lr: float = 5.0,
        inner_momentum: float = 0.5,
    ) -> None:
        super().__init__(num_tasks)
        if lamda < 0 or niter < 0 or inner_lr <= 0 or not 0 <= inner_momentum < 1:
            raise ValueError(
                "sdmgrad expects lamda >= 0, niter >= 0, inner_lr > 0, 0 <= inner_momentum < 1;"
                f" got {lamda}, {niter}, {inner_lr}, {inner_momentum}"
            )
        self.lamda, self.niter = float(lamda), int(niter)
        self.inner_lr, self.inner_momentum = float(inner_lr), float(inner_momentum)
        f64 = torch.float64
        self.register_buffer("w", torch.full((num_tasks,), 1.0 / num_tasks, dtype=f64))
        # whether row t of prev_grads holds a gradient of task t (it was labelled before)
        self.register_buffer("seen", torch.zeros(num_tasks, dtype=torch.bool))
        self.w: Tensor
        self.seen: Tensor
        self.prev_grads: Tensor | None = None  # [T, P] each task's last labelled gradient

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = grads.shape[0]
        t_cpu = tasks.cpu()
        w = self.w.detach().cpu()[t_cpu]  # [K] weights fixed before this batch
        mass = float(w.sum())
        w_bar = w / mass if mass > 0 else torch.zeros_like(w)  # convex over the present tasks
        # d = (w_bar G + lamda mean_t g_t) / (1 + lamda) = coef @ G
        coef = (w_bar + self.lamda / k) / (1.0 + self.lamda)  # [K]
        prev = self.prev_grads
        if prev is None or prev.shape[1] != grads.shape[1]:  # first step, or another model
            prev = grads.new_zeros(self.num_tasks, grads.shape[1])
            self.seen.zero_()
        prev = prev.to(device=grads.device, dtype=grads.dtype)
        sel = self.seen.cpu()[t_cpu].nonzero().squeeze(1)  # [S] present now, labelled before
        w_s = w[sel]
        if sel.numel() > 0 and float(w_s.sum()) > 0:
            xi = prev.index_select(0, tasks.index_select(0, sel.to(tasks.device)))  # [S, P]
            xi2 = grads.index_select(0, sel.to(grads.device))  # [S, P] this batch
            gg = (xi @ xi2.T).to(device="cpu", dtype=torch.float64).numpy()  # [S, S]
            # the reference's problem on these tasks' weights normalised to the simplex, then
            # scaled back to the mass they had (A w is linear in w, lamda A 1/S is not)
            m = float(w_s.sum())
            new = m * self._inner(gg, w_s.numpy() / m)
            self.w[t_cpu[sel].to(self.w.device)] = torch.from_numpy(new).to(self.w)
        self.prev_grads = prev.index_copy(0, tasks, grads.detach())
        self.seen[tasks.to(self.seen.device)] = True
        return coef.to(device=grads.device, dtype=grads.dtype)

    def _inner(self, gg: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The reference's inner loop: ``niter`` steps of ``torch.optim.SGD(lr, momentum)``
        on ``A w + lamda A 1/S``, each followed by the projection onto the simplex."""
        scale = float(np.mean(np.sqrt(np.clip(np.diag(gg), 0.0, None))))
        if not scale > 0.0:  # no usable gradient product: keep the weights
            return w
        a = gg / scale**2  # [S, S]
        ag = a.mean(axis=1)  # [S] = G_xi . mean_j g_xi',j (normalised)
        buf: np.ndarray | None = None
        for _ in range(self.niter):
            grad = a @ w + self.lamda * ag
            # torch.optim.SGD's momentum: the first step's buffer is the gradient itself
            buf = grad if buf is None else self.inner_momentum * buf + grad
            w = project_simplex(w - self.inner_lr * buf)
        return w

    def get_extra_state(self) -> Any:
        return {"prev_grads": None if self.prev_grads is None else self.prev_grads.cpu()}

    def set_extra_state(self, state: Any) -> None:
        prev = state.get("prev_grads") if isinstance(state, dict) else None
        self.prev_grads = None if prev is None else prev.clone()
