"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["FAMO"]


@register_weighting("famo")
class FAMO(Weighting):
    """Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

    Task logits ``xi [T]``, ``z = softmax(xi)`` over the present tasks. The model minimises
    ``sum_t (z_t / c) log(L_t - min_t + eps)`` with ``c = sum_t z_t / (L_t - min_t + eps)``,
    i.e. loss weights ``w_t = z_t / (c (L_t - min_t + eps))`` (detached), at the cost of one
    backward pass. After each step the logits follow the observed log-loss decrease
    ``delta_t = log L_t(before) - log L_t(after)``: ``grad xi = J_softmax(xi)^T delta`` plus
    weight decay ``gamma xi``, applied with Adam (``lr``).

    Approximation (documented deviation): the paper's reference code re-evaluates the loss of
    the *same* batch after the optimiser step (an extra forward pass). Here :meth:`step_end`
    receives the losses of each step, and ``delta`` compares the losses of two consecutive
    steps (different batches): ``delta_t = log L_t(step k-1) - log L_t(step k)``, a noisy but
    unbiased-in-expectation estimate of the per-task improvement, for no extra forward pass.

    Sparse labels (documented deviation, needed because mtl trains on partial labels): when a
    task is labelled again, its log-loss decrease since its previous labelled step is *queued*
    together with the number of optimiser steps it spans; every step, each task with a queue
    feeds ``delta_t = queued decrease / queued steps`` (a per-step rate) and spends one step of
    its queue, also while it is absent. Tasks with an empty queue (never labelled twice, or
    absent for longer than their last gap) sit the update out; their logits, Adam moments and
    step counts are left unchanged. Comparing per-step rates keeps two equally progressing
    tasks at equal weights whatever their labelling frequency (without it a task labelled
    every 20th batch showed 20 steps of progress at once and its weight fell to 0.07); feeding
    every measured decrease exactly once makes the batch noise telescope however irregular the
    gaps (three tasks labelled every 1 / 2 / 5 batches at 5 % noise stay within 0.27-0.39,
    as FAMO with every label does). When every task is labelled in every step the queue holds
    exactly one step and the update is the reference one. The trainer calls
    :meth:`step_end` once per optimiser step.

    Args:
        lr: Adam learning rate of the logits (0.025 in the paper).
        gamma: weight decay of the logits (0.001 in the paper).
        min_losses: lower bound ``min_t`` of every loss (0 for the usual non-negative losses).
        eps: added inside the log.
    """

    level = "loss"

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        gamma: float = 0.001,
        min_losses: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(num_tasks)
        self.lr, self.gamma = float(lr), float(gamma)
        self.min_losses, self.eps = float(min_losses), float(eps)
        f64 = torch.float64
        self.register_buffer("logits", torch.zeros(num_tasks, dtype=f64))
        self.register_buffer("exp_avg", torch.zeros(num_tasks, dtype=f64))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks, dtype=f64))
        self.register_buffer("adam_steps", torch.zeros(num_tasks, dtype=f64))
        self.register_buffer("prev_losses", torch.full((num_tasks,), float("nan"), dtype=f64))
        # optimiser step (count of step_end calls) at which prev_losses was recorded
        self.register_buffer("prev_steps", torch.full((num_tasks,), float("nan"), dtype=f64))
        self.register_buffer("steps_seen", torch.zeros((), dtype=f64))
        # queued log-loss decrease not yet fed to the logits, and the optimiser steps it spans
        self.register_buffer("pending", torch.zeros(num_tasks, dtype=f64))
        self.register_buffer("pending_steps", torch.zeros(num_tasks, dtype=f64))
        self.logits: Tensor
        self.exp_avg: Tensor
        self.exp_avg_sq: Tensor
        self.adam_steps: Tensor
        self.prev_losses: Tensor
        self.prev_steps: Tensor
        self.steps_seen: Tensor
        self.pending: Tensor
        self.pending_steps: Tensor

    def task_weights(self, present: Tensor) -> Tensor:
        """``z = softmax(xi)`` over the present tasks (0 elsewhere), float64 ``[T]``."""
        mask = present.to(self.logits.device)
        z = torch.softmax(self.logits.masked_fill(~mask, float("-inf")), dim=0)
        return torch.nan_to_num(z, nan=0.0)

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        z = self.task_weights(present).to(device=losses.device, dtype=losses.dtype)
        gap = (losses.detach() - self.min_losses).clamp_min(0.0) + self.eps  # [T]
        c = (z / gap).sum()
        if not bool(c > 0):  # no task present
            return torch.zeros_like(z)
        return z / (c * gap)

    def step_end(self, losses: Tensor, present: Tensor) -> None:
        # no autograd graph for the method's own bookkeeping (a context, not a decorator:
        # mutmut does not mutate decorated functions)
        with torch.no_grad():
            cur = losses.detach().to(self.prev_losses)
            mask = present.to(self.prev_losses.device) & torch.isfinite(cur)
            seen = torch.isfinite(self.prev_losses)
            back = mask & seen  # labelled now and at some earlier step: a measured decrease
            now = self.steps_seen + 1.0
            log_cur = torch.log((cur - self.min_losses).clamp_min(0.0) + self.eps)
            log_prev = torch.log((self.prev_losses - self.min_losses).clamp_min(0.0) + self.eps)
            # queue the log-loss decrease since the task's previous labelled step, to be spread
            # evenly over as many optimiser steps as it took (>= 1)
            gap = torch.where(back, now - self.prev_steps, torch.zeros_like(cur))
            self.pending.add_(torch.where(back, log_prev - log_cur, torch.zeros_like(cur)))
            self.pending_steps.add_(gap)
            active = self.pending_steps >= 1.0  # [T] tasks with a queued rate this step
            rate = torch.where(active, self.pending / self.pending_steps.clamp_min(1.0),
                               torch.zeros_like(cur))  # [T] log-loss decrease per step
            if int(active.sum()) >= 2:  # with one task the softmax Jacobian is 0: nothing to learn
                z = self.task_weights(active)
                # J_softmax^T delta = z * (delta - z . delta); + L2 decay, as torch.optim.Adam does.
                grad = z * (rate - (z * rate).sum()) + self.gamma * self.logits
                self._masked_adam(grad, active)
            # one step of every queue is spent (used or, for a lone task, dropped)
            self.pending.sub_(rate)
            self.pending_steps.sub_(active.to(self.pending_steps))
            self.prev_losses.copy_(torch.where(mask, cur, self.prev_losses))
            self.prev_steps.copy_(torch.where(mask, now.expand_as(cur), self.prev_steps))
            self.steps_seen.copy_(now)

    def _masked_adam(self, grad: Tensor, mask: Tensor, b1: float = 0.9, b2: float = 0.999) -> None:
        """One Adam step on the logits of ``mask`` only (per-task bias correction)."""
        steps = self.adam_steps + mask.to(self.adam_steps)
        m = b1 * self.exp_avg + (1 - b1) * grad
        v = b2 * self.exp_avg_sq + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**steps).clamp_min(1e-12)
        v_hat = v / (1 - b2**steps).clamp_min(1e-12)
        new_logits = self.logits - self.lr * m_hat / (v_hat.sqrt() + 1e-8)
        self.logits.copy_(torch.where(mask, new_logits, self.logits))
        self.exp_avg.copy_(torch.where(mask, m, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(mask, v, self.exp_avg_sq))
        self.adam_steps.copy_(steps)
