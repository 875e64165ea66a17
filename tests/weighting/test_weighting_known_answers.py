"""Known-answer tests of individual methods, the registry and the backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor
from weighting_helpers import TinyModel, compute_losses, make_batch

import mtl.weighting.backward as backward_mod
from mtl.weighting import (
    create_weighting,
    list_weightings,
    multitask_backward,
    register_weighting,
    task_gradient_cosine,
)
from mtl.weighting._solvers import box_qp, min_norm_weights

ALL3 = torch.ones(3, dtype=torch.bool)
ALL2 = torch.ones(2, dtype=torch.bool)


def _agg(name: str, grads: Tensor, **hp: object) -> tuple[Tensor, Tensor]:
    t = grads.shape[0]
    m = create_weighting(name, t, **hp)
    return m.aggregate(grads, torch.ones(t, dtype=grads.dtype), torch.ones(t, dtype=torch.bool))


def _plain_grads(model: TinyModel, coefs: Tensor) -> list[Tensor]:
    x, y = make_batch(dtype=coefs.dtype)
    losses, _, _ = compute_losses(model, x, y)
    return list(torch.autograd.grad((coefs * losses).sum(), list(model.parameters())))


# --------------------------------------------------------------------------------- registry
def test_registry_lists_the_methods() -> None:
    expected = {
        "equal", "static", "uncertainty", "dwa", "rlw", "gls", "famo", "db_mtl", "gradnorm",
        "mgda", "pcgrad", "cagrad", "imtl", "graddrop", "gradvac", "nash_mtl", "aligned_mtl",
        "upgrad",
    }  # fmt: skip
    assert expected <= set(list_weightings())
    assert list_weightings() == sorted(list_weightings())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown weighting") as err:
        create_weighting("no_such_method", 2)
    for name in list_weightings():
        assert name in str(err.value)


def test_unknown_hyperparameter_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="temperature"):
        create_weighting("dwa", 2, temprature=2.0)
    assert create_weighting("DWA", 2, temperature=3.0).temperature == 3.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        create_weighting("static", 3, weights=[1.0, 2.0])


def test_register_rejects_duplicates_and_non_weightings() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_weighting("equal")(type("Other", (create_weighting("equal", 1).__class__,), {}))
    with pytest.raises(TypeError):
        register_weighting("bogus")(int)  # type: ignore[type-var]


# ------------------------------------------------------------------------------- loss level
def test_equal_is_the_plain_sum() -> None:
    torch.manual_seed(0)
    model = TinyModel()
    expected = _plain_grads(model, torch.ones(3))
    x, y = make_batch()
    losses, present, _ = compute_losses(model, x, y)
    w = multitask_backward(
        create_weighting("equal", 3), losses, present, list(model.shared_parameters()), []
    )
    assert torch.equal(w, torch.ones(3))
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_static_weights() -> None:
    model = TinyModel()
    c = torch.tensor([0.5, 2.0, 0.0])
    expected = _plain_grads(model, c)
    x, y = make_batch()
    losses, present, _ = compute_losses(model, x, y)
    weighting = create_weighting("static", 3, weights=c.tolist())
    w = multitask_backward(weighting, losses, present, list(model.shared_parameters()), [])
    torch.testing.assert_close(w, c)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_static_defaults_precision_and_refusals() -> None:
    """No weights means all ones (``equal``); the weights are kept in float64 (0.1 exactly as
    given, not float32's 0.100000001); a wrong count, a negative, NaN or infinite weight is
    refused with a message naming what was expected and what was found."""
    f64 = torch.float64
    ones = torch.ones(3, dtype=f64)
    torch.testing.assert_close(create_weighting("static", 3).weights(ones, ALL3), ones)
    w = create_weighting("static", 2, weights=[0.1, 0.3]).weights(torch.ones(2, dtype=f64), ALL2)
    assert w.tolist() == [0.1, 0.3]
    with pytest.raises(ValueError, match="static weights: expected 3 values, got 2"):
        create_weighting("static", 3, weights=[1.0, 2.0])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"static weights must be finite and >= 0, got \["):
            create_weighting("static", 2, weights=[1.0, bad])


def test_uncertainty_forms_are_kept_and_only_log_vars_are_state() -> None:
    """The chosen forms are recorded; the per-task factor (1/2 or 1) follows from them, so a
    checkpoint holds only the learnt log-variances (checkpoints of either form load)."""
    m = create_weighting("uncertainty", 2, forms=["regression", "classification"])
    assert m.forms == ("regression", "classification")  # type: ignore[attr-defined]
    assert set(m.state_dict()) == {"log_vars"}


def test_uncertainty_objective_and_gradient() -> None:
    m = create_weighting("uncertainty", 2)
    losses = torch.tensor([2.0, 4.0], requires_grad=True)
    total, w = m.objective(losses, ALL2)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]))
    total.backward()
    # d/ds (0.5 e^-s L + 0.5 s) at s=0 = 0.5 - 0.5 L
    torch.testing.assert_close(m.log_vars.grad, torch.tensor([-0.5, -1.5]))  # type: ignore[union-attr]


def test_dwa_weights_follow_the_descent_rate() -> None:
    m = create_weighting("dwa", 2, temperature=2.0)
    losses = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(m.weights(losses, ALL2), torch.ones(2))
    m.epoch_end(torch.tensor([1.0, 1.0]), ALL2)
    torch.testing.assert_close(m.weights(losses, ALL2), torch.ones(2))  # one epoch: no ratio
    m.epoch_end(torch.tensor([0.5, 1.0]), ALL2)  # r = (0.5, 1.0)
    e = torch.exp(torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(m.weights(losses, ALL2), 2 * e / e.sum())


def test_gls_is_the_geometric_mean_gradient() -> None:
    losses = torch.tensor([1.0, 4.0, 2.0], requires_grad=True)
    total, _ = create_weighting("gls", 3).objective(losses, ALL3)
    (g,) = torch.autograd.grad(total, losses)
    gm = (1.0 * 4.0 * 2.0) ** (1 / 3)
    torch.testing.assert_close(total.detach(), torch.tensor(gm))
    torch.testing.assert_close(g, gm / (3 * losses.detach()))


def test_gls_over_the_present_tasks_only() -> None:
    """The geometric mean is over the K present losses: (1, 4, absent 16) -> GM = 2, K = 2,
    weights GM / (K L_t) = (1, 1/4, 0); one present task -> GM = L, weight 1."""
    m = create_weighting("gls", 3)
    losses = torch.tensor([1.0, 4.0, 16.0])
    total, w = m.objective(losses, torch.tensor([True, True, False]))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25, 0.0]))
    torch.testing.assert_close(total, torch.tensor(2.0))
    total1, w1 = m.objective(losses, torch.tensor([False, True, False]))
    torch.testing.assert_close(w1, torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(total1, torch.tensor(4.0))


def test_rlw_is_reproducible_and_on_the_simplex() -> None:
    m = create_weighting("rlw", 3)
    torch.manual_seed(5)
    a = m.weights(torch.ones(3), ALL3)
    torch.manual_seed(5)
    b = m.weights(torch.ones(3), ALL3)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.sum(), torch.tensor(1.0))


def test_famo_moves_weight_to_the_slower_task() -> None:
    m = create_weighting("famo", 2, lr=0.1)
    m.step_end(torch.tensor([1.0, 1.0]), ALL2)
    for _ in range(5):
        m.step_end(torch.tensor([1.0, 1.0]) * torch.tensor([0.5, 1.0]), ALL2)  # task 0 improves
    z = m.task_weights(ALL2)  # type: ignore[attr-defined]
    assert z[1] > z[0]
    w = m.weights(torch.tensor([0.5, 2.0]), ALL2)
    # the objective's gradient is z_t / (c L_t): w . L == 1 / c * sum z = 1 / c
    torch.testing.assert_close(
        (w * torch.tensor([0.5, 2.0])).sum(), 1 / (z / torch.tensor([0.5, 2.0])).sum().float()
    )


# --------------------------------------------------------------------------- gradient level
def test_mgda_two_task_closed_form() -> None:
    g = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)
    d, w = _agg("mgda", g)
    gamma = ((g[1] - g[0]) @ g[1]) / ((g[0] - g[1]) @ (g[0] - g[1]))
    torch.testing.assert_close(w, torch.stack([gamma, 1 - gamma]))
    torch.testing.assert_close(d, gamma * g[0] + (1 - gamma) * g[1])
    # the min-norm point is orthogonal to the segment between the two gradients
    assert abs(float(d @ (g[0] - g[1]))) < 1e-12


@pytest.mark.parametrize(
    ("normalization", "expected"),
    [
        # g1 = (2, 0), g2 = (0, 1), losses (2, 4); n_t the normalisation, w the min-norm
        # weights of the orthogonal g_t / n_t (w_t proportional to n_t^2 / ||g_t||^2), the
        # returned weights w_t / n_t.
        ("none", [0.2, 0.8]),  # n = (1, 1): w proportional to (1/4, 1)
        ("l2", [0.25, 0.5]),  # n = (2, 1): unit gradients, w = (1/2, 1/2)
        ("loss", [1 / 34, 4 / 17]),  # n = (2, 4): w proportional to (1, 16)
        ("loss+", [0.05, 0.2]),  # n = (4, 4): w proportional to (4, 16)
    ],
)
def test_mgda_normalizations_of_the_papers_code(normalization: str,
                                                  expected: list[float]) -> None:
    """Sener & Koltun's code normalises the gradients by 1, ||g||, L or L ||g|| before the
    min-norm solve; the weights apply to the raw gradients (w_t / n_t). Worked by hand."""
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    m = create_weighting("mgda", 2, normalization=normalization)
    d, w = m.aggregate(g, torch.tensor([2.0, 4.0], dtype=torch.float64), ALL2)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(d, w @ g)


def test_mgda_l2_with_a_zero_gradient_and_a_bad_normalization() -> None:
    """A zero gradient puts the origin in the convex hull: the min-norm point is d = 0
    (Pareto-stationary), with finite zero weights (its 1 / ||g|| is not taken: no inf/NaN);
    an unknown normalisation is refused."""
    # norms below 1 (0.2, 0.1): unit gradients, w = (1/2, 1/2), weights w / n = (2.5, 5)
    small = torch.tensor([[0.2, 0.0], [0.0, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(_agg("mgda", small, normalization="l2")[1],
                               torch.tensor([2.5, 5.0], dtype=torch.float64))
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    d, w = _agg("mgda", g, normalization="l2")
    torch.testing.assert_close(w, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(d, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mgda normalization must be one of .*'loss\+'"):
        create_weighting("mgda", 2, normalization="L2")


def test_mgda_frank_wolfe_matches_brute_force() -> None:
    torch.manual_seed(1)
    g = torch.randn(4, 6, dtype=torch.float64)
    gram = (g @ g.T).numpy()
    w = min_norm_weights(gram, max_iter=2000, tol=1e-12)
    assert abs(w.sum() - 1) < 1e-9 and (w >= -1e-12).all()
    best = min(
        float(v @ gram @ v)
        for v in torch.distributions.Dirichlet(torch.ones(4)).sample((20000,)).double().numpy()
    )
    assert float(w @ gram @ w) <= best + 1e-6


def test_pcgrad_projects_conflicting_gradients() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    d, w = _agg("pcgrad", g)
    # g1' = g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2' = g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5], dtype=torch.float64))
    d2, _ = _agg("pcgrad", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # no conflict: plain sum
    torch.testing.assert_close(d2, torch.tensor([2.0, 1.0]))


def test_pcgrad_coefficients_in_float64() -> None:
    """g1 = (1, 0), g2 = (-1, 3): g1' = g1 - (g1.g2 / ||g2||^2) g2 = g1 + 0.1 g2, g2' = g2 + g1:
    weights (2, 1.1) to float64 precision (0.1 is not a float32 number)."""
    g = torch.tensor([[1.0, 0.0], [-1.0, 3.0]], dtype=torch.float64)
    _, w = _agg("pcgrad", g)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.1], dtype=torch.float64), atol=1e-13,
                               rtol=0.0)


def test_cagrad_c0_is_the_mean_gradient() -> None:
    torch.manual_seed(2)
    for t in (2, 3):
        g = torch.randn(t, 7, dtype=torch.float64)
        d, w = _agg("cagrad", g, c=0.0)
        torch.testing.assert_close(d, g.mean(0))
        torch.testing.assert_close(w, torch.full((t,), 1 / t, dtype=torch.float64))


def test_cagrad_improves_the_worst_task() -> None:
    g = torch.tensor([[1.0, 0.0], [-0.9, 0.3]], dtype=torch.float64)
    d, _ = _agg("cagrad", g, c=0.9)
    mean = g.mean(0)
    assert (g @ d).min() > (g @ mean).min()


def _cagrad_two_task_reference(g: Tensor, c: float) -> Tensor:
    """CAGrad's effective weights (Liu et al. 2021, Alg. 1, ``rescale=1``) for two tasks: the
    dual ``min_{w = (x, 1-x)} w . G g0 + c ||g0|| ||w^T G||`` minimised over x in [0, 1] by
    scipy's bounded scalar search on the raw gradients (not the method's closed form), then
    ``d = g0 + c ||g0|| / ||g_w|| g_w`` divided by ``1 + c^2``, as weights of the rows."""
    from scipy.optimize import minimize_scalar

    gn = g.numpy()
    g0 = gn.mean(0)
    phi = c * float(np.linalg.norm(g0))

    def dual(x: float) -> float:
        w = np.array([x, 1.0 - x])
        return float(w @ gn @ g0 + phi * np.linalg.norm(w @ gn))

    x = minimize_scalar(dual, bounds=(0.0, 1.0), method="bounded",
                        options={"xatol": 1e-12}).x
    w = np.array([x, 1.0 - x])
    lam = phi / float(np.linalg.norm(w @ gn))
    return torch.tensor((0.5 + lam * w) / (1.0 + c * c), dtype=torch.float64)


@pytest.mark.parametrize(
    ("rows", "c"),
    [
        ([[1.0, 0.0], [-0.5, 1.5]], 0.9),  # conflict, unequal norms: interior, x = 0.858
        ([[1.5, 0.2], [-0.3, 1.0]], 0.7),  # conflict: interior, x = 0.105
        ([[1.0, 0.0], [0.0, 1.2]], 0.4),  # orthogonal: interior, x = 0.839
        ([[2.0, 0.0], [-0.5, 1.0]], 0.4),  # the dual's minimum at the end point x = 0
        ([[1.0, 0.0], [0.0, 2.0]], 0.9),  # at x = 1, the unconstrained optimum at x = 1.158
    ],
)
def test_cagrad_two_task_dual_matches_a_numerical_solution(rows: list[list[float]],
                                                           c: float) -> None:
    """The two-task closed form (roots of a quadratic) against a bounded numerical minimiser
    of the paper's dual; unequal gradient norms, so every coefficient of the quadratic
    matters (with equal norms ``s = 0`` and ``phi`` cancels out)."""
    g = torch.tensor(rows, dtype=torch.float64)
    _, w = _agg("cagrad", g, c=c)
    torch.testing.assert_close(w, _cagrad_two_task_reference(g, c), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("seed", [4, 5, 6])  # optimum on an edge, inside, on another edge
def test_cagrad_three_task_dual_satisfies_its_optimality_conditions(seed: int) -> None:
    """Liu et al. 2021, Eq. 7: ``w* = argmin_{w in simplex} F(w)``, ``F(w) = w . G g0 +
    c ||g0|| ||w^T G||``. Its KKT conditions on the simplex: ``dF/dw_t = mu`` where
    ``w_t > 0`` and ``>= mu`` where ``w_t = 0``. ``w`` is recovered from the effective weights
    ``(1/K + lam w) / (1 + c^2)`` (its entries sum to 1), so this checks the solver to 1e-5
    whatever the inputs, and catches a solver that leaves the simplex or stops early."""
    c, k = 0.5, 3
    g = torch.randn(k, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _, out = _agg("cagrad", g, c=c)
    v = out.numpy() * (1 + c * c) - 1.0 / k
    w = v / v.sum()
    assert (w >= -1e-9).all(), w
    gn = g.numpy()
    a = gn @ gn.T
    phi = c * float(np.linalg.norm(gn.mean(0)))
    grad = a.mean(1) + phi * (a @ w) / np.sqrt(w @ a @ w)  # dF/dw
    on = w > 1e-6
    mu = grad[on].mean()
    assert np.abs(grad[on] - mu).max() < 1e-5 * abs(mu), (w, grad)
    assert (grad[~on] >= mu - 1e-5 * abs(mu)).all(), (w, grad)
    assert on.sum() == (3 if seed == 5 else 2)


def test_upgrad_without_conflict_is_the_mean() -> None:
    g = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.3], [0.1, 0.0, 1.0]], dtype=torch.float64)
    assert ((g @ g.T) >= 0).all()
    d, w = _agg("upgrad", g)
    torch.testing.assert_close(d, g.mean(0))
    torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_upgrad_with_conflict_is_non_conflicting() -> None:
    torch.manual_seed(3)
    for t in (2, 3, 5, 8):  # 8 exercises the Gauss-Seidel path
        g = torch.randn(t, 10, dtype=torch.float64)
        d, w = _agg("upgrad", g)
        assert (g @ d >= -1e-7).all(), g @ d
        assert (w >= 1 / t - 1e-9).all()  # each projection only adds to its own lower bound


def test_upgrad_preference_weights() -> None:
    """Quinton & Rey 2024: UPGrad projects p_i g_i; without conflict each p_i g_i is already in
    the dual cone, so the weights are the preference itself, indexed by task (an absent task
    takes its preference with it); a preference of the wrong length is refused."""
    f64 = torch.float64
    g = torch.eye(3, dtype=f64)  # orthogonal: no conflict
    m = create_weighting("upgrad", 3, pref=[0.1, 0.3, 0.6])
    _, w = m.aggregate(g, torch.ones(3, dtype=f64), ALL3)
    torch.testing.assert_close(w, torch.tensor([0.1, 0.3, 0.6], dtype=f64))
    _, w2 = m.aggregate(g, torch.ones(3, dtype=f64), torch.tensor([True, False, True]))
    torch.testing.assert_close(w2, torch.tensor([0.1, 0.0, 0.6], dtype=f64))
    with pytest.raises(ValueError, match="upgrad pref: expected 3 values, got 2"):
        create_weighting("upgrad", 3, pref=[0.5, 0.5])


def test_box_qp_enumeration_and_gauss_seidel_agree() -> None:
    torch.manual_seed(4)
    g = torch.randn(5, 8, dtype=torch.float64)
    gram = (g @ g.T).numpy()
    lower = torch.eye(5, dtype=torch.float64).numpy() / 5
    exact = box_qp(gram, lower)
    import mtl.weighting._solvers as s

    gs = lower.copy()
    for _ in range(20000):
        before = gs.copy()
        for j in range(5):
            gs[:, j] = (gs[:, j] - (gs @ gram[:, j]) / gram[j, j]).clip(min=lower[:, j])
        if np.abs(gs - before).max() <= 1e-15:  # converged (a fixed point of the sweep)
            break
    torch.testing.assert_close(torch.from_numpy(exact), torch.from_numpy(gs), atol=1e-6, rtol=1e-5)
    assert s is not None


def test_imtl_g_equal_projections() -> None:
    torch.manual_seed(5)
    g = torch.randn(3, 9, dtype=torch.float64)
    d, w = _agg("imtl", g, hybrid=False)
    assert w.shape == (3,)
    proj = (g / g.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(proj, proj.mean().expand(3))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_imtl_g_on_the_imtl_l_scaled_gradients() -> None:
    """IMTL (Liu et al. 2021): IMTL-G runs on the scaled gradients e^s_t g_t. With s =
    (log 2, 0), g = (1, 0), (1, 1): alpha (summing to 1) over g' = (2, 0), (1, 1) gives d with
    equal projections on the unit gradients: d = a (2, 0) + (1 - a)(1, 1) = (1 + a, 1 - a),
    d.u1 = 1 + a, d.u2 = sqrt(2): a = sqrt(2) - 1; the returned weights are alpha e^s (the
    factors on the raw gradients): (2 a, 1 - a)."""
    f64 = torch.float64
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=f64)
    m = create_weighting("imtl", 2)
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([math.log(2.0), 0.0]))  # type: ignore[operator]
    d, w = m.aggregate(g, torch.ones(2, dtype=f64), ALL2)
    a = math.sqrt(2) - 1
    torch.testing.assert_close(w, torch.tensor([2 * a, 1 - a], dtype=f64))
    u = g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(u[0] @ d, u[1] @ d)


@pytest.mark.parametrize("c", [1e-13, 1.0, 1e8])
def test_imtl_known_weights_at_any_gradient_scale_in_float64(c: float) -> None:
    """IMTL (Liu et al. 2021) on orthogonal gradients g_1 = (c, 0), g_2 = (0, 2c): equal
    projections of d = a_1 g_1' + a_2 g_2' on the unit gradients need a_1 |g_1'| = a_2 |g_2'|.
    IMTL-G (g' = g): a = (2/3, 1/3) at every common scale c (the weights are scale-free, so
    no fixed absolute threshold may drop a gradient of norm 1e-13). IMTL-L with s = (1, 0):
    g' = (e c, 0), (0, 2c), a = (2, e) / (e + 2), and the returned factors on the raw
    gradients a e^s = (2e, e) / (e + 2); float64 gradients give them to float64 accuracy."""
    g = torch.tensor([[c, 0.0], [0.0, 2.0 * c]], dtype=torch.float64)
    ones = torch.ones(2, dtype=torch.float64)
    _, w = create_weighting("imtl", 2, hybrid=False).aggregate(g, ones, ALL2)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64),
                               rtol=1e-12, atol=0.0)
    m = create_weighting("imtl", 2)
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([1.0, 0.0]))  # type: ignore[operator]
    d, w = m.aggregate(g, ones, ALL2)
    e = math.e
    expected = torch.tensor([2 * e / (e + 2), e / (e + 2)], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(d, c * 2 * e / (e + 2) * torch.ones(2, dtype=torch.float64),
                               rtol=1e-12, atol=0.0)
    # IMTL-L's loss e^s L - s at L = (2, 0.5): 2e - 1 + 0.5, in float64
    reg = m.regularization(torch.tensor([2.0, 0.5], dtype=torch.float64), ALL2)
    assert reg is not None and reg.dtype == torch.float64
    assert math.isclose(float(reg), 2 * e - 1 + 0.5, rel_tol=1e-14)


def test_imtl_one_live_gradient_takes_all_the_weight() -> None:
    """IMTL with a single non-zero gradient among three (the others exactly zero): that
    task's alpha is 1 (IMTL-G: weight 1; IMTL-L: weight e^s_t, here 2), the others 0."""
    g = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64)
    d, w = create_weighting("imtl", 3, hybrid=False).aggregate(g, ones, ALL3)
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([3.0, 4.0], dtype=torch.float64))
    m = create_weighting("imtl", 3)
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([0.5, math.log(2.0), -0.5]))  # type: ignore[operator]
    d, w = m.aggregate(g, ones, ALL3)
    torch.testing.assert_close(w, torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([6.0, 8.0], dtype=torch.float64))


def test_nash_mtl_solves_the_bargaining_equation() -> None:
    torch.manual_seed(6)
    g = torch.randn(3, 12, dtype=torch.float64) + 0.5
    _, w = _agg("nash_mtl", g, max_norm=0.0)
    torch.testing.assert_close(w * ((g @ g.T) @ w), torch.ones(3, dtype=torch.float64))
    assert (w > 0).all()
    d_clip, _ = _agg("nash_mtl", g, max_norm=0.1)
    torch.testing.assert_close(d_clip.norm(), torch.tensor(0.1, dtype=torch.float64))


def test_aligned_mtl_orthogonal_equal_norms_is_the_sum() -> None:
    g = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    d, _ = _agg("aligned_mtl", g)
    torch.testing.assert_close(d, g.sum(0))
    g2 = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d2, _ = _agg("aligned_mtl", g2)  # aligned to the smallest singular value: (1, 1)
    torch.testing.assert_close(d2, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_aligned_mtl_weights_from_a_gram_matrix_directly() -> None:
    """``weights_from_gram`` called on a Gram matrix (no gradients, so float32's K eps is the
    rank threshold): diag(9, 1) -> B = diag(1/3, 1), weights (1/3, 1) (Senushkin et al.
    2023, Alg. 1), also with an explicit ``eps_rank``; [[1, 1], [1, 1 + 1e-9]] has rank 1
    at that threshold: B = v v^T with v = (1, 1) / sqrt(2), weights (1, 1); a zero Gram
    matrix gives zero weights."""
    f64 = torch.float64
    tasks = torch.arange(2)
    ones = torch.ones(2, dtype=f64)
    for hp in ({}, {"eps_rank": 1e-3}):
        m = create_weighting("aligned_mtl", 2, **hp)
        w = m.weights_from_gram(torch.tensor([[9.0, 0.0], [0.0, 1.0]], dtype=f64), ones, tasks)  # type: ignore[attr-defined]
        torch.testing.assert_close(w, torch.tensor([1 / 3, 1.0], dtype=f64))
    m = create_weighting("aligned_mtl", 2)
    near = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-9]], dtype=f64)
    torch.testing.assert_close(m.weights_from_gram(near, ones, tasks), ones, atol=1e-6, rtol=0.0)  # type: ignore[attr-defined]
    torch.testing.assert_close(m.weights_from_gram(torch.zeros(2, 2, dtype=f64), ones, tasks),  # type: ignore[attr-defined]
                               torch.zeros(2, dtype=f64))


def test_aligned_mtl_keeps_a_small_true_eigenvalue_at_large_p() -> None:
    """Rank 2 in float32 at P = 1e6 (g3 = g1 + g2, ||g2|| = ||g1|| / 10): the true small
    eigenvalue is ~7.5e-3 of the largest, far above the documented threshold max(K eps32,
    sqrt(P) eps32) = 1.2e-4, so it is kept: the weights are the rank-2 solution of Senushkin
    et al. 2023 (Alg. 1) computed in float64 (to the float32 Gram matrix's precision, ~1e-3
    here). A threshold growing like P (0.06-0.12 here) would drop it."""
    torch.manual_seed(0)
    g = torch.randn(2, 1_000_000)
    g[1] *= 0.1
    grads = torch.cat([g, (g[0] + g[1])[None]])  # [3, P] float32
    exact = grads.double()
    lam, vec = torch.linalg.eigh(exact @ exact.T)
    lam, vec = lam[1:], vec[:, 1:]  # the true rank is 2
    expected = (lam.min().sqrt() * (vec / lam.sqrt()) @ vec.T).sum(0)
    _, w = _agg("aligned_mtl", grads)
    torch.testing.assert_close(w.double(), expected, atol=0.0, rtol=5e-3)


def test_graddrop_keeps_agreeing_signs() -> None:
    g = torch.tensor([[1.0, 2.0, -1.0], [3.0, 1.0, -2.0]])
    d, w = _agg("graddrop", g)
    torch.testing.assert_close(d, g.sum(0))  # no sign conflict: nothing dropped
    torch.testing.assert_close(w, torch.ones(2))


def test_graddrop_one_task_keeps_its_gradient_and_none_gives_zero() -> None:
    """With one task every sign is pure (P = 1 or 0 agrees with the gradient): nothing is
    dropped, d = g, weight 1; with no task present d is a zero vector of the gradient size."""
    g = torch.tensor([[1.0, -2.0, 3.0], [5.0, 5.0, 5.0]])
    m = create_weighting("graddrop", 2)
    d, w = m.aggregate(g, torch.ones(2), torch.tensor([True, False]))
    torch.testing.assert_close(d, g[0])
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0]))
    d0, w0 = m.aggregate(g, torch.ones(2), torch.tensor([False, False]))
    assert d0.shape == (3,) and not d0.any() and not w0.any()
    # leak is a fraction in [0, 1], both ends included (1: nothing is dropped)
    d1, _ = create_weighting("graddrop", 2, leak=1.0).aggregate(g, torch.ones(2), ALL2)
    torch.testing.assert_close(d1, g.sum(0))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"graddrop leak must be in \[0, 1\], got"):
            create_weighting("graddrop", 2, leak=bad)
    # a present task with a zero gradient keeps none of it: weight 0 (no L1 mass to keep)
    dz, wz = m.aggregate(torch.cat([g[:1], torch.zeros(1, 3)]), torch.ones(2), ALL2)
    torch.testing.assert_close(dz, g[0])
    torch.testing.assert_close(wz, torch.tensor([1.0, 0.0]))


def test_graddrop_mixed_purity_zero_activation_and_zero_sum() -> None:
    """Chen et al. 2020, Alg. 1 on the representation z [B=2, F=2] = [[1, 0], [-1, 2]]
    (one ReLU-style zero). Task gradients per (sample, feature) g0 = [2, 5, -1, -1],
    g1 = [-1, 7, 3, 0]: sign-weighted sums S_0 = (3, -1), S_1 = (-4, 0). Feature 0: purity
    (1 - 1/7) / 2 = 3/7, positive (task 0 kept) iff u < 3/7, else task 1 kept; feature 1:
    purity 0, negative: task 0 (S = -1) kept, task 1 (S = 0, no sign) dropped. u is the
    per-feature uniform draw from torch's RNG, so each seed's outcome is known; both
    outcomes occur over the seeds."""
    f64 = torch.float64
    z = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=f64)
    g = torch.tensor([[2.0, 5.0, -1.0, -1.0], [-1.0, 7.0, 3.0, 0.0]], dtype=f64)
    m = create_weighting("graddrop", 2)
    outcomes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        positive = bool(torch.rand(2, dtype=f64)[0] < 3 / 7)
        m.set_representation(z)
        torch.manual_seed(seed)
        d, w = m.aggregate(g, torch.ones(2, dtype=f64), ALL2)
        if positive:  # feature 0 from task 0, feature 1 from task 0
            exp_d, exp_w = [2.0, 5.0, -1.0, -1.0], [1.0, 0.0]
        else:  # feature 0 from task 1 (|-1| + |3| of its L1 mass 11)
            exp_d, exp_w = [-1.0, 5.0, 3.0, -1.0], [6 / 9, 4 / 11]
        torch.testing.assert_close(d, torch.tensor(exp_d, dtype=f64), msg=f"seed {seed}")
        torch.testing.assert_close(w, torch.tensor(exp_w, dtype=f64), msg=f"seed {seed}")
        outcomes.add(positive)
    assert outcomes == {True, False}


def test_gradnorm_balances_the_gradient_norms() -> None:
    m = create_weighting("gradnorm", 2, alpha=0.0, lr=0.05)
    g = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    for _ in range(50):
        m.aggregate(g, torch.ones(2), ALL2)
    w = m.task_weights  # type: ignore[attr-defined]
    torch.testing.assert_close(w.sum(), torch.tensor(2.0, dtype=torch.float64))
    assert w[1] > w[0]  # the task with the smaller gradient is up-weighted


def test_db_mtl_gives_every_task_the_largest_norm() -> None:
    g = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    m = create_weighting("db_mtl", 2, beta=0.0)
    d, _ = m.aggregate(g, torch.ones(2, dtype=torch.float64), ALL2)
    torch.testing.assert_close(d, torch.tensor([4.0, 4.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------- solvers
def test_min_norm_2_every_case_of_sener_and_koltun_algorithm_1() -> None:
    """``min_{g in [0, 1]} ||g v1 + (1 - g) v2||^2`` (Sener & Koltun 2018, Alg. 1), by hand."""
    from mtl.weighting._solvers import min_norm_2

    # v1 = (1, 0), v2 = (2, 0): v1 is the closest point (v1.v2 >= v1.v1)
    assert min_norm_2(1.0, 2.0, 4.0) == (1.0, 1.0)
    # v1 = (2, 0), v2 = (1, 0): v2 is (v1.v2 >= v2.v2)
    assert min_norm_2(4.0, 2.0, 1.0) == (0.0, 1.0)
    # v1 = (1, 0), v2 = (-1, 1): g = (2 + 1) / (1 + 2 + 2) = 0.6, point (0.2, 0.4), norm^2 0.2
    gamma, cost = min_norm_2(1.0, -1.0, 2.0)
    assert math.isclose(gamma, 0.6) and math.isclose(cost, 0.2)
    # orthogonal unit vectors: the midpoint, norm^2 1/2
    assert min_norm_2(1.0, 0.0, 1.0) == (0.5, 0.5)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # orthogonal gradients of norms 1, 2, 3: w_t proportional to 1 / ||g_t||^2
        ([[1, 0, 0], [0, 2, 0], [0, 0, 3]], [36 / 49, 9 / 49, 4 / 49]),
        # g1 = (0.1, 0) has g1.g_t >= ||g1||^2 for all t: the vertex e1 is the min-norm point
        ([[0.1, 0, 0], [1, 1, 0], [1, -1, 0]], [1.0, 0.0, 0.0]),
        # e1, e2, e3 and (1, 1, 1): min-norm point of the first three (1/3 each), outside
        # which (1, 1, 1) . d = 1 >= 1/3: the 4th task has weight 0
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], [1 / 3, 1 / 3, 1 / 3, 0.0]),
        # the best pair (e1, e2 at 1/2) is not optimal: e3 and e4 = -(e1 + e2) / 2 join;
        # d = 0 is reachable (w = (1/4, 1/4, 0, 1/2)), so any w with w^T G = 0 is optimal
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-0.5, -0.5, 0]], [0.25, 0.25, 0.0, 0.5]),
    ],
)
def test_min_norm_weights_known_min_norm_points(rows: list[list[float]],
                                                 expected: list[float]) -> None:
    """The min-norm point of the convex hull of the gradients (MGDA), by hand: for orthogonal
    gradients ``w_t = (1 / ||g_t||^2) / sum_j 1 / ||g_j||^2``; a vertex when the others lie
    beyond it; a face when the remaining gradients lie beyond that face's min-norm point."""
    g = np.array(rows, dtype=np.float64)
    w = min_norm_weights(g @ g.T)
    np.testing.assert_allclose(w, expected, atol=1e-9)
    # optimality certificate (KKT on the simplex): (M w)_t >= w^T M w for every task
    m = g @ g.T
    assert (m @ w >= w @ m @ w - 1e-9).all()


def test_min_norm_weights_one_task_and_a_relative_stopping_rule() -> None:
    """One task: the weight 1 (shape [1]). Orthogonal gradients of norms s, 2s, 3s: the
    min-norm point has w = (36, 9, 4) / 49 at every scale s (MGDA's weights are
    scale-free); the stopping rule on the duality gap is relative, so tiny gradients
    (s = 1e-6: w^T M w ~ 1e-12) are solved as accurately as unit ones, not stopped at the
    best pair (0.8, 0.2, 0)."""
    np.testing.assert_array_equal(min_norm_weights(np.array([[4.0]])), np.ones(1))
    for s in (1e-8, 1e-6, 1.0, 1e4):
        w = min_norm_weights(s**2 * np.diag([1.0, 4.0, 9.0]))
        np.testing.assert_allclose(w, np.array([36.0, 9.0, 4.0]) / 49.0, atol=1e-9)


def _box_qp_kkt(m: np.ndarray, lower: np.ndarray, v: np.ndarray) -> None:
    """KKT conditions of ``min v^T M v s.t. v >= u`` (convex: they certify the optimum):
    ``v >= u``, multipliers ``(M v)_j >= 0`` and ``(M v)_j (v_j - u_j) = 0``."""
    mv = v @ m  # [R, K] (M symmetric)
    tol = 1e-7 * (1.0 + np.abs(mv).max())
    assert (v >= lower - 1e-12).all()
    assert (mv >= -tol).all()
    np.testing.assert_allclose(mv * (v - lower), 0.0, atol=tol)


@pytest.mark.parametrize("k", [5, 7])
def test_box_qp_satisfies_its_kkt_conditions_exact_and_gauss_seidel(k: int) -> None:
    """K = 5 takes the active-set enumeration, K = 7 projected Gauss-Seidel; both must meet
    the KKT conditions, for the rows UPGrad uses (u = e_i / K) and for random bounds."""
    rng = np.random.default_rng(k)
    g = rng.standard_normal((k, 4))  # K > dim: a singular Gram matrix
    m = g @ g.T
    for lower in (np.eye(k) / k, rng.standard_normal((3, k))):
        _box_qp_kkt(m, lower, box_qp(m, lower))


def test_box_qp_diagonal_gram_and_zero_gram() -> None:
    """Orthogonal gradients (diagonal ``M``): the problem separates, ``v_j = max(u_j, 0)``,
    on both paths (K = 3 and K = 8); a zero Gram matrix returns the bounds themselves."""
    for k in (3, 8):
        m = np.diag(np.arange(1.0, k + 1.0))
        lower = np.linspace(-1.0, 1.0, 2 * k).reshape(2, k)
        np.testing.assert_allclose(box_qp(m, lower), np.maximum(lower, 0.0), atol=1e-9)
        zero = box_qp(np.zeros((k, k)), lower)
        np.testing.assert_array_equal(zero, lower)
        assert zero is not lower  # a copy: the caller's bounds are not aliased


def test_nash_weights_known_solutions() -> None:
    """Navon et al. 2022, Eq. (2) ``alpha_t (G G^T alpha)_t = 1``: orthogonal gradients give
    ``alpha_t = 1 / ||g_t||``; two unit gradients with cosine c give ``1 / sqrt(1 + c)`` each;
    a zero gradient gets 0; opposite gradients have no solution (Pareto-stationary)."""
    from mtl.weighting._solvers import nash_weights

    alpha, reason = nash_weights(np.diag([1.0, 4.0, 100.0]))  # norms 1, 2, 10
    assert reason == ""
    np.testing.assert_allclose(alpha, [1.0, 0.5, 0.1], rtol=1e-6)
    for c in (0.5, -0.5, -0.9, -1.0 + 1e-6):  # the last: nearly opposite, alpha = 1000
        alpha, reason = nash_weights(np.array([[1.0, c], [c, 1.0]]))
        assert reason == ""
        np.testing.assert_allclose(alpha, np.full(2, 1 / math.sqrt(1 + c)), rtol=1e-6)
    # tiny gradients (norms 1e-15 .. 1e-14) are not mistaken for zero ones: alpha = 1 / norm
    alpha, reason = nash_weights(1e-30 * np.diag([1.0, 4.0, 100.0]))
    assert reason == ""
    np.testing.assert_allclose(alpha, [1e15, 0.5e15, 0.1e15], rtol=1e-6)
    # scaled Gram (norms 3 and 3, cosine 0.5): alpha scales as 1 / norm
    alpha, _ = nash_weights(9.0 * np.array([[1.0, 0.5], [0.5, 1.0]]))
    np.testing.assert_allclose(alpha, np.full(2, 1 / (3 * math.sqrt(1.5))), rtol=1e-6)
    alpha, reason = nash_weights(np.diag([4.0, 0.0]))  # task 1 has a zero gradient
    assert reason == ""
    np.testing.assert_allclose(alpha, [0.5, 0.0], rtol=1e-6)
    alpha, reason = nash_weights(np.zeros((2, 2)))
    assert reason == "" and alpha is not None and (alpha == 0.0).all()
    alpha, reason = nash_weights(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    assert alpha is None
    assert reason == "singular Newton system (the gradients are Pareto-stationary)"


# ---------------------------------------------------------------------------------- backends
def test_representation_backend_is_j_transpose_d() -> None:
    """MGDA-UB: the backbone gets J_z^T d with d aggregated from the per-task z gradients."""
    torch.manual_seed(0)
    model = TinyModel().double()
    x, y = make_batch(dtype=torch.float64)
    losses, present, z = compute_losses(model, x, y)
    gz = torch.stack(
        [torch.autograd.grad(l_, z, retain_graph=True)[0].reshape(-1) for l_ in losses]
    )
    d, _ = create_weighting("mgda", 3).aggregate(gz, losses.detach(), present)
    expected = torch.autograd.grad(
        z, list(model.shared_parameters()), d.view_as(z), retain_graph=True
    )
    multitask_backward(create_weighting("mgda", 3), losses, present,
                       list(model.shared_parameters()), model.head_parameters(), z,
                       backend="representation")  # fmt: skip
    for p, e in zip(model.shared_parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_heads_get_their_own_task_gradient() -> None:
    torch.manual_seed(0)
    model = TinyModel().double()
    expected = _plain_grads(model, torch.ones(3, dtype=torch.float64))
    x, y = make_batch(dtype=torch.float64)
    losses, present, z = compute_losses(model, x, y)
    multitask_backward(create_weighting("pcgrad", 3), losses, present,
                       list(model.shared_parameters()), model.head_parameters(), z)  # fmt: skip
    n_shared = len(list(model.shared_parameters()))
    for p, e in list(zip(model.parameters(), expected, strict=True))[n_shared:]:
        torch.testing.assert_close(p.grad, e)


@pytest.mark.parametrize("backend", ["full", "representation"])
def test_loop_fallback_matches_vmapped(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for batched in (True, False):
        monkeypatch.setattr(backward_mod, "_BATCHED_OK", batched)
        torch.manual_seed(0)
        model = TinyModel().double()
        x, y = make_batch(dtype=torch.float64)
        losses, present, z = compute_losses(model, x, y)
        multitask_backward(create_weighting("upgrad", 3), losses, present,
                           list(model.shared_parameters()), model.head_parameters(), z,
                           backend=backend)  # fmt: skip
        results.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_amp_overflow_is_passed_to_the_scaler() -> None:
    model = TinyModel()
    x, y = make_batch()
    losses, present, z = compute_losses(model, x, y)
    # finite losses whose scaled gradients overflow float32 (1e30 * 1e10 > 3.4e38)
    multitask_backward(create_weighting("mgda", 3), losses * 1e30, present,
                       list(model.shared_parameters()), model.head_parameters(), z,
                       loss_scale=1e10)  # fmt: skip
    assert any(
        not torch.isfinite(p.grad).all() for p in model.shared_parameters() if p.grad is not None
    )


def test_task_gradient_cosine() -> None:
    model = TinyModel().double()
    x, y = make_batch(absent=(1,), dtype=torch.float64)
    losses, present, _ = compute_losses(model, x, y)
    shared = list(model.shared_parameters())
    cos = task_gradient_cosine(losses, present, shared)
    assert cos.shape == (3, 3)
    assert torch.isnan(cos[1]).all() and torch.isnan(cos[:, 1]).all()
    torch.testing.assert_close(cos[[0, 2], [0, 2]], torch.ones(2, dtype=torch.float64))
    g = [
        torch.cat(
            [t.reshape(-1) for t in torch.autograd.grad(losses[i], shared, retain_graph=True)]
        )
        for i in (0, 2)
    ]
    expected = (g[0] @ g[1]) / (g[0].norm() * g[1].norm())
    torch.testing.assert_close(cos[0, 2], expected)
    torch.testing.assert_close(cos[2, 0], expected)
    assert all(p.grad is None for p in shared)
    losses.sum().backward()  # the graph was retained


def test_nan_free_with_a_zero_gradient_task() -> None:
    """A present task whose gradient is exactly zero must not produce NaN anywhere."""
    g = torch.tensor([[1.0, 2.0], [0.0, 0.0], [-1.0, 0.5]], dtype=torch.float64)
    for name in list_weightings():
        m = create_weighting(name, 3)
        if m.level != "gradient":
            continue
        d, w = m.aggregate(g, torch.ones(3, dtype=torch.float64), ALL3)
        assert torch.isfinite(d).all() and torch.isfinite(w).all(), name
    assert math.isfinite(1.0)
