"""CAGrad: Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from torch import Tensor

from mtl.weighting.base import GramWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["CAGrad"]


@register_weighting("cagrad")
class CAGrad(GramWeighting):
    """Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021.

    With ``g0`` the mean gradient, solve the dual ``min_{w in simplex} w^T G g0 +
    c ||g0|| ||w^T G||`` (SLSQP on the ``K``-dimensional problem, as the authors' code; exact
    for two tasks), then ``d = g0 + c ||g0|| / ||g_w|| g_w`` divided by ``1 + c^2``
    (``rescale=1``). The scale is that of the *mean* gradient; ``c = 0`` gives exactly the
    mean gradient, and one present task gives ``(1 + c) / (1 + c^2)`` times its gradient.

    Deliberate difference from the reference code: the dual is solved on the Gram matrix
    divided by its mean diagonal and without the reference code's absolute epsilons
    (``1e-8``/``1e-4`` added to norms), so the weights are exactly invariant to a common
    gradient scale, as the paper's weights are. The reference code's epsilons and SLSQP's
    absolute tolerance silently turn CAGrad into the mean gradient at small gradient norms.

    Args:
        c: radius of the conflict-averse ball, in units of ``||g0||`` (0.4 in the paper).
        rescale: 0: no rescaling, 1: divide by ``1 + c^2`` (paper default), 2: by ``1 + c``.
    """

    def __init__(self, num_tasks: int, c: float = 0.4, rescale: int = 1) -> None:
        super().__init__(num_tasks)
        if c < 0:
            raise ValueError(f"cagrad c must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale}")
        self.c, self.rescale = float(c), int(rescale)

    def weights_from_gram(self, gram: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k = gram.shape[0]
        # Solve on the Gram matrix divided by its mean diagonal: the dual's weights are
        # invariant to a common gradient scale in the paper, but fixed epsilons and SLSQP's
        # absolute tolerances are not (at gradient norms below ~0.1 SLSQP stopped at its start
        # point). The direction is then formed from the unnormalised gradients.
        scale = float(np.trace(gram.numpy())) / k
        mean_w = np.full(k, 1.0 / k)
        if not scale > 0.0:  # every gradient is zero: any weights give d = 0
            return gram.new_tensor(mean_w)
        a = gram.numpy() / scale  # [K, K], mean diagonal 1
        g0_norm = float(np.sqrt(max(float(a.mean()), 0.0)))  # ||g0|| / sqrt(scale)
        phi = self.c * g0_norm
        if phi <= 1e-12:  # c = 0, or the mean gradient vanishes: d = g0
            lam, w = 0.0, mean_w
        else:
            if k == 1:
                w = np.ones(1)
            elif k == 2:
                w = _two_task_dual(a, a @ mean_w, phi)
            else:
                w = _dual_slsqp(a, a @ mean_w, phi)
            gw_norm = float(np.sqrt(max(float(w @ a @ w), 0.0)))
            # one task: g_w = g0, so lam = c and d = (1 + c) g / (1 + c^2) (rescale=1)
            lam = phi / gw_norm if gw_norm > 1e-12 else 0.0
        out = mean_w + lam * w
        if self.rescale == 1:
            out = out / (1.0 + self.c**2)
        elif self.rescale == 2:
            out = out / (1.0 + self.c)
        return gram.new_tensor(out)


def _dual_slsqp(a: np.ndarray, b: np.ndarray, phi: float) -> np.ndarray:
    """``argmin_{w in simplex} w . b + phi ||w^T G||`` (``a = G G^T`` normalised), by SLSQP as
    the authors' code, with the analytic gradient and a tolerance fit for the O(1) scale."""
    k = a.shape[0]

    def objective(x: np.ndarray) -> float:
        return float(x @ b + phi * np.sqrt(max(float(x @ a @ x), 0.0) + 1e-12))

    def jac(x: np.ndarray) -> np.ndarray:
        return b + phi * (a @ x) / np.sqrt(max(float(x @ a @ x), 0.0) + 1e-12)

    res = minimize(
        objective,
        np.full(k, 1.0 / k),
        jac=jac,
        bounds=[(0.0, 1.0)] * k,
        constraints=(
            {"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones_like(x)},
        ),
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def _two_task_dual(a: np.ndarray, b: np.ndarray, phi: float) -> np.ndarray:
    """Exact minimiser of ``w . b + phi sqrt(w^T A w + 1e-8)`` over ``w = (g, 1 - g)``, g in [0,1].

    The objective is convex in ``g``; its stationary points solve a quadratic (obtained by
    squaring ``s + phi q'(g) / (2 sqrt(q(g))) = 0``), so the minimum is among those roots that
    fall in [0, 1] and the two end points.
    """
    s = float(b[0] - b[1])
    alpha = float(a[0, 0] - 2.0 * a[0, 1] + a[1, 1])
    beta = float(2.0 * a[0, 1] - 2.0 * a[1, 1])
    c = float(a[1, 1]) + 1e-8  # q(g) = alpha g^2 + beta g + c

    def f(g: float) -> float:
        return float(b[1]) + s * g + phi * float(np.sqrt(max(alpha * g * g + beta * g + c, 0.0)))

    p2 = phi * phi
    coeffs = [
        4 * p2 * alpha * alpha - 4 * s * s * alpha,
        4 * p2 * alpha * beta - 4 * s * s * beta,
        p2 * beta * beta - 4 * s * s * c,
    ]
    cands = [0.0, 1.0]
    if any(abs(x) > 0 for x in coeffs):
        roots = np.roots(coeffs)
        cands += [float(r.real) for r in roots if abs(r.imag) < 1e-12 and 0.0 <= r.real <= 1.0]
    g = min(cands, key=f)
    return np.array([g, 1.0 - g])
