"""Known answers of ExcessMTL, STCH, ConFIG and DualProj (issue 12), with their provenance.

Reference numbers were produced by running the reference code itself on the inputs below:

* ConFIG and DualProj: TorchJD 0.18.0 (``pip install torchjd==0.18.0 qpsolvers quadprog``),
  ``ConFIG()(G)`` and ``DualProjWeighting(projector=QuadprogProjector(norm_eps=0,
  reg_eps=0))(G @ G.T)`` (the exact projection; see ``mtl/weighting/dualproj.py`` for why
  mtl drops TorchJD's 1e-4 regularisation; the regularised numbers are quoted where they
  differ).
* ExcessMTL and STCH: LibMTL main (commit 4336804), ``LibMTL/weighting/ExcessMTL.py`` and
  ``STCH.py`` executed unmodified against a stub ``AbsWeighting`` (``_get_grads`` returning
  the fixed gradients; the gradient of ``losses`` after the reference's ``loss.backward()`` is
  STCH's effective weight).

The multi-step runs with an absent task have no reference (LibMTL has every task in every
batch); their expected values are written out from the paper's formulas next to them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtl.weighting import create_weighting, get_weighting_class, hyperparameters

F64 = torch.float64
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mask(*bits: int) -> Tensor:
    return torch.tensor([bool(b) for b in bits])


def _agg(
    name: str, g: Tensor, present: Tensor | None = None, **hp: object
) -> tuple[Tensor, Tensor]:
    k = g.shape[0]
    m = create_weighting(name, k, **hp)
    p = torch.ones(k, dtype=torch.bool) if present is None else present
    return m.aggregate(g, torch.ones(k, dtype=g.dtype), p)


# three conflicting gradients (g1.g2 < 0, g2.g3 < 0)
G3B = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [0.0, -3.0, 1.0]], dtype=F64)
# 5 tasks in 8 dimensions (round(10 * randn) / 10, seed 0)
G5 = torch.tensor([
    [-2.3, -0.4, -1.1, 1.0, -0.9, -1.3, -0.6, -0.9],
    [-1.3, 1.5, 0.3, 2.0, 1.1, -1.2, 0.1, 0.3],
    [0.2, -0.6, -1.3, -0.7, -0.0, 0.2, 0.2, -0.8],
    [0.8, 0.2, 0.1, -0.0, 0.5, 1.1, 0.4, -0.2],
    [-0.0, -0.2, -1.7, 0.9, 1.2, -0.1, -2.0, 0.2],
], dtype=F64)  # fmt: skip
# 7 tasks in 9 dimensions: more than 6 tasks, the projected Gauss-Seidel path of the box QP
G7 = torch.tensor([
    [-0.1, -0.5, -0.5, -0.1, -0.1, -0.2, 1.1, 1.4, 0.0],
    [0.2, 0.2, 0.7, -1.0, 0.5, 0.8, 1.3, 1.0, 0.6],
    [0.8, 1.8, 1.1, -3.5, -1.6, -1.6, -1.0, 0.7, 1.3],
    [0.0, -1.9, 1.8, 1.3, 1.1, 0.8, 0.3, -1.3, -0.4],
    [-1.9, 0.0, 0.6, -0.2, 1.8, 2.5, 2.3, 0.4, 1.6],
    [1.0, -0.8, -0.5, 0.3, -1.0, -0.8, -0.5, -1.0, 0.3],
    [-0.1, -0.0, 1.1, -0.1, 0.6, -0.7, -0.1, 1.0, -0.3],
], dtype=F64)  # fmt: skip


# ---------------------------------------------------------------------------------- DualProj
def test_dualproj_two_tasks_by_hand() -> None:
    """g1 = (1, 0), g2 = (-2, 1): the mean (-0.5, 0.5) conflicts with g1; its projection onto
    {x : g1.x >= 0, g2.x >= 0} is (0, 0.5) = 1 g1 + 0.5 g2 (TorchJD: (1.0, 0.5); with its
    default reg_eps 1e-4: (0.9994, 0.5))."""
    g = torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=F64)
    d, w = _agg("dualproj", g)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5], dtype=F64))


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        (G3B, [2.0, 1.0, 1 / 3]),  # TorchJD regularised: (1.98098, 0.99207, 0.33333)
        (G5, [0.2, 0.2, 0.2, 0.48170212765957465, 0.2]),  # regularised: 0.48094509960704346
        (G7, [1 / 7] * 5 + [0.34994239631336377, 1 / 7]),  # regularised: 0.34940089536927066
    ],
    ids=["3-tasks", "5-tasks", "7-tasks-gauss-seidel"],
)
def test_dualproj_matches_torchjd(g: Tensor, expected: list[float]) -> None:
    d, w = _agg("dualproj", g)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=F64), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(d, w @ g)


def test_dualproj_projects_small_gradients_too() -> None:
    """The deliberate difference from TorchJD: G3B times 1e-3 (||G||_F = 0.0037) still gets
    the projection (2, 1, 1/3). TorchJD 0.18's default projector returns the unprojected mean
    (1/3, 1/3, 1/3) there (trace of the Gram matrix below its norm_eps 1e-4), although the
    mean conflicts with task 0."""
    d, w = _agg("dualproj", 1e-3 * G3B)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 1 / 3], dtype=F64))
    assert bool(((G3B @ d) >= -1e-15).all())
    assert float(G3B[0] @ G3B.mean(0)) < 0


def test_dualproj_preference_and_absent_task() -> None:
    """``pref = (1, 2, 0.5)`` on G3B: TorchJD gives (4, 2, 0.6) (d = (0, 0.2, 0.6): tangent to
    g1 and g3). A 4th task, absent (zero row, present False), changes nothing and gets 0."""
    d, w = _agg("dualproj", G3B, pref=[1.0, 2.0, 0.5])
    torch.testing.assert_close(w, torch.tensor([4.0, 2.0, 0.6], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([0.0, 0.2, 0.6], dtype=F64))
    g4 = torch.cat([G3B[:1], torch.zeros(1, 3, dtype=F64), G3B[1:]])
    d4, w4 = _agg("dualproj", g4, present=_mask(1, 0, 1, 1), pref=[1.0, 7.0, 2.0, 0.5])
    torch.testing.assert_close(w4, torch.tensor([4.0, 0.0, 2.0, 0.6], dtype=F64))
    torch.testing.assert_close(d4, d)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 8), shift=st.floats(-0.5, 0.5))
def test_dualproj_is_in_the_dual_cone_and_above_the_preference(
    seed: int, k: int, shift: float
) -> None:
    """GEM's guarantee: ``G d >= 0`` (no task's loss increases to first order), with weights
    ``w >= u`` (the dual's constraint), complementary slackness ``(w_t - u_t) g_t.d = 0`` (the
    projection's optimality), and ``d`` is the mean when the mean conflicts with no task. A
    wrong QP (UPGrad's per-task projection, the unprojected mean) breaks one of them."""
    g = 2 * torch.rand(k, k + 3, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1
    g = g + shift
    d, w = _agg("dualproj", g)
    scale = float(g.norm(dim=1).max()) ** 2
    assert bool(((g @ d) >= -1e-7 * scale).all())
    assert bool((w >= 1 / k - 1e-9).all())
    mean = g.mean(0)
    if bool(((g @ mean) >= 0).all()):
        torch.testing.assert_close(d, mean)
    # KKT of the projection: a task whose weight was raised above u_t is tangent to d
    slack = (w - 1 / k) * (g @ d)  # [K] complementary slackness, 0
    assert float(slack.abs().max()) <= 1e-7 * scale


# ------------------------------------------------------------------------------------ ConFIG
@pytest.mark.parametrize(
    ("g", "pref", "expected"),
    [
        (torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=F64), None,
         [0.17082039324993697, 0.723606797749979]),
        (torch.tensor([[1.0, 0.0, 0.5], [-0.8, 1.0, 0.2], [0.3, -0.6, 1.0]], dtype=F64), None,
         [0.17248961537135202, 0.8851386965494873, 1.441250460266365]),
        (torch.tensor([[1.0, 0.0, 0.5], [-0.8, 1.0, 0.2], [0.3, -0.6, 1.0]], dtype=F64),
         [1.0, 2.0, 0.5], [0.06727664520899036, 1.0873647353108735, 0.914776555485626]),
        # 4 tasks in 3 dimensions: U is 4 x 3, the pseudo-inverse is a least-squares solution
        (torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.2, -0.4, 1.0],
                       [-0.3, -0.2, -0.5]], dtype=F64), None,
         [0.3390622756471316, 0.8187936031006418, 0.3610785293996358]),
        (G5, None, [-0.9828501883310821, 0.5935515795182793, -1.796311864471603,
                    2.123407975921679, 1.1112608589143254, 1.5699426236309755,
                    0.6560140331326375, -2.2567975438584162]),
        (G7, None, [-0.8869740801529993, -2.2645333964653207, 1.4307673090374324,
                    -0.5416533720044056, -0.3036258049305778, -1.7500526195441468,
                    0.8821105924050906, 0.006560377435613643, 3.026107487880664]),
    ],
    ids=["2-tasks", "3-tasks", "3-tasks-pref", "4-tasks-rank-3", "5-tasks", "7-tasks"],
)  # fmt: skip
def test_config_matches_torchjd(g: Tensor, pref: list[float] | None, expected: list[float]) -> None:
    d, w = _agg("config", g, pref=pref)
    torch.testing.assert_close(d, torch.tensor(expected, dtype=F64), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(d, w @ g)


def test_config_float32_duplicated_gradient() -> None:
    """Two identical float32 gradients: U has rank 2, the pseudo-inverse drops the third
    singular value (exactly 0 in U, rounding noise in a float32 Gram matrix). TorchJD:
    d = (1.4999998807907104, 1.4999998807907104, 0): the duplicate counts twice in the
    length, and each direction gets the same projection."""
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    d, w = _agg("config", g)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, torch.tensor([1.5, 1.5, 0.0]), atol=3e-7, rtol=0)
    torch.testing.assert_close(w[0], w[1])


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 6), shift=st.floats(-0.5, 0.5))
def test_config_equal_projections_and_no_conflict(seed: int, k: int, shift: float) -> None:
    """ConFIG's defining property (Liu et al. 2025, Eq. 2): with linearly independent
    gradients, ``d`` has the same projection on every unit gradient (``U d = c 1``), ``c > 0``,
    so no task conflicts with ``d``; and ``||d||`` is the sum of the gradients' projections on
    ``d``'s direction."""
    g = 2 * torch.rand(k, k + 3, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1
    g = g + shift
    d, _ = _agg("config", g)
    units = g / g.norm(dim=1, keepdim=True)
    proj = units @ d  # [K]
    assert float(proj.min()) > 0
    torch.testing.assert_close(proj, proj.mean().expand(k), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(d.norm(), (g @ (d / d.norm())).sum())


# --------------------------------------------------------------------------------- ExcessMTL
EXCESS_G = [
    torch.tensor([[1.0, 0.0, 0.5, -0.2], [0.0, 2.0, 0.0, 1.0], [0.3, -0.3, 0.1, 0.0]], dtype=F64),
    torch.tensor([[0.8, 0.1, 0.4, -0.1], [0.1, 1.0, 0.2, 0.5], [0.6, -0.5, 0.3, 0.2]], dtype=F64),
    torch.tensor([[0.2, 0.0, 0.1, 0.0], [0.0, 1.5, -0.2, 0.7], [0.9, -0.9, 0.4, 0.4]], dtype=F64),
    torch.tensor([[0.1, 0.05, 0.0, 0.0], [0.2, 0.5, 0.0, 0.1], [1.2, -1.0, 0.5, 0.6]], dtype=F64),
]


def test_excess_mtl_matches_libmtl_over_four_steps() -> None:
    """LibMTL's ``ExcessMTL.backward`` with ``robust_step_size=0.5`` on these four gradient
    matrices: its ``loss_weight`` after each step (step 0 records the baselines, no update).
    Task 0 and 1 approach their optimum (shrinking gradients), task 2 does not: it takes the
    weight. Tolerance 1e-7: the reference stores the excess risks in a float32 tensor."""
    expected = [
        [1.0, 1.0, 1.0],
        [0.7372337715310652, 0.6662484683219145, 1.5965177601470204],
        [0.24942453128757386, 0.2783981070656941, 2.472177361646732],
        [0.05328372277352613, 0.06174272634910567, 2.884973550877368],
    ]
    m = create_weighting("excess_mtl", 3, robust_step_size=0.5)
    for g, exp in zip(EXCESS_G, expected, strict=True):
        d, w = m.aggregate(g, torch.ones(3, dtype=F64), _mask(1, 1, 1))
        torch.testing.assert_close(w, torch.tensor(exp, dtype=F64), rtol=1e-7, atol=0)
        torch.testing.assert_close(d, w @ g)  # this step's updated weights, as the reference


def _excess_formula(steps: list[tuple[Tensor, Tensor]], eta: float) -> list[Tensor]:
    """He et al. 2024, Eq. 6-9, written out per task: AdaGrad sum S_t += g_t^2, E_t = sum
    g_t^2 / sqrt(S_t + 1e-7), baseline E_t at the task's first step, then alpha_t *=
    exp(eta E_t / baseline_t) for the present tasks, rescaled to keep their total."""
    k = steps[0][0].shape[0]
    s = torch.zeros_like(steps[0][0])
    base = [math.nan] * k
    alpha = [1.0] * k
    out = []
    for g, present in steps:
        factors = {}
        for t in range(k):
            if not present[t]:
                continue
            s[t] += g[t] ** 2
            e = float((g[t] ** 2 / torch.sqrt(s[t] + 1e-7)).sum())
            if math.isnan(base[t]):
                base[t] = e
                factors[t] = 1.0
            else:
                factors[t] = math.exp(eta * e / base[t])
        total = sum(alpha[t] for t in factors)
        new = {t: alpha[t] * f for t, f in factors.items()}
        norm = sum(new.values())
        for t, v in new.items():
            alpha[t] = v / norm * total
        out.append(torch.tensor([alpha[t] if present[t] else 0.0 for t in range(k)], dtype=F64))
    return out


def test_excess_mtl_task_absent_for_two_steps() -> None:
    """Task 1 absent at steps 1 and 2 (its row zero): its AdaGrad row, baseline and weight stay
    put; tasks 0 and 2 are updated and keep their total; at step 3 task 1 returns with its
    step-0 statistics. A 4th task first labelled at step 2 records its baseline then."""
    presents = [_mask(1, 1, 1, 0), _mask(1, 0, 1, 0), _mask(1, 0, 1, 1), _mask(1, 1, 1, 1)]
    extra = torch.tensor([[0.4, 0.4, -0.2, 0.1]], dtype=F64)
    steps = []
    for g, p in zip(EXCESS_G, presents, strict=True):
        full = torch.cat([g, extra]) * p[:, None].to(F64)  # absent rows are exact zeros
        steps.append((full, p))
    expected = _excess_formula(steps, eta=0.5)
    m = create_weighting("excess_mtl", 4, robust_step_size=0.5)
    for s, ((g, p), exp) in enumerate(zip(steps, expected, strict=True)):
        before = m.grad_sum[1].clone() if m.grad_sum is not None else None  # type: ignore[attr-defined]
        lw1 = float(m.loss_weight[1])  # type: ignore[index]
        _, w = m.aggregate(g, torch.ones(4, dtype=F64), p)
        torch.testing.assert_close(w, exp, rtol=1e-12, atol=1e-12, msg=f"step {s}")
        if not p[1]:
            assert before is not None and torch.equal(m.grad_sum[1], before)  # type: ignore[attr-defined]
            assert float(m.loss_weight[1]) == lw1  # type: ignore[index]
    # the 4th task's baseline is its step-2 estimate: E = sum g^2 / sqrt(g^2 + 1e-7)
    e3 = float((extra[0] ** 2 / torch.sqrt(extra[0] ** 2 + 1e-7)).sum())
    assert float(m.initial_risk[3]) == pytest.approx(e3, rel=1e-12)  # type: ignore[index]
    assert float(m.loss_weight.sum()) == pytest.approx(4.0)  # type: ignore[attr-defined]


def test_excess_mtl_representation_backend_sums_over_the_batch() -> None:
    """Representation backend (LibMTL's ``rep_grad``): the excess risk is that of the per-task
    gradient w.r.t. z summed over the batch's samples; the direction combines the per-sample
    rows. Same weights as the full-backend method fed the batch sums."""
    gen = torch.Generator().manual_seed(3)
    rep = create_weighting("excess_mtl", 2, robust_step_size=0.5)
    full = create_weighting("excess_mtl", 2, robust_step_size=0.5)
    for _ in range(3):
        per_sample = torch.randn(2, 4, 3, generator=gen, dtype=F64)  # [T, B, D]
        rep.set_representation(torch.zeros(4, 3, dtype=F64))  # z [B, D]
        d, w = rep.aggregate(per_sample.reshape(2, -1), torch.ones(2, dtype=F64), _mask(1, 1))
        _, w_full = full.aggregate(per_sample.sum(1), torch.ones(2, dtype=F64), _mask(1, 1))
        torch.testing.assert_close(w, w_full)
        torch.testing.assert_close(d, w @ per_sample.reshape(2, -1))
    assert rep.grad_sum.shape == (2, 3)  # type: ignore[union-attr]
    assert float((rep.loss_weight - 1).abs().max()) > 1e-3  # type: ignore[operator]


# -------------------------------------------------------------------------------------- STCH
STCH_LOSSES = [
    [(2.0, 1.0), (1.8, 0.9), (1.6, 0.7)],
    [(1.4, 0.8), (1.2, 0.6), (1.0, 0.4)],
    [(0.9, 0.5), (0.6, 0.45), (0.8, 0.3)],
    [(0.5, 0.2), (0.7, 0.1), (0.3, 0.25)],
]
# LibMTL's STCH.backward (STCH_mu=0.5, STCH_warmup_epoch=1): the gradient of its loss with
# respect to the two losses, per batch. Epochs 0-1: log-loss sum (1 / L); nadir = epoch 1's
# mean (1.2, 0.6); epochs 2-3: the smooth Tchebycheff objective.
STCH_EXPECTED = [
    [(0.5, 1.0), (0.5555555555555556, 1.1111111111111112), (0.625, 1.4285714285714286)],
    [(0.7142857142857143, 1.25), (0.8333333333333334, 1.6666666666666667), (1.0, 2.5)],
    [(0.9944751381215469, 2.2099447513812156), (1.0256410256410255, 3.0769230769230766),
     (1.6, 2.3999999999999995)],
    [(2.4390243902439024, 3.902439024390244), (2.6415094339622636, 1.5094339622641504),
     (1.7647058823529413, 5.882352941176471)],
]  # fmt: skip


def test_stch_matches_libmtl_over_four_epochs() -> None:
    m = create_weighting("stch", 2, mu=0.5, warmup_epoch=1)
    both = _mask(1, 1)
    for e, (batches, expected) in enumerate(zip(STCH_LOSSES, STCH_EXPECTED, strict=True)):
        for b, exp in zip(batches, expected, strict=True):
            w = m.weights(torch.tensor(b, dtype=F64), both)
            torch.testing.assert_close(w, torch.tensor(exp, dtype=F64), msg=f"epoch {e} {b}")
        # the trainer's epoch mean: the mean of the per-batch losses (the reference's average)
        m.epoch_end(torch.tensor(batches, dtype=F64).mean(0), both)
    torch.testing.assert_close(m.nadir, torch.tensor([1.2, 0.6], dtype=F64))  # type: ignore[attr-defined]
    assert int(m.epochs) == 4  # type: ignore[call-overload]


def _stch_reference_grad(losses: list[float], nadir: list[float], mu: float) -> Tensor:
    """The reference's objective on the tasks given, ``K mu log sum exp(log(L / z + 1e-20) /
    mu)`` (STCH.py's last lines, ``task_num`` = K), differentiated by autograd."""
    l_ = torch.tensor(losses, dtype=F64, requires_grad=True)
    z = torch.tensor(nadir, dtype=F64)
    logs = torch.log(l_ / z + 1e-20)
    (len(losses) * mu * torch.logsumexp(logs / mu, 0)).backward()
    assert l_.grad is not None
    return l_.grad


def test_stch_task_absent_in_the_nadir_epoch() -> None:
    """Three tasks, ``warmup_epoch=1``; task 2 is unlabelled all through epoch 1. Its nadir is
    recorded at the end of epoch 2 (its first labelled epoch after the warm-up); in epoch 2
    the Tchebycheff term runs over tasks 0 and 1 (K = 2) and task 2 keeps the warm-up weight
    1 / L. From epoch 3 on all three are in the term (K = 3). An absent task gets 0."""
    mu = 0.5
    m = create_weighting("stch", 3, mu=mu, warmup_epoch=1)
    m.epoch_end(torch.tensor([2.0, 1.0, 3.0], dtype=F64), _mask(1, 1, 1))  # epoch 0
    w = m.weights(torch.tensor([1.5, 0.9, 0.0], dtype=F64), _mask(1, 1, 0))
    torch.testing.assert_close(w, torch.tensor([1 / 1.5, 1 / 0.9, 0.0], dtype=F64))
    m.epoch_end(torch.tensor([1.2, 0.6, 0.0], dtype=F64), _mask(1, 1, 0))  # epoch 1: nadir
    assert math.isnan(float(m.nadir[2]))  # type: ignore[index]
    # epoch 2
    w = m.weights(torch.tensor([0.9, 0.5, 2.0], dtype=F64), _mask(1, 1, 1))
    ref = _stch_reference_grad([0.9, 0.5], [1.2, 0.6], mu)
    torch.testing.assert_close(w, torch.tensor([*ref.tolist(), 0.5], dtype=F64))
    w = m.weights(torch.tensor([0.9, 0.0, 2.0], dtype=F64), _mask(1, 0, 1))  # task 1 absent
    ref = _stch_reference_grad([0.9], [1.2], mu)  # K = 1: exactly 1 / L
    torch.testing.assert_close(w, torch.tensor([ref.item(), 0.0, 0.5], dtype=F64))
    m.epoch_end(torch.tensor([0.8, 0.5, 2.5], dtype=F64), _mask(1, 1, 1))  # epoch 2
    torch.testing.assert_close(m.nadir, torch.tensor([1.2, 0.6, 2.5], dtype=F64))  # type: ignore[attr-defined]
    # epoch 3: all three tasks
    w = m.weights(torch.tensor([0.5, 0.3, 1.0], dtype=F64), _mask(1, 1, 1))
    ref = _stch_reference_grad([0.5, 0.3, 1.0], [1.2, 0.6, 2.5], mu)
    torch.testing.assert_close(w, ref)


def test_stch_objective_gradient_is_the_references() -> None:
    """Through ``objective``: back-propagating ``sum_t w_t L_t`` gives the reference
    objective's gradient with respect to the losses (after the warm-up)."""
    m = create_weighting("stch", 2, warmup_epoch=0)  # mu = 1 (default)
    m.epoch_end(torch.tensor([1.0, 4.0], dtype=F64), _mask(1, 1))
    losses = torch.tensor([0.5, 3.0], dtype=F64, requires_grad=True)
    total, _ = m.objective(losses, _mask(1, 1))
    (grad,) = torch.autograd.grad(total, losses)
    torch.testing.assert_close(grad, _stch_reference_grad([0.5, 3.0], [1.0, 4.0], 1.0))


# ---------------------------------------------------------------------------------- defaults
def test_defaults_are_the_references() -> None:
    """LibMTL's config.py (``robust_step_size`` 1e-2, ``STCH_mu`` 1.0, ``STCH_warmup_epoch``
    4), the reference codes' constants (1e-7, 1e-20), TorchJD's preference defaults."""
    expected = {
        "excess_mtl": {"robust_step_size": 1e-2, "eps": 1e-7},
        "stch": {"mu": 1.0, "warmup_epoch": 4, "eps": 1e-20},
        "config": {"pref": None, "rtol": None},
        "dualproj": {"pref": None},
    }
    for name, defaults in expected.items():
        assert hyperparameters(get_weighting_class(name)) == defaults, name
        m = create_weighting(name, 2)
        for key, value in defaults.items():
            assert getattr(m, key) == value, (name, key)


def test_excess_mtl_weight_underflow_never_turns_nan() -> None:
    """Review of issue 12: a weight underflowing to exactly 0 made log(alpha) = -inf; a batch
    holding only such tasks then gave softmax([-inf]) = NaN, and the state stayed NaN for good.
    """
    m = create_weighting("excess_mtl", 2)
    both, only1 = torch.tensor([True, True]), torch.tensor([False, True])
    losses = torch.ones(2, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    m.aggregate(torch.tensor([[1e-6, 0.0], [0.0, 1.0]], dtype=torch.float64), losses, both)
    m.aggregate(eye, losses, both)  # task 0's risk ratio ~1e12: task 1's weight underflows
    assert float(m.loss_weight[1]) < 1e-300
    for present in (only1, both, only1):
        d, w = m.aggregate(eye, losses, present)
        assert torch.isfinite(d).all() and torch.isfinite(w).all()
        assert torch.isfinite(m.loss_weight).all() and float(m.loss_weight[1]) > 0
