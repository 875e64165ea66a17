"""DB-MTL: Dual-Balancing Multi-Task Learning (Lin, Ye, Ye, Zhang & Kwok, 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["DBMTL"]


@register_weighting("db_mtl")
class DBMTL(Weighting):
    """Lin, Ye, Ye, Zhang & Kwok, "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029,
    2023.

    A gradient-level method (the gradient-magnitude balance needs per-task gradients):

    * **loss-scale balance**: every loss is log-transformed, ``log(L_t + eps)``; its gradient
      is ``g_t / (L_t + eps)``, computed from the backend's ``g_t`` without another backward,
      and the heads receive ``1 / (L_t + eps)`` times their gradient (:meth:`head_scales`).
    * **gradient-magnitude balance**: an EMA ``h_t <- g~_t + beta / k_t^sigma (h_t - g~_t)``
      of the log-loss gradients (``k_t`` = steps in which task t was labelled), then
      ``d = sum_t (max_j ||h_j|| / ||h_t||) h_t``: every task contributes with the norm of the
      largest one.

    The logged weights are ``(max_j ||h_j|| / ||h_t||) / (L_t + eps)`` (the factor on the raw
    gradient, ignoring the EMA). An absent task neither updates its EMA nor contributes. The
    EMA buffer is reset if the gradient size changes (a different model). The buffer is saved
    through ``get_extra_state``. Only ``backend="full"``: with the representation backend the
    EMA would average per-sample gradients of different batches (LibMTL refuses it as well).

    Args:
        beta: EMA coefficient (0.9 in the paper).
        beta_sigma: decay exponent of the EMA coefficient (0.5 in the paper).
        eps: added to the losses inside the log.
    """

    level = "gradient"
    # Not "representation": there the rows of G are per-sample gradients of z, which change
    # meaning with every batch, so an EMA across batches mixes different samples' gradients
    # (and the buffer is reset whenever the batch size changes). LibMTL refuses it too.
    backends = ("full",)

    def __init__(
        self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.5, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.grad_buffer: Tensor | None = None  # [T, P]
        self.register_buffer("steps", torch.zeros(num_tasks, dtype=torch.float64))
        self.steps: Tensor

    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        tasks = present.nonzero().squeeze(1)
        weights = grads.new_zeros(self.num_tasks)
        if tasks.numel() == 0:
            return grads.new_zeros(grads.shape[1]), weights
        buf = self.grad_buffer
        if buf is None or buf.shape != grads.shape:
            buf = torch.zeros_like(grads)
            self.steps.zero_()
        buf = buf.to(device=grads.device, dtype=grads.dtype)
        inv = 1.0 / (losses.index_select(0, tasks).to(grads.dtype) + self.eps)  # [K]
        g_log = grads.index_select(0, tasks) * inv[:, None]  # [K, P] gradients of log L_t
        t_idx = tasks.to(self.steps.device)
        self.steps[t_idx] += 1
        rate = (self.beta / self.steps[t_idx].pow(self.beta_sigma)).to(grads)  # [K]
        h = g_log + rate[:, None] * (buf.index_select(0, tasks) - g_log)
        buf = buf.index_copy(0, tasks, h)
        self.grad_buffer = buf
        norms = h.norm(dim=1)  # [K]
        scale = torch.where(norms > 0, norms.max() / norms.clamp_min(1e-30), 0.0)
        weights[tasks] = scale * inv
        return scale @ h, weights

    def head_scales(self, losses: Tensor, present: Tensor) -> Tensor | None:
        return 1.0 / (losses.detach() + self.eps)

    def get_extra_state(self) -> Any:
        return {"grad_buffer": None if self.grad_buffer is None else self.grad_buffer.cpu()}

    def set_extra_state(self, state: Any) -> None:
        buf = state.get("grad_buffer") if isinstance(state, dict) else None
        self.grad_buffer = None if buf is None else buf.clone()
