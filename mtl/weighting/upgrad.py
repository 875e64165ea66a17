"""UPGrad (Quinton & Rey, 2024) — TorchJD's unconflicting projection of gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from mtl.weighting._solvers import box_qp
from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["UPGrad"]


@register_weighting("upgrad")
class UPGrad(GramWeighting):
    """Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232,
    2024 (the ``UPGrad`` aggregator of TorchJD).

    Each row ``p_i g_i`` (``p`` = preference, default ``1/K``) is projected onto the dual cone
    ``{x : G x >= 0}`` of the gradients and the projections are summed. In weight space the
    projection of ``u^T G`` is ``v^T G`` with ``v = argmin_{v >= u} v^T M v`` (the dual of the
    projection QP, ``M = G G^T``), so ``w = sum_i v_i``: a ``K``-dimensional box-constrained
    QP per task, solved exactly (active-set enumeration up to 6 tasks, projected Gauss-Seidel
    beyond). Without conflicts every ``g_i`` is already in the cone and ``d`` is the mean.

    Args:
        pref: preference weights (``None`` = uniform ``1/K`` over the present tasks).
    """

    def __init__(self, num_tasks: int, pref: Sequence[float] | None = None) -> None:
        super().__init__(num_tasks)
        if pref is not None and len(pref) != num_tasks:
            raise ValueError(f"upgrad pref: expected {num_tasks} values, got {len(pref)}")
        self.pref = None if pref is None else np.asarray(pref, dtype=np.float64)

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = gram.shape[0]
        p = np.full(k, 1.0 / k) if self.pref is None else self.pref[tasks.numpy()]
        v = box_qp(gram.numpy(), np.diag(p))  # [K, K]: row i = weights of projected p_i g_i
        return gram.new_tensor(v.sum(axis=0))
