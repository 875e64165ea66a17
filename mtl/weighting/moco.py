"""MoCo: multi-objective gradient correction (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen,
ICLR 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["MoCo"]


@register_weighting("moco")
class MoCo(Weighting):
    """Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach", ICLR 2023.

    Ported from LibMTL's ``MoCo`` (the authors' code). Each task's gradient is first rescaled
    to the length of its loss, ``g~_t = L_t g_t / (||g_t|| + eps)``; a tracking variable
    ``y_t`` follows it, ``y_t <- y_t - beta_k (y_t - g~_t)`` with ``beta_k = beta /
    k^beta_sigma``, which removes the stochastic-gradient bias of MGDA-type weights. The
    weights are updated by one step ``lambda <- softmax(lambda - gamma_k (Y Y^T + rho I)
    lambda)`` with ``gamma_k = gamma / k^gamma_sigma`` and the direction is ``d = Y^T lambda``
    (not a combination of this batch's gradients: the logged weights are ``lambda``).

    Deviations (docs/weighting.md): the paper projects ``lambda`` onto the simplex; the
    reference code (LibMTL), followed here, takes a softmax. Partial labels: ``y_t`` and its
    step count ``k_t`` advance only in steps in which task ``t`` is labelled (the reference,
    with every task in every batch, uses one global ``k``); ``lambda`` is updated (softmax)
    over the present tasks only, so their weights sum to 1 and the absent tasks' entries stay;
    ``gamma_k`` uses the number of steps with at least one present task. With every task in
    every step this is exactly the reference update.

    State: ``y`` is a ``[T, P]`` matrix (one gradient-sized row per task, saved through
    ``get_extra_state``) besides the ``[T]`` buffers. Only ``backend="full"``: on the
    representation backend the rows of ``G`` are per-sample gradients of ``z``, whose meaning
    changes with every batch, so tracking them across steps is meaningless (LibMTL refuses it
    too). Cost: the backend's per-task gradients, no extra backward.

    Args:
        beta: step size of the tracking variable ``y`` (0.5, LibMTL).
        beta_sigma: decay exponent of ``beta`` (0.5).
        gamma: step size of ``lambda`` (0.1).
        gamma_sigma: decay exponent of ``gamma`` (0.5).
        rho: l2 regularisation of the ``lambda`` update (0).
        eps: added to ``||g_t||`` in the rescaling (1e-8, as the reference).
    """

    level = "gradient"
    # Not "representation": y tracks each task's gradient across batches (see the docstring).
    backends = ("full",)

    def __init__(
        self,
        num_tasks: int,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(num_tasks)
        if beta <= 0 or gamma < 0 or rho < 0:
            raise ValueError(
                f"moco expects beta > 0, gamma >= 0, rho >= 0; got beta={beta}, "
                f"gamma={gamma}, rho={rho}"
            )
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho, self.eps = float(rho), float(eps)
        f64 = torch.float64
        self.register_buffer("lambd", torch.full((num_tasks,), 1.0 / num_tasks, dtype=f64))
        self.register_buffer("task_steps", torch.zeros(num_tasks, dtype=f64))  # k_t of y_t
        self.register_buffer("step", torch.zeros((), dtype=f64))  # k of lambda
        self.lambd: Tensor
        self.task_steps: Tensor
        self.step: Tensor
        self.y: Tensor | None = None  # [T, P] tracked, rescaled task gradients

    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        tasks = present.nonzero().squeeze(1)  # [K]
        weights = grads.new_zeros(self.num_tasks)
        if tasks.numel() == 0:
            return grads.new_zeros(grads.shape[1]), weights
        y = self.y
        if y is None or y.shape != grads.shape:  # first step, or another model
            y = torch.zeros_like(grads)
            self.task_steps.zero_()
        y = y.to(device=grads.device, dtype=grads.dtype)
        g = grads.index_select(0, tasks)  # [K, P]
        loss = losses.index_select(0, tasks).to(g.dtype)  # [K]
        g = g / (g.norm(dim=1, keepdim=True) + self.eps) * loss[:, None]  # ||g~_t|| = L_t
        t_idx = tasks.to(self.task_steps.device)
        self.task_steps[t_idx] += 1
        beta = (self.beta / self.task_steps[t_idx].pow(self.beta_sigma)).to(g)  # [K]
        y_k = y.index_select(0, tasks)
        y_k = y_k - beta[:, None] * (y_k - g)  # [K, P]
        self.y = y.index_copy(0, tasks, y_k)
        self.step += 1
        gamma = self.gamma / float(self.step) ** self.gamma_sigma
        # the K x K problem in float64 on the CPU (one device sync)
        yy = (y_k @ y_k.T).to(device="cpu", dtype=torch.float64)  # [K, K]
        yy = yy + self.rho * torch.eye(tasks.numel(), dtype=torch.float64)
        lam = self.lambd.detach().cpu()[tasks.cpu()]  # [K]
        lam = torch.softmax(lam - gamma * (yy @ lam), dim=0)
        self.lambd[t_idx] = lam.to(self.lambd)
        lam_g = lam.to(device=g.device, dtype=g.dtype)
        weights[tasks] = lam_g
        return lam_g @ y_k, weights

    def get_extra_state(self) -> Any:
        return {"y": None if self.y is None else self.y.cpu()}

    def set_extra_state(self, state: Any) -> None:
        y = state.get("y") if isinstance(state, dict) else None
        self.y = None if y is None else y.clone()
