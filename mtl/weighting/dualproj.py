"""DualProj: the mean gradient projected onto the dual cone of the task gradients
(Lopez-Paz & Ranzato, NeurIPS 2017; TorchJD's ``DualProj`` aggregator)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from mtl.weighting._solvers import box_qp
from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["DualProj"]


@register_weighting("dualproj")
class DualProj(GramWeighting):
    """Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
    (Eq. 11, the projection of GEM), as the ``DualProj`` aggregator of TorchJD (Quinton & Rey,
    "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024).

    The weighted mean ``u^T G`` (``u`` = preference, default ``1/K``) is projected onto the
    dual cone ``{x : G x >= 0}`` of the ``K`` present tasks' gradients: the closest direction
    that conflicts with no task. In weight space the projection is ``w^T G`` with ``w =
    argmin_{v >= u} v^T M v`` (``M = G G^T``; GEM's dual QP, TorchJD's ``project_weights``),
    so ``d = w^T G`` and ``w >= u``. Without a conflict the mean already lies in the cone and
    ``d`` is the mean. UPGrad projects each ``u_i g_i`` separately and sums; DualProj projects
    their sum once.

    The ``K``-dimensional box QP is solved exactly (active-set enumeration up to 6 tasks,
    projected Gauss-Seidel beyond; the solver of ``upgrad``). Deliberate difference from
    TorchJD: no ``norm_eps`` / ``reg_eps`` (1e-4 each there). TorchJD divides the Gram matrix
    by its trace, returns ``u`` unchanged (no projection at all) when that trace is below
    ``norm_eps``, i.e. whenever ``||G||_F < 0.01``, and adds ``reg_eps I`` so that quadprog
    sees a positive definite matrix, which moves the weights by O(1e-4). The exact projection
    keeps the weights invariant to a common gradient scale, as the paper's are.

    Args:
        pref: preference weights ``u`` (``None`` = uniform ``1/K`` over the present tasks;
            otherwise one value per task, those of the present tasks are used as given).
    """

    def __init__(self, num_tasks: int, pref: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        if pref is not None and len(pref) != num_tasks:
            raise ValueError(f"dualproj pref: expected {num_tasks} values, got {len(pref)}")
        self.pref = None if pref is None else np.asarray(pref, dtype=np.float64)

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = gram.shape[0]
        u = np.full(k, 1.0 / k) if self.pref is None else self.pref[tasks.numpy()]
        w = box_qp(gram.numpy(), u[None, :])[0]  # [K]: weights of the projected u^T G
        return gram.new_tensor(w)
