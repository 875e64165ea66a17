"""ExcessMTL: robust multi-task learning with excess risks (He et al., ICML 2024)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mtl.weighting.base import GradientWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["ExcessMTL"]

_TINY = torch.finfo(torch.float64).tiny  # smallest positive normal float64


@register_weighting("excess_mtl")
class ExcessMTL(GradientWeighting):
    """He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess
    Risks", ICML 2024 (the authors' code, as in LibMTL's ``ExcessMTL``).

    Each task's *excess risk* ``L_t(theta) - L_t(theta*)`` is estimated by the second-order
    Taylor term ``g_t^T H_t^{-1} g_t`` with an AdaGrad diagonal ``H_t = sqrt(sum_s g_t,s^2 +
    eps)`` (Eq. 6-7; ``g_t,s``: task t's gradient at its s-th step). The estimate of a task's
    first step is its baseline; afterwards the loss weights follow an exponentiated-gradient
    step on the baseline-normalised estimates (Eq. 9): ``alpha_t <- alpha_t exp(eta * E_t /
    E_t(first))``, renormalised to sum to ``T`` (the reference starts at ``alpha = 1``, so the
    weights stay sum-scaled). The tasks with the larger (relative) excess risk, i.e. the ones
    furthest from their optimum, gain weight; ``d = sum_t alpha_t g_t`` uses the weights
    updated at this step, as the reference's backward does.

    Backends: ``full`` (``g_t`` = gradient of the shared parameters) and ``representation``,
    where, as LibMTL does, the excess risk is estimated on the per-task gradient with respect
    to ``z`` summed over the batch (``[D]``: the gradient of a shift shared by every sample,
    of the same size in every batch), while the direction still combines the per-sample rows.

    Partial labels (mtl's extension; the reference has every task in every batch): an absent
    task's AdaGrad sum, baseline and weight are left as they are; the present tasks'
    weights are updated and renormalised to keep their total (``T`` when every task is
    present, the reference's normalisation). A task's baseline is its first step with a
    non-zero estimate (a zero baseline would divide by zero). The AdaGrad sum ``[T, P]``
    (as large as ``T`` copies of the gradient) is saved through ``get_extra_state`` and reset
    with the baselines if the gradient size changes (another model).

    Args:
        robust_step_size: ``eta``, the exponentiated-gradient step (1e-2, LibMTL's default).
        eps: added inside the AdaGrad square root (1e-7 in the reference code).
    """

    def __init__(self, num_tasks: int, robust_step_size: float = 1e-2, eps: float = 1e-7) -> None:
        super().__init__(num_tasks)
        if not robust_step_size > 0.0:
            raise ValueError(f"excess_mtl robust_step_size must be > 0, got {robust_step_size}")
        self.robust_step_size, self.eps = float(robust_step_size), float(eps)
        f64 = torch.float64
        self.register_buffer("loss_weight", torch.ones(num_tasks, dtype=f64))  # alpha [T]
        # E_t at the task's first step (NaN until then) [T]
        self.register_buffer("initial_risk", torch.full((num_tasks,), math.nan, dtype=f64))
        self.loss_weight: Tensor
        self.initial_risk: Tensor
        self.grad_sum: Tensor | None = None  # [T, P'] AdaGrad accumulator of squared gradients
        self._batch: int | None = None  # representation backend: samples per row of G

    def set_representation(self, representation: Tensor | None) -> None:
        self._batch = None if representation is None else int(representation.shape[0])

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = grads.shape[0]
        # the gradient whose excess risk is estimated: [K, P] (full) or [K, D] (the per-sample
        # rows [K, B*D] of the representation backend summed over the B samples)
        g = grads if self._batch is None else grads.view(k, self._batch, -1).sum(1)
        buf = self.grad_sum
        if buf is None or buf.shape[1] != g.shape[1]:
            buf = g.new_zeros(self.num_tasks, g.shape[1])
            self.initial_risk.fill_(math.nan)
        buf = buf.to(device=g.device, dtype=g.dtype)
        sq = g * g  # [K, P']
        acc = buf.index_select(0, tasks) + sq  # [K, P'] the present tasks' AdaGrad sums
        self.grad_sum = buf.index_copy(0, tasks, acc)
        # E_t = g_t^T diag(1 / sqrt(acc_t + eps)) g_t, [K]; one device sync
        risk = (sq / torch.sqrt(acc + self.eps)).sum(1).to(device="cpu", dtype=torch.float64)
        t_cpu = tasks.cpu()
        base = self.initial_risk.cpu()[t_cpu]  # [K]
        first = torch.isnan(base)
        base = torch.where(first & (risk > 0), risk, base)
        self.initial_risk[tasks.to(self.initial_risk.device)] = base.to(self.initial_risk)
        # a weight that underflowed to exactly 0 would make log(alpha) -inf and, once every
        # present task had one, softmax([-inf, ...]) NaN for good: floor it at the smallest
        # positive float64 (the total changes by ~1e-308)
        alpha = self.loss_weight.cpu()[t_cpu].clamp_min(_TINY)  # [K]
        # tasks at their baseline step (or still without one) keep their weight: factor 1
        step = torch.where(first, 0.0, self.robust_step_size * risk / base)
        # alpha exp(step), renormalised so that the present tasks keep their total: in log
        # space (a softmax), so that a large step saturates instead of overflowing to inf
        new = (torch.softmax(torch.log(alpha) + step, dim=0) * alpha.sum()).clamp_min(_TINY)
        self.loss_weight[tasks.to(self.loss_weight.device)] = new.to(self.loss_weight)
        return new.to(device=grads.device, dtype=grads.dtype)

    def get_extra_state(self) -> Any:
        return {"grad_sum": None if self.grad_sum is None else self.grad_sum.cpu()}

    def set_extra_state(self, state: Any) -> None:
        buf = state.get("grad_sum") if isinstance(state, dict) else None
        self.grad_sum = None if buf is None else buf.clone()
