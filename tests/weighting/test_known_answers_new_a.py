"""Known answers of MoCo, MoDo, SDMGrad and FairGrad (issue 12), from LibMTL's code.

The reference numbers were produced by running LibMTL main (commit 4336804,
``LibMTL/weighting/{MoCo,MoDo,SDMGrad,FairGrad}.py``) unchanged on a toy model whose shared
parameter is ``theta [4]`` with losses ``L_t = g_t . theta + c_t`` at ``theta = 0``, so that
its per-task gradients are exactly the rows below and its direction is ``theta.grad``.
(The harness: LibMTL's class with ``get_share_params() = [theta]``; numpy 2 needed the shim
``np.alltrue = np.all`` for SDMGrad's projection.) Where mtl deliberately differs (one batch
per step for MoDo / SDMGrad, partial labels) each test says how the reference was mapped.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from weighting_helpers import BATCHES

from mtl.weighting import create_weighting, get_weighting_class, hyperparameters
from mtl.weighting._simplex import project_simplex

F64 = torch.float64
ALL3 = torch.ones(3, dtype=torch.bool)

B = BATCHES


def _t(x: list[float]) -> Tensor:
    return torch.tensor(x, dtype=F64)


def _mask(*bits: int) -> Tensor:
    return torch.tensor([bool(b) for b in bits])


def _close(a: Tensor, b: list[float], tol: float = 1e-12, msg: str = "") -> None:
    torch.testing.assert_close(a, _t(b), rtol=tol, atol=tol, msg=msg)


# --------------------------------------------------------------------------------------- MoCo
MOCO_G = [
    torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, -1.0, 1.0], [-1.0, 2.0, 0.0, 0.5]], dtype=F64),
    torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64),
    torch.tensor([[0.0, 0.0, 1.0, 3.0], [1.0, -2.0, 0.0, 0.0], [-1.0, 0.0, 2.0, 1.0]], dtype=F64),
]
MOCO_L = [[1.0, 2.0, 0.5], [0.8, 1.5, 0.6], [0.7, 1.2, 0.4]]


def test_moco_matches_libmtl_over_three_steps() -> None:
    """LibMTL ``MoCo.backward`` with its defaults (beta = gamma_sigma = beta_sigma = 0.5,
    gamma = 0.1, rho = 0), three steps: direction ``theta.grad`` and returned ``lambda``."""
    expected = [
        ([0.03893684353342906, 0.2620860387889673, -0.037975838621775476, 0.20724734637634218],
         [0.3376282514924028, 0.3273018017208919, 0.33506994678670543]),
        ([0.14516008576486963, 0.1472614731768763, 0.1103012988365848, 0.27151379865582986],
         [0.3352290099981578, 0.32998825949742155, 0.3347827305044207]),
        ([0.13839108183556706, 0.0019624646455436573, 0.13095046030509835, 0.27363265795170855],
         [0.3336559882214087, 0.33154131530943726, 0.33480269646915406]),
    ]  # fmt: skip
    m = create_weighting("moco", 3)
    for s, (g, loss, (d_ref, lam_ref)) in enumerate(zip(MOCO_G, MOCO_L, expected, strict=True)):
        d, w = m.aggregate(g, _t(loss), ALL3)
        _close(d, d_ref, msg=f"step {s}")
        _close(w, lam_ref, msg=f"step {s}")


def test_moco_rho_and_gamma_match_libmtl() -> None:
    """The same three steps with ``rho=0.5, gamma=1.0`` (LibMTL ``MoCo_rho``, ``MoCo_gamma``):
    the final direction and ``lambda`` of the reference run."""
    m = create_weighting("moco", 3, rho=0.5, gamma=1.0)
    for g, loss in zip(MOCO_G, MOCO_L, strict=True):
        d, w = m.aggregate(g, _t(loss), ALL3)
    _close(d, [0.13631394665819702, 0.006116613243236618, 0.1328016614961497,
               0.2704814226411411])  # fmt: skip
    _close(w, [0.33217364547283323, 0.32234618488647143, 0.34548016964069533])


def _moco_by_hand(
    steps: list[tuple[Tensor, Tensor, Tensor]], beta: float = 0.5, gamma: float = 0.1
) -> list[tuple[Tensor, Tensor]]:
    """LibMTL's MoCo formulas (sigma = 0.5, rho = 0) restricted to the present tasks: y_t and
    its count k_t move only when t is labelled; lambda's softmax runs over the present tasks
    (the others keep their entries); gamma_k counts every step."""
    t = steps[0][0].shape[0]
    y = torch.zeros(t, steps[0][0].shape[1], dtype=F64)
    lam = torch.full((t,), 1.0 / t, dtype=F64)
    count = torch.zeros(t, dtype=F64)
    out = []
    for k, (g, loss, present) in enumerate(steps, start=1):
        idx = present.nonzero().squeeze(1)
        gt = g[idx] / (g[idx].norm(dim=1, keepdim=True) + 1e-8) * loss[idx, None]
        count[idx] += 1
        y[idx] = y[idx] - (beta / count[idx].sqrt())[:, None] * (y[idx] - gt)
        yy = y[idx] @ y[idx].T
        lam[idx] = torch.softmax(lam[idx] - gamma / math.sqrt(k) * (yy @ lam[idx]), 0)
        w = torch.zeros(t, dtype=F64)
        w[idx] = lam[idx]
        out.append((lam[idx] @ y[idx], w))
    return out


def test_moco_absent_task_keeps_its_tracking_and_weight() -> None:
    """Task 1 absent at steps 1 and 2 (its row of G is zero): its tracking row ``y_1``,
    ``lambda_1`` and count stay; the present tasks' softmax sums to 1; on its return at step 3
    its ``y_1`` moves with its own count (2), the others' with 4."""
    present = [ALL3, _mask(1, 0, 1), _mask(1, 0, 1), ALL3]
    grads = [MOCO_G[0], MOCO_G[1] * _t([1, 0, 1])[:, None], MOCO_G[2] * _t([1, 0, 1])[:, None],
             B[3]]  # fmt: skip
    losses = [_t(MOCO_L[0]), _t([0.8, 0.0, 0.6]), _t([0.7, 0.0, 0.4]), _t([0.6, 1.0, 0.3])]
    expected = _moco_by_hand(list(zip(grads, losses, present, strict=True)))
    m = create_weighting("moco", 3)
    for s, (g, loss, p) in enumerate(zip(grads, losses, present, strict=True)):
        y_before = None if m.y is None else m.y[1].clone()  # type: ignore[attr-defined]
        lam_before = float(m.lambd[1])  # type: ignore[index]
        d, w = m.aggregate(g, loss, p)
        torch.testing.assert_close(d, expected[s][0], rtol=1e-12, atol=1e-12, msg=f"step {s}")
        torch.testing.assert_close(w, expected[s][1], rtol=1e-12, atol=1e-12, msg=f"step {s}")
        if not bool(p[1]):
            assert w[1] == 0
            assert y_before is not None and torch.equal(m.y[1], y_before)  # type: ignore[attr-defined]
            assert float(m.lambd[1]) == lam_before  # type: ignore[index]
            torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=F64))
    _close(m.task_steps, [4.0, 2.0, 4.0])  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- MoDo
def _run(name: str, steps: list[tuple[Tensor, Tensor]], **hp: object) -> list[tuple[Tensor, ...]]:
    m = create_weighting(name, 3, **hp)
    state = "lambd" if name == "modo" else "w"
    out = []
    for g, p in steps:
        d, w = m.aggregate(g * p.to(F64)[:, None], torch.ones(3, dtype=F64), p)
        out.append((d, w, getattr(m, state).clone()))
    return out


def test_modo_matches_libmtl_with_consecutive_batches() -> None:
    """LibMTL ``MoDo.backward`` (gamma = 0.1, rho = 0.1) called with the three mini-batches
    ``(z1, z2, z3) = (B_{k-1}, B_k, B_{k+1})`` gives mtl's direction of step ``k + 1`` (one
    batch per step: lambda is updated from the previous and the current batch and applied to
    the next one). Steps 0 and 1 use the initial uniform weights."""
    ref = [  # LibMTL: theta.grad and the returned lambda, calls k = 1, 2, 3
        ([-0.033333333333333326, -0.7777777777777778, 1.0333333333333334, 0.9888888888888892],
         [0.18888888888888894, 0.3888888888888889, 0.4222222222222222]),
        ([1.5976666666666666, 0.808111111111111, 0.6196666666666666, 0.38033333333333336],
         [0.38033333333333336, 0.2138888888888888, 0.40577777777777774]),
        ([0.28888481481481454, 0.7373996296296295, 0.7242574074074075, 1.2626003703703703],
         [0.26260037037037043, 0.2757425925925925, 0.46165703703703703]),
    ]  # fmt: skip
    out = _run("modo", [(b, ALL3) for b in B], gamma=0.1, rho=0.1)
    for s in (0, 1):
        torch.testing.assert_close(out[s][0], B[s].mean(0))
    for k, (d_ref, lam_ref) in enumerate(ref, start=1):
        _close(out[k + 1][0], d_ref, msg=f"step {k + 1}")
        _close(out[k + 1][1], lam_ref, msg=f"step {k + 1}")
        _close(out[k][2], lam_ref, msg=f"lambda after step {k}")


def test_modo_absent_task_for_two_steps() -> None:
    """Task 2 absent at steps 2 and 3. Expected: LibMTL's update run on the present tasks
    {0, 1} alone, their weights divided by their mass (the update is homogeneous) and the
    result multiplied back; task 2's lambda stays; its stored gradient stays B_1's, which the
    update of step 4 pairs with B_4. Directions use lambda renormalised over the present
    tasks. Numbers from that reference run."""
    pres = [ALL3, ALL3, _mask(1, 1, 0), _mask(1, 1, 0), ALL3]
    out = _run("modo", list(zip(B, pres, strict=True)), gamma=0.1, rho=0.1)
    ref = [  # (direction, effective weights, lambda after the step)
        ([0.0, 1.0, 1 / 3, 0.5], [1 / 3] * 3, [1 / 3] * 3),
        ([1.0, 1 / 3, 2 / 3, 2 / 3], [1 / 3] * 3,
         [0.18888888888888894, 0.3888888888888889, 0.4222222222222222]),
        ([0.673076923076923, -1.346153846153846, 0.326923076923077, 0.980769230769231],
         [0.326923076923077, 0.673076923076923, 0.0],
         [0.2665555555555556, 0.3112222222222222, 0.4222222222222222]),
        ([0.46134615384615396, 1.5386538461538461, 0.5386538461538461, 0.46134615384615396],
         [0.46134615384615396, 0.5386538461538461, 0.0],
         [0.1356622222222222, 0.4421155555555555, 0.4222222222222222]),
        ([0.7485688888888887, 0.8643377777777776, 0.5578844444444444, 1.1356622222222221],
         [0.1356622222222222, 0.4421155555555555, 0.4222222222222222],
         [0.1408347851851852, 0.490424474074074, 0.36874074074074076]),
    ]  # fmt: skip
    for s, ((d, w, lam), (d_ref, w_ref, lam_ref)) in enumerate(zip(out, ref, strict=True)):
        _close(d, d_ref, msg=f"step {s}")
        _close(w, w_ref, msg=f"step {s}")
        _close(lam, lam_ref, msg=f"step {s}")


# ------------------------------------------------------------------------------------ SDMGrad
def test_sdmgrad_matches_libmtl_with_consecutive_batches() -> None:
    """LibMTL ``SDMGrad.backward`` (lamda = 0.3, niter = 20) called with ``(zeta, xi, xi') =
    (B_{k+1}, B_{k-1}, B_k)`` gives mtl's direction of step ``k + 1``. The reference run had
    its ``GG / (scale^2 + 1e-8)`` changed to ``GG / scale^2`` (mtl's deliberate difference);
    unchanged it gives 0.5229812289987071 instead of 0.5229830396554318 in the first
    coordinate of call 1 (2e-6 apart at these gradient norms) and the same calls 2-3."""
    ref = [  # theta.grad and w after calls k = 1, 2, 3
        ([0.5229830396554318, -1.4460599627323536, 0.47701696034456675, 0.4308161724799756],
         [0.0, 0.8399389757760298, 0.1600610242239684]),
        ([1.0769230769230769, 1.0, 0.15384615384615383, 0.8461538461538461], [1.0, 0.0, 0.0]),
        ([1.6153846153846154, 0.923076923076923, 0.15384615384615383, 1.0769230769230769],
         [0.0, 1.0, 0.0]),
    ]  # fmt: skip
    out = _run("sdmgrad", [(b, ALL3) for b in B])
    for s in (0, 1):
        torch.testing.assert_close(out[s][0], B[s].mean(0))
    for k, (d_ref, w_ref) in enumerate(ref, start=1):
        _close(out[k + 1][0], d_ref, tol=1e-10, msg=f"step {k + 1}")
        _close(out[k][2], w_ref, tol=1e-10, msg=f"w after step {k}")
        # effective weights: (w + lamda / K) / (1 + lamda)
        _close(out[k + 1][1], [(x + 0.1) / 1.3 for x in w_ref], tol=1e-10)


def test_sdmgrad_absent_task_for_two_steps() -> None:
    """Task 2 absent at steps 2 and 3. Expected: LibMTL's SDMGrad run on the present tasks
    {0, 1} alone with its ``w`` set to their weights divided by their mass, the result
    multiplied back by that mass; task 2's weight stays. Numbers from that reference run
    (``+ 1e-8`` removed, as above)."""
    pres = [ALL3, ALL3, _mask(1, 1, 0), _mask(1, 1, 0), ALL3]
    out = _run("sdmgrad", list(zip(B, pres, strict=True)))
    ref = [  # (direction, effective weights, w after the step)
        ([0.0, 1.0, 1 / 3, 0.5], [1 / 3] * 3, [1 / 3] * 3),
        ([1.0, 1 / 3, 2 / 3, 2 / 3], [1 / 3] * 3,
         [0.0, 0.8399389757760298, 0.1600610242239684]),
        ([0.8846153846153845, -1.769230769230769, 0.11538461538461538, 0.34615384615384615],
         [0.11538461538461538, 0.8846153846153845, 0.0],
         [0.8399389757760298, 0.0, 0.1600610242239684]),
        ([0.8846153846153845, 1.1153846153846152, 0.11538461538461538, 0.8846153846153845],
         [0.8846153846153845, 0.11538461538461538, 0.0],
         [0.0, 0.8399389757760298, 0.1600610242239684]),
        ([1.369136885809279, 0.923076923076923, 0.27697001863382203, 1.0769230769230769],
         [0.07692307692307691, 0.7230299813661779, 0.2000469417107451],
         [0.0, 0.9999999999999982, 0.0]),
    ]  # fmt: skip
    for s, ((d, w, state), (d_ref, w_ref, st_ref)) in enumerate(zip(out, ref, strict=True)):
        _close(d, d_ref, tol=1e-10, msg=f"step {s}")
        _close(w, w_ref, tol=1e-10, msg=f"step {s}")
        _close(state, st_ref, tol=1e-10, msg=f"step {s}")


def test_sdmgrad_zero_normaliser_keeps_the_weights() -> None:
    """Every cross product ``xi_t . xi'_t`` negative: the normaliser ``s`` is 0. The reference
    then divides by 1e-8 (a 1e8-times step, straight to a vertex); mtl keeps ``w``."""
    m = create_weighting("sdmgrad", 2)
    m.aggregate(_t([1.0, 0.0, 0.0, 0.0]).repeat(2, 1) * _t([1.0, 2.0])[:, None],
                torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.bool))  # fmt: skip
    m.aggregate(-_t([1.0, 0.5, 0.0, 0.0]).repeat(2, 1), torch.ones(2, dtype=F64),
                torch.ones(2, dtype=torch.bool))  # fmt: skip
    _close(m.w, [0.5, 0.5])  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------- FairGrad
@pytest.mark.parametrize(
    ("alpha", "batch", "w_ref"),
    [
        (1.0, 0, [0.6415367826180542, 0.6479118730556298, 0.35310309007520224]),
        (1.0, 3, [0.3828484567971742, 0.3570497163995112, 0.24978491832331512]),
        (2.0, 0, [0.5573844298088838, 0.613740073241754, 0.22000410187838096]),
        (2.0, 3, [0.29728658626495297, 0.2509647476860265, 0.14675523135678933]),
        (0.5, 0, [0.7477192563333239, 0.7169228348534742, 0.5161108983299892]),
        (0.5, 3, [0.5152470821389485, 0.5030960552367817, 0.40494501301132296]),
    ],
)
def test_fairgrad_matches_libmtl(alpha: float, batch: int, w_ref: list[float]) -> None:
    """LibMTL ``FairGrad.backward`` (``least_squares`` of ``G G^T w - w^(-1/alpha)``): its
    returned weights; mtl's direction is ``w @ G`` (the reference's ``theta.grad``). The two
    solve differently scaled systems, so they agree to the solver's tolerance."""
    g = B[batch]
    d, w = create_weighting("fairgrad", 3, alpha=alpha).aggregate(g, torch.ones(3, dtype=F64), ALL3)
    _close(w, w_ref, tol=1e-7)
    torch.testing.assert_close(d, _t(w_ref) @ g, rtol=1e-7, atol=1e-7)
    # and it is the alpha-fair solution: (G G^T w)_t = w_t^(-1/alpha)
    torch.testing.assert_close(g @ g.T @ w, w.pow(-1.0 / alpha), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factor", [1e-4, 1e3])
def test_fairgrad_solves_the_system_at_any_gradient_scale(factor: float) -> None:
    """Scaled gradients: the solution scales as ``s^(-alpha/(alpha+1))`` (s = the Gram scale,
    ``factor^2``) and still satisfies the equation to 1e-6 relative."""
    g = B[0] * factor
    for alpha in (1.0, 2.0):
        _, w = create_weighting("fairgrad", 3, alpha=alpha).aggregate(
            g, torch.ones(3, dtype=F64), ALL3
        )
        _, w1 = create_weighting("fairgrad", 3, alpha=alpha).aggregate(
            B[0], torch.ones(3, dtype=F64), ALL3
        )
        torch.testing.assert_close(w, w1 * factor ** (-2 * alpha / (alpha + 1)), rtol=1e-6, atol=0)
        lhs, rhs = g @ g.T @ w, w.pow(-1.0 / alpha)
        torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=0)


def test_fairgrad_alpha_1_is_nash_mtl() -> None:
    """alpha = 1: ``w_t (G G^T w)_t = 1``, Nash-MTL's bargaining equation (Ban & Ji, Sec. 4)."""
    g = B[3]
    _, w = create_weighting("fairgrad", 3).aggregate(g, torch.ones(3, dtype=F64), ALL3)
    _, w_nash = create_weighting("nash_mtl", 3, max_norm=0.0).aggregate(
        g, torch.ones(3, dtype=F64), ALL3
    )
    torch.testing.assert_close(w, w_nash, rtol=1e-6, atol=1e-8)


def test_fairgrad_zero_gradient_task_gets_no_weight() -> None:
    """A present task with an exactly zero gradient: no w_t solves ``0 = w_t^(-1/alpha)``; it
    gets 0 and the other two get the solution of their own 2-task system."""
    g = B[0].clone()
    g[1] = 0.0
    _, w = create_weighting("fairgrad", 3).aggregate(g, torch.ones(3, dtype=F64), ALL3)
    _, w2 = create_weighting("fairgrad", 2).aggregate(
        g[[0, 2]], torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.bool)
    )
    assert float(w[1]) == 0.0
    torch.testing.assert_close(w[[0, 2]], w2)


# ------------------------------------------------------------------------------ shared pieces
def test_simplex_projection_against_the_kkt_conditions() -> None:
    """``x = max(v - theta, 0)`` with ``sum x = radius``: the Euclidean projection's KKT
    conditions (one threshold for every coordinate)."""
    gen = torch.Generator().manual_seed(0)
    for radius in (1.0, 0.3):
        for _ in range(20):
            v = (torch.randn(5, generator=gen, dtype=F64) * 2).numpy()
            x = project_simplex(v, radius)
            assert abs(x.sum() - radius) < 1e-12 and (x >= 0).all()
            support = x > 0
            theta = (v[support] - x[support]).mean()
            assert abs((v[support] - x[support]) - theta).max() < 1e-12
            assert (v[~support] <= theta + 1e-12).all()
    with pytest.raises(ValueError, match="radius"):
        project_simplex(v, 0.0)


def test_defaults_are_libmtls() -> None:
    """The defaults of LibMTL's ``config.py`` (and SDMGrad's hard-coded inner SGD)."""
    expected = {
        "moco": {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1, "gamma_sigma": 0.5, "rho": 0.0,
                 "eps": 1e-8},
        "modo": {"gamma": 1e-3, "rho": 0.1},
        "sdmgrad": {"lamda": 0.3, "niter": 20, "inner_lr": 5.0, "inner_momentum": 0.5},
        "fairgrad": {"alpha": 1.0},
    }  # fmt: skip
    for name, defaults in expected.items():
        assert hyperparameters(get_weighting_class(name)) == defaults, name
        m = create_weighting(name, 2)
        for key, value in defaults.items():
            assert getattr(m, key) == value, (name, key)
    for name in ("moco", "modo", "sdmgrad"):  # state across batches: full backend only
        assert get_weighting_class(name).backends == ("full",)
    assert get_weighting_class("fairgrad").backends == ("full", "representation")
