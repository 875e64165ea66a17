"""STCH: smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Liu, Wang & Zhang, ICML 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.weighting.base import Weighting
from mtl.weighting.registry import register_weighting

__all__ = ["STCH"]


@register_weighting("stch")
class STCH(Weighting):
    """Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024 (the multi-task recipe of the authors' code,
    ``STCH_MTL``, and LibMTL's ``STCH``).

    * **warm-up** (epochs ``0 .. warmup_epoch``, counted by :meth:`epoch_end`): minimise
      ``sum_t log(L_t + eps)``, i.e. weights ``1 / (L_t + eps)``.
    * **nadir point**: each task's mean training loss over epoch ``warmup_epoch`` (the mean of
      its per-batch losses, which is what the trainer hands to :meth:`epoch_end`, and what
      the reference accumulates batch by batch in that epoch).
    * **afterwards**: minimise the smooth Tchebycheff value of the log-normalised losses
      ``l_t = log(L_t / z_t + eps)`` (``z`` = nadir), ``K mu log sum_t exp(l_t / mu)``. Its
      gradient is ``sum_t w_t grad L_t`` with ``w_t = K softmax(l / mu)_t / (L_t + eps z_t)``,
      the (detached) weights returned here: the same gradient as back-propagating the
      reference's objective, in one backward pass. ``mu -> 0`` approaches the Tchebycheff
      (worst-task) objective, large ``mu`` the warm-up's log-loss sum.

    Partial labels: ``K`` and the softmax run over the present tasks (the reference has every
    task in every batch: ``K = T``). A task's nadir is recorded at the end of epoch
    ``warmup_epoch`` if it was labelled in that epoch, otherwise at the end of the first later
    epoch in which it was (and only from a positive finite mean loss); until then the task
    keeps its warm-up weight ``1 / (L_t + eps)`` and the smooth Tchebycheff term runs over
    the tasks that have a nadir. The epoch count and the nadir point are buffers (saved with
    the checkpoint, so a resumed run continues in the same phase).

    Args:
        mu: smoothing parameter (1.0, LibMTL's ``STCH_mu`` default).
        warmup_epoch: index of the epoch whose mean losses become the nadir point; epochs
            ``0 .. warmup_epoch`` train on the log-loss sum (4, LibMTL's
            ``STCH_warmup_epoch`` default).
        eps: added inside the logs (``1e-20`` in the reference code).
    """

    level = "loss"

    def __init__(
        self, num_tasks: int, mu: float = 1.0, warmup_epoch: int = 4, eps: float = 1e-20
    ) -> None:
        super().__init__(num_tasks)
        if not mu > 0.0:
            raise ValueError(f"stch mu must be > 0, got {mu}")
        if warmup_epoch < 0:
            raise ValueError(f"stch warmup_epoch must be >= 0, got {warmup_epoch}")
        self.mu, self.warmup_epoch, self.eps = float(mu), int(warmup_epoch), float(eps)
        self.register_buffer("epochs", torch.zeros((), dtype=torch.int64))  # completed epochs
        # nadir point z [T]; NaN until recorded
        self.register_buffer("nadir", torch.full((num_tasks,), float("nan"), dtype=torch.float64))
        self.epochs: Tensor
        self.nadir: Tensor

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        l_ = losses.detach().to(torch.float64)  # [T]
        nadir = self.nadir.to(l_.device)
        present = present.to(l_.device)
        w = torch.where(present, 1.0 / (l_ + self.eps), 0.0)  # warm-up weights [T]
        stch = present & torch.isfinite(nadir)  # [T] tasks in the Tchebycheff term
        if bool(stch.any()):
            k = stch.sum().to(torch.float64)
            z = torch.where(stch, nadir, 1.0)
            logs = torch.log(l_ / z + self.eps) / self.mu  # [T]
            soft = torch.softmax(logs.masked_fill(~stch, float("-inf")), dim=0)  # [T]
            w = torch.where(stch, k * soft / (l_ + self.eps * z), w)
        return w.to(losses.dtype)

    def epoch_end(self, mean_losses: Tensor, present: Tensor) -> None:
        if int(self.epochs) >= self.warmup_epoch:
            mean = mean_losses.detach().to(self.nadir)
            new = (present.to(self.nadir.device) & torch.isnan(self.nadir) & (mean > 0)
                   & torch.isfinite(mean))  # fmt: skip
            self.nadir.copy_(torch.where(new, mean, self.nadir))
        self.epochs += 1
