"""The contract of a task-weighting method.

Two levels exist:

* **loss level** (``level = "loss"``): the method returns weights ``w [T]`` and the trainer
  back-propagates ``sum_t w_t * L_t`` (plus an optional regulariser of the method's own
  parameters, see :meth:`Weighting.regularization`) once.
* **gradient level** (``level = "gradient"``): a backend (``mtl.weighting.backward``) computes
  the per-task gradients ``G [T, P]`` with respect to the shared parameters (``"full"``) or to
  the shared representation (``"representation"``), the method turns them into one update
  direction ``d [P]``, and the backend writes ``d`` back as the shared gradient.

Partial labels: ``present [T]`` (bool) says which tasks have at least one labelled sample in the
batch. A task that is absent gets weight 0, its row of ``G`` is zero, and a stateful method must
not update that task's state from it.

Gradients handed to :meth:`Weighting.aggregate` are always *unscaled* (the backend divides out
the AMP loss scale before and multiplies it back after), so thresholds and solver tolerances
inside a method mean the same thing with and without mixed precision.

Weightings are ``nn.Module`` so their learnable parameters (uncertainty, IMTL-L) are optimised
with the model and their state (buffers) is saved in the training checkpoint.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

__all__ = ["GradientWeighting", "GramWeighting", "Level", "Weighting"]

Level = Literal["loss", "gradient"]


class Weighting(nn.Module):
    """Base class: subclasses set ``level`` and implement ``weights`` or ``aggregate``."""

    level: ClassVar[Level] = "loss"
    #: Gradient backends the method supports (empty for loss-level methods).
    backends: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks

    # ----------------------------------------------------------------------------- loss level
    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        """Loss level: ``losses [T]`` (attached to the graph), ``present [T]`` -> weights ``[T]``.

        The weights may be attached to the method's own parameters (uncertainty) but must not
        carry gradient into the model; :meth:`objective` zeroes the weights of absent tasks.
        """
        raise NotImplementedError(f"{type(self).__name__} is a gradient-level method")

    def regularization(self, losses: Tensor, present: Tensor) -> Tensor | None:
        """A term added to the objective that only touches the method's own parameters.

        ``None`` (the default) for methods without learnable parameters. For gradient-level
        methods the backend back-propagates it separately with ``losses`` detached.
        """
        return None

    def objective(self, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Loss level: the scalar to back-propagate and the weights ``[T]`` (absent -> 0)."""
        w = self.weights(losses, present).to(losses.dtype)
        w = torch.where(present, w, torch.zeros_like(w))  # absent -> exactly 0 (even if NaN)
        total = (w * losses).sum()
        reg = self.regularization(losses, present)
        if reg is not None:
            total = total + reg
        return total, w

    # ------------------------------------------------------------------------- gradient level
    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Gradient level: ``grads [T, P]`` -> (direction ``[P]``, effective weights ``[T]``).

        ``losses [T]`` are detached. Rows of absent tasks are zero and must get weight 0.
        """
        raise NotImplementedError(f"{type(self).__name__} is a loss-level method")

    def set_representation(self, representation: Tensor | None) -> None:
        """Gradient level: called by the backend just before :meth:`aggregate` with the shared
        representation ``z [B, ...]`` (detached) for ``backend="representation"`` and ``None``
        for ``"full"``. Default: ignored (GradDrop uses the signs of ``z``)."""

    def head_scales(self, losses: Tensor, present: Tensor) -> Tensor | None:
        """Gradient level: factors ``[T]`` applied to each task's head gradient (default 1).

        DB-MTL uses it to give the heads the gradient of ``log L_t``. ``None`` means all ones.
        """
        return None

    # ----------------------------------------------------------------------------- callbacks
    def epoch_end(self, mean_losses: Tensor, present: Tensor) -> None:
        """Called once per epoch with each task's mean training loss (DWA uses it)."""

    def step_end(self, losses: Tensor, present: Tensor) -> None:
        """Called after each optimiser step with the detached losses of that step (FAMO)."""

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"


class GradientWeighting(Weighting):
    """A gradient-level method whose direction is a linear combination ``d = w @ G``.

    Subclasses implement :meth:`combine` on the rows of the tasks present in the batch only;
    this class scatters the weights back to ``[T]`` (absent tasks get 0).
    """

    level: ClassVar[Level] = "gradient"
    backends: ClassVar[tuple[str, ...]] = ("full", "representation")

    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        tasks = present.nonzero().squeeze(1)  # [K] indices of the present tasks
        weights = grads.new_zeros(self.num_tasks)
        if tasks.numel() == 0:
            return grads.new_zeros(grads.shape[1]), weights
        g = grads.index_select(0, tasks)  # [K, P]
        w = self.combine(g, losses.index_select(0, tasks), tasks).to(g.dtype)  # [K]
        weights[tasks] = w
        return w @ g, weights

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        """``grads [K, P]`` of the ``K`` present tasks (indices ``tasks [K]``) -> ``w [K]``."""
        raise NotImplementedError


class GramWeighting(GradientWeighting):
    """A linear-combination method that only needs the Gram matrix ``M = G G^T``.

    The ``K x K`` Gram matrix is moved to the CPU in float64 once (one device sync), so the
    small solvers run without per-iteration device round-trips and are numerically stable.
    """

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        gram = (grads @ grads.T).to(device="cpu", dtype=torch.float64)  # [K, K]
        w = self.weights_from_gram(gram, losses.detach().to("cpu", torch.float64), tasks.cpu())
        return w.to(device=grads.device, dtype=grads.dtype)

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        """``gram [K, K]`` float64 CPU, ``losses [K]``, ``tasks [K]`` -> weights ``[K]``."""
        raise NotImplementedError
