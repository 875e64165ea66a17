"""Euclidean projection onto a (scaled) probability simplex, shared by MoDo and SDMGrad."""

from __future__ import annotations

import numpy as np

__all__ = ["project_simplex"]


def project_simplex(v: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """``argmin_x ||x - v||`` over ``{x >= 0, sum(x) = radius}`` (``v [K]``, float64).

    The sort-based exact algorithm (Held, Wolfe & Crowder 1974; Duchi et al. 2008), the one
    behind both LibMTL's ``MoDo._projection2simplex`` and ``SDMGrad.euclidean_proj_simplex``.
    ``radius`` below 1 is used when only some tasks are present: their weights keep the mass
    they had, so the absent tasks' weights stay untouched.
    """
    if not radius > 0.0:
        raise ValueError(f"simplex radius must be > 0, got {radius}")
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]  # [K] descending
    css = np.cumsum(u) - radius
    ks = np.arange(1, v.shape[0] + 1)
    # the largest k with u_k > (sum_{j<=k} u_j - radius) / k: the support of the projection
    k = int(np.nonzero(u * ks > css)[0][-1])
    theta = css[k] / (k + 1)
    return np.maximum(v - theta, 0.0)
