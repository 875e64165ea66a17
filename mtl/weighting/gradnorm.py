"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import GradientWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["GradNorm"]


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    """Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks", ICML 2018.

    Task weights ``w [T]`` (a buffer, updated by the method itself, not by the model's
    optimiser). Each step, with the per-task gradient norms ``n_t = ||g_t||`` given by the
    backend (shared parameters or representation), the inverse training rates
    ``r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))`` and the target
    ``mean_j(w_j n_j) r_t^alpha`` (held constant, as in the paper), the weights take one
    gradient step on ``L_grad = sum_t |w_t n_t - target_t|``, in units of the mean norm:
    ``w_t -= lr * sign(w_t n_t - target_t) n_t / mean_j n_j``, are floored at ``min_weight`` and
    renormalised so that the present tasks keep their total weight (``sum_t w_t = T`` overall).
    The update direction of the step uses the weights before the update: ``d = sum_t w_t g_t``.
    ``L_t(0)`` is the loss of the first batch in which task ``t`` is labelled; an absent task
    keeps its weight and initial loss.

    Deliberate difference from the paper: the paper optimises ``w`` with the network's
    optimiser (Adam in its code), whose steps do not depend on the gradient scale; a plain
    gradient step would (the weights jumped between ``min_weight`` and 2 at gradient norms near
    100 and barely moved near 0.01), so the step is divided by the mean gradient norm.

    Args:
        alpha: restoring-force strength (1.5 in the paper's NYUv2 experiments).
        lr: learning rate of the weights' internal update.
        min_weight: floor on a weight after the update.
    """

    def __init__(
        self, num_tasks: int, alpha: float = 1.5, lr: float = 0.025, min_weight: float = 1e-3
    ) -> None:
        super().__init__(num_tasks)
        self.alpha, self.lr, self.min_weight = float(alpha), float(lr), float(min_weight)
        f64 = torch.float64
        self.register_buffer("task_weights", torch.ones(num_tasks, dtype=f64))
        self.register_buffer("initial_losses", torch.full((num_tasks,), float("nan"), dtype=f64))
        self.task_weights: Tensor
        self.initial_losses: Tensor

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        # no autograd graph for the method's own bookkeeping (a context, not a decorator:
        # mutmut does not mutate decorated functions)
        with torch.no_grad():
            t_idx = tasks.to(self.task_weights.device)
            norms = grads.norm(dim=1).to(self.task_weights)  # [K]
            cur = losses.detach().to(self.task_weights)  # [K]
            init = self.initial_losses[t_idx]
            init = torch.where(torch.isfinite(init) & (init > 0), init, cur)
            self.initial_losses[t_idx] = init
            w = self.task_weights[t_idx].clone()  # weights used for this step's direction
            ratio = cur / init.clamp_min(1e-12)
            ratio = ratio / ratio.mean().clamp_min(1e-12)
            target = (w * norms).mean() * ratio.pow(self.alpha)
            # d L_grad / d w_t = sign(w_t n_t - target_t) n_t, taken in units of the mean norm so
            # the step size does not depend on the gradient scale (the paper trains w with Adam,
            # which is scale-free too; a raw SGD step jumped between the floor and 2 at norms ~100
            # and hardly moved at norms ~0.01).
            unit = norms / norms.mean().clamp_min(torch.finfo(norms.dtype).tiny)
            new_w = (w - self.lr * torch.sign(w * norms - target) * unit).clamp_min(self.min_weight)
            new_w = new_w * (w.sum() / new_w.sum())
            self.task_weights[t_idx] = new_w
            return w.to(device=grads.device, dtype=grads.dtype)
