"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying, Chen,
NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.weighting._simplex import project_simplex
from mtl.weighting.base import GradientWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["MoDo"]


@register_weighting("modo")
class MoDo(GradientWeighting):
    """Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023.

    The paper's update (Alg. 1, LibMTL's ``MoDo``) with three independent mini-batches
    ``z1, z2, z3`` per step::

        lambda <- Proj_simplex(lambda - gamma (G_z1 G_z2^T lambda + rho lambda))
        d = G_z3^T lambda

    where ``G_z [T, P]`` are the per-task gradients on batch ``z``. The double sampling makes
    ``G_z1 G_z2^T`` an unbiased estimate of the Gram matrix and keeps ``lambda`` independent of
    the sample that moves the model.

    **How this implementation differs (one batch per step).** mtl's trainer draws one batch per
    optimiser step, so the three samples are three *consecutive* batches: the direction of step
    ``k`` uses the weights computed *before* batch ``k`` was seen, ``d_k = G_k^T lambda_k``;
    then ``lambda`` is updated with ``z1`` = the previous step's batch and ``z2`` = this one,
    ``lambda_{k+1} = Proj(lambda_k - gamma (G_{k-1} G_k^T lambda_k + rho lambda_k))``. So
    ``lambda`` is still independent of the batch its direction is applied to and the two
    gradients of its update come from independent batches, as in the paper; the difference is
    that ``G_{k-1}`` was evaluated at the previous parameters (one step stale), not at the
    current ones. The paper's version costs three forward/backward passes (and three batches
    of data) per step; this one costs one, plus a ``[T, P]`` copy of the previous step's
    gradients (saved through ``get_extra_state``). The first step only records its gradients
    (``lambda`` stays uniform). Heads get their own task's gradient of the one batch (LibMTL
    averages the three batches' head gradients).

    Partial labels: ``lambda`` is updated only over the tasks labelled both now and at some
    earlier step (each task's stored gradient is its last labelled one), projected onto the
    simplex face that keeps their current mass, so absent tasks' weights stay; the direction
    uses ``lambda`` renormalised over the present tasks (a convex combination, as MGDA's).
    Only ``backend="full"``: representation gradients are per-sample and change meaning with
    every batch, so ``G_{k-1} G_k^T`` would pair unrelated samples (LibMTL refuses it too).

    Args:
        gamma: step size of ``lambda`` (1e-3, LibMTL's default).
        rho: l2 regularisation of the ``lambda`` update (0.1).
    """

    backends = ("full",)

    def __init__(self, num_tasks: int, gamma: float = 1e-3, rho: float = 0.1) -> None:
        super().__init__(num_tasks)
        if gamma < 0 or rho < 0:
            raise ValueError(f"modo expects gamma >= 0 and rho >= 0; got {gamma}, {rho}")
        self.gamma, self.rho = float(gamma), float(rho)
        f64 = torch.float64
        self.register_buffer("lambd", torch.full((num_tasks,), 1.0 / num_tasks, dtype=f64))
        # whether row t of prev_grads holds a gradient of task t (it was labelled before)
        self.register_buffer("seen", torch.zeros(num_tasks, dtype=torch.bool))
        self.lambd: Tensor
        self.seen: Tensor
        self.prev_grads: Tensor | None = None  # [T, P] each task's last labelled gradient

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        t_cpu = tasks.cpu()
        lam = self.lambd.detach().cpu()[t_cpu]  # [K] weights fixed before this batch
        mass = float(lam.sum())
        w = lam / mass if mass > 0 else torch.zeros_like(lam)  # convex over the present tasks
        prev = self.prev_grads
        if prev is None or prev.shape[1] != grads.shape[1]:  # first step, or another model
            prev = grads.new_zeros(self.num_tasks, grads.shape[1])
            self.seen.zero_()
        prev = prev.to(device=grads.device, dtype=grads.dtype)
        both = self.seen.cpu()[t_cpu]  # [K] present now and labelled before
        sel = both.nonzero().squeeze(1)  # [S] positions (in 0..K-1) of those tasks
        lam_s = lam[sel]
        if sel.numel() > 0 and float(lam_s.sum()) > 0:
            g_now = grads.index_select(0, sel.to(grads.device))  # [S, P] z2 = this batch
            g_prev = prev.index_select(0, tasks.index_select(0, sel.to(tasks.device)))  # z1
            cross = (g_prev @ g_now.T).to(device="cpu", dtype=torch.float64)  # [S, S]
            step = lam_s - self.gamma * (cross @ lam_s + self.rho * lam_s)
            new = project_simplex(step.numpy(), radius=float(lam_s.sum()))
            idx = t_cpu[sel].to(self.lambd.device)
            self.lambd[idx] = torch.from_numpy(new).to(self.lambd)
        self.prev_grads = prev.index_copy(0, tasks, grads.detach())
        self.seen[tasks.to(self.seen.device)] = True
        return w.to(device=grads.device, dtype=grads.dtype)

    def get_extra_state(self) -> Any:
        return {"prev_grads": None if self.prev_grads is None else self.prev_grads.cpu()}

    def set_extra_state(self, state: Any) -> None:
        prev = state.get("prev_grads") if isinstance(state, dict) else None
        self.prev_grads = None if prev is None else prev.clone()
