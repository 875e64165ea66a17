"""Tests of the issue-12 methods (MoCo, MoDo, SDMGrad, FairGrad, ExcessMTL, STCH, ConFIG,
DualProj) written to kill surviving mutants of ``make mutate`` (docs/weighting.md, "Fourth
session"). Each test names the wrong implementations it rejects; the expected numbers come
from the papers' formulas (differentiated by autograd where stated) or from the unmutated
method itself run without interruption (checkpoint round trips).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import Tensor
from weighting_helpers import BATCHES

from mtl.weighting import create_weighting, get_weighting_class, list_weightings

F64 = torch.float64
ALL3 = torch.ones(3, dtype=torch.bool)

B = BATCHES[:4]  # four consecutive batches, as in test_known_answers_new_a
LOSSES = [[1.0, 2.0, 0.5], [0.8, 1.5, 0.6], [0.7, 1.2, 0.4], [0.6, 1.0, 0.3]]
# the methods that keep a [T, P] matrix outside their buffers (get/set_extra_state); gamma of
# MoDo raised from 1e-3 so that its lambda visibly moves within a few steps
STATEFUL: dict[str, dict[str, float]] = {
    "moco": {},
    "modo": {"gamma": 0.1},
    "sdmgrad": {},
    "excess_mtl": {},
}


def _t(x: list[float]) -> Tensor:
    return torch.tensor(x, dtype=F64)


def _mask(*bits: int) -> Tensor:
    return torch.tensor([bool(b) for b in bits])


def _steps(m: torch.nn.Module, batches: range, dtype: torch.dtype = F64) -> list[Tensor]:
    """``aggregate`` on batches ``B[i]`` (every task present): directions and weights."""
    out = []
    for i in batches:
        d, w = m.aggregate(B[i].to(dtype), _t(LOSSES[i]).to(dtype), ALL3)  # type: ignore[operator]
        out += [d, w]
    return out


# ------------------------------------------------------------------------- checkpoint state
@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_checkpoint_mid_run_continues_exactly(name: str) -> None:
    """Saved after two steps and loaded into a fresh instance, the method continues exactly
    like the uninterrupted one for two more steps (MoDo's and SDMGrad's directions at step 4
    depend on the previous step's stored gradients, MoCo's on ``y``, ExcessMTL's on the
    AdaGrad sum). Rejects a ``get_extra_state`` that drops or renames the matrix and a
    ``set_extra_state`` that ignores it (the contract's round trip compares one step's
    weights only, which MoDo / SDMGrad fix before seeing the batch)."""
    hp = STATEFUL[name]
    ref = create_weighting(name, 3, **hp)
    _steps(ref, range(2))
    saved = copy.deepcopy(ref.state_dict())
    clone = create_weighting(name, 3, **hp)
    clone.load_state_dict(saved)
    for a, b in zip(_steps(ref, range(2, 4)), _steps(clone, range(2, 4)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (key,) = ref.get_extra_state()
    saved_matrix = saved["_extra_state"][key]
    assert isinstance(saved_matrix, Tensor) and saved_matrix.shape == (3, 4)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_checkpoint_of_a_fresh_method_and_an_empty_state(name: str) -> None:
    """A method saved before its first step (the matrix is still ``None``) loads into a
    fresh instance, which then runs like a new one; ``set_extra_state`` of something that is
    not a dict (an old checkpoint) resets the matrix. Rejects ``None.cpu()`` /
    ``None.clone()`` / ``None.get()`` in the ``None`` branches."""
    hp = STATEFUL[name]
    fresh = create_weighting(name, 3, **hp)
    state = copy.deepcopy(fresh.state_dict())
    assert state["_extra_state"] == {next(iter(fresh.get_extra_state())): None}
    clone = create_weighting(name, 3, **hp)
    _steps(clone, range(1))
    clone.load_state_dict(state)  # back to the state before any step
    for a, b in zip(_steps(fresh, range(3)), _steps(clone, range(3)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    clone.set_extra_state(None)
    assert all(v is None for v in clone.get_extra_state().values())


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_recorded_in_float32_continues_in_float64(name: str) -> None:
    """State from float32 gradients (a checkpoint of a float32 run) used with float64
    gradients: the stored matrix is cast to the gradients' dtype, and the run matches one
    that was float64 throughout to float32 precision. Rejects dropping the ``dtype`` of the
    state's ``.to(...)`` (``index_copy`` of float64 rows into a float32 matrix fails)."""
    hp = STATEFUL[name]
    mixed, plain = create_weighting(name, 3, **hp), create_weighting(name, 3, **hp)
    _steps(mixed, range(2), dtype=torch.float32)
    _steps(plain, range(2))
    for a, b in zip(_steps(mixed, range(2, 4)), _steps(plain, range(2, 4)), strict=True):
        assert a.dtype == F64
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_present_tasks_without_weight_mass(name: str) -> None:
    """The present tasks' weights are all 0 (the simplex projection put the whole mass on a
    task that is now absent): the direction's convex weights are 0 rather than ``0 / 0``, and
    their update is skipped (a face of mass 0 has no projection). Rejects ``lam / mass`` for
    ``mass >= 0`` (NaN), a missing ``else`` branch, and ``>= 0`` / ``or`` in the update's
    guard (``project_simplex`` refuses radius 0)."""
    m = create_weighting(name, 3)
    _steps(m, range(1))  # every task seen
    state = "lambd" if name == "modo" else "w"
    getattr(m, state).copy_(_t([1.0, 0.0, 0.0]))
    d, w = m.aggregate(B[1] * _t([0.0, 1.0, 1.0])[:, None], _t(LOSSES[1]), _mask(0, 1, 1))
    assert torch.isfinite(d).all() and torch.isfinite(w).all()
    if name == "modo":  # d = w^T G with w = 0
        assert torch.equal(w, torch.zeros(3, dtype=F64))
        assert torch.equal(d, torch.zeros(4, dtype=F64))
    else:  # only the average-gradient part: (0 + lamda / K) / (1 + lamda), K = 2 present
        torch.testing.assert_close(w, _t([0.0, 0.15 / 1.3, 0.15 / 1.3]))
    torch.testing.assert_close(getattr(m, state), _t([1.0, 0.0, 0.0]), rtol=0, atol=0)


# -------------------------------------------------------------------------------------- STCH
def _stch_grad(losses: list[float], nadir: list[float], mu: float, eps: float) -> Tensor:
    """The gradient of STCH's objective ``K mu log sum_t exp(log(L_t / z_t + eps) / mu)``
    (Lin et al. 2024, Eq. 7 on the log-normalised losses; LibMTL ``STCH``) with respect to
    the losses, by autograd."""
    l_ = torch.tensor(losses, dtype=F64, requires_grad=True)
    logs = torch.log(l_ / _t(nadir) + eps)
    (len(losses) * mu * torch.logsumexp(logs / mu, 0)).backward()
    assert l_.grad is not None
    return l_.grad


def test_stch_with_a_large_eps_is_the_objectives_gradient() -> None:
    """``eps = 0.25`` (the default 1e-20 hides where eps enters): warm-up weights are the
    gradient of ``sum log(L_t + eps)``, ``1 / (L_t + eps)``; after the warm-up the gradient of
    the smooth Tchebycheff objective with ``eps`` inside the log of ``L_t / z_t``, with a
    nadir point away from 1. Rejects ``L - eps``, ``L / z - eps`` and ``eps / z`` for
    ``eps * z``."""
    eps, mu = 0.25, 0.5
    m = create_weighting("stch", 3, mu=mu, warmup_epoch=0, eps=eps)
    losses = [0.8, 0.3, 1.5]
    w = m.weights(_t(losses), ALL3)
    torch.testing.assert_close(w, 1.0 / (_t(losses) + eps), rtol=1e-14, atol=0)
    nadir = [2.0, 0.5, 4.0]
    m.epoch_end(_t(nadir), ALL3)
    w = m.weights(_t(losses), ALL3)
    torch.testing.assert_close(w, _stch_grad(losses, nadir, mu, eps), rtol=1e-12, atol=0)


def test_stch_float32_losses_get_the_float64_weights_rounded_once() -> None:
    """The weights are computed in float64 whatever the losses' dtype and rounded once at the
    end in the losses' dtype: float32 losses give exactly the float64 weights of the same
    values, cast. Rejects returning the float64 weights uncast. (Not casting the losses to
    float64 first survives: the float64 nadir promotes the Tchebycheff term anyway, and the
    warm-up's ``1 / (L + eps)`` is the same correctly rounded float32 either way.)"""
    m = create_weighting("stch", 3, mu=0.3, warmup_epoch=0)
    m.epoch_end(_t([1.3, 0.7, 2.9]), ALL3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        l32 = torch.rand(3, generator=gen) * 3 + 0.05
        w32 = m.weights(l32, ALL3)
        assert w32.dtype == torch.float32
        assert torch.equal(w32, m.weights(l32.to(F64), ALL3).to(torch.float32))


def test_stch_nadir_needs_a_positive_mean_loss() -> None:
    """A task whose mean loss in the nadir epoch is exactly 0 gets no nadir (``L / 0``); it is
    recorded at the first later epoch with a positive mean. Rejects ``mean >= 0``."""
    m = create_weighting("stch", 2, warmup_epoch=0)
    m.epoch_end(_t([0.5, 0.0]), _mask(1, 1))
    torch.testing.assert_close(m.nadir[0], torch.tensor(0.5, dtype=F64))  # type: ignore[index]
    assert torch.isnan(m.nadir[1])  # type: ignore[index]
    m.epoch_end(_t([0.4, 0.2]), _mask(1, 1))
    torch.testing.assert_close(m.nadir, _t([0.5, 0.2]))  # type: ignore[attr-defined]


def test_stch_rejects_bad_hyperparameters() -> None:
    """``mu = 0`` divides by zero; a negative warm-up epoch never ends. Rejects ``mu >= 0``
    and the texts replaced."""
    with pytest.raises(ValueError, match=r"^stch mu must be > 0, got 0\.0$"):
        create_weighting("stch", 2, mu=0.0)
    with pytest.raises(ValueError, match=r"^stch warmup_epoch must be >= 0, got -1$"):
        create_weighting("stch", 2, warmup_epoch=-1)


# ----------------------------------------------------------------------- hyperparameter checks
@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("sdmgrad", {"lamda": -0.1}, {"lamda": 0.0}),  # lamda = 0: stochastic MGDA
        ("sdmgrad", {"niter": -1}, {"niter": 0}),
        ("sdmgrad", {"inner_lr": 0.0}, {"inner_lr": 0.5}),
        ("sdmgrad", {"inner_momentum": 1.0}, {"inner_momentum": 0.0}),
        ("modo", {"gamma": -1e-3}, {"gamma": 0.0}),
        ("modo", {"rho": -0.1}, {"rho": 0.0}),
        ("excess_mtl", {"robust_step_size": 0.0}, {"robust_step_size": 1e-6}),
        ("fairgrad", {"alpha": 0.0}, {"alpha": 1e-3}),
        ("moco", {"beta": 0.0}, {"beta": 1e-6}),
        ("moco", {"gamma": -0.1}, {"gamma": 0.0}),
        ("moco", {"rho": -0.1}, {"rho": 0.0}),
        ("stch", {"mu": 0.0}, {"mu": 1e-6}),
        ("config", {"rtol": -1e-3}, {"rtol": 0.0}),
        ("config", {"rtol": -1.0}, {"rtol": 0.5}),
    ],
)
def test_each_hyperparameter_bound_alone(
    name: str, bad: dict[str, float], good: dict[str, float]
) -> None:
    """Each bound checked on its own, at the boundary: the first value (every other argument
    at its default) is refused with the method's message, the second (the closest allowed
    value) accepted. Rejects ``and`` for ``or`` between the checks, ``<=`` for ``<`` (and
    the reverse) and a moved bound."""
    with pytest.raises(ValueError, match=rf"^{name} .*{re.escape(str(next(iter(bad.values()))))}"):
        create_weighting(name, 3, **bad)
    m = create_weighting(name, 3, **good)
    ((key, value),) = good.items()
    assert getattr(m, key) == value


# ----------------------------------------------------------------------------------- SDMGrad
def test_sdmgrad_partial_update_solves_the_normalised_problem() -> None:
    """Task 2 absent at the second step: the inner problem runs on the present tasks'
    weights divided by their mass ``m`` and the result is multiplied back by ``m``
    (docstring). With one small inner step (``niter = 1``, ``inner_lr = 0.05``: the start
    point matters) the expected value is the reference's single projected-SGD step by hand:
    ``m * Proj(w / m - lr (A w / m + lamda mean_j A[:, j]))``, ``A = G_1 G_2^T / s^2``.
    Rejects ``w * m`` for ``w / m``."""
    m = create_weighting("sdmgrad", 3, niter=1, inner_lr=0.05)
    m.w.copy_(_t([0.5, 0.3, 0.2]))  # type: ignore[operator]
    m.aggregate(B[0], _t(LOSSES[0]), ALL3)  # records B[0]; w unchanged (first step)
    g2 = B[1] * _t([1.0, 1.0, 0.0])[:, None]
    m.aggregate(g2, _t(LOSSES[1]), _mask(1, 1, 0))
    gg = B[0][:2] @ B[1][:2].T  # [2, 2] xi xi'^T of tasks 0, 1
    s = gg.diagonal().clamp_min(0).sqrt().mean()
    a = gg / s**2
    mass = 0.8
    w0 = _t([0.5, 0.3]) / mass
    v = w0 - 0.05 * (a @ w0 + 0.3 * a.mean(1))
    # projection onto the simplex of two coordinates: both stay positive here
    assert float((v - (v.sum() - 1) / 2).min()) > 0
    expected = mass * (v - (v.sum() - 1) / 2)
    torch.testing.assert_close(m.w, torch.cat([expected, _t([0.2])]), rtol=1e-12, atol=1e-14)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- ExcessMTL
def test_excess_mtl_baseline_is_the_first_nonzero_risk() -> None:
    """Task 1's gradient is exactly 0 at its first step (risk 0): its baseline is taken at
    its next step, not 0 (``risk / 0`` would make its step infinite). Rejects ``risk >= 0``
    for ``risk > 0``."""
    m = create_weighting("excess_mtl", 2)
    both = _mask(1, 1)
    g0 = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64)
    m.aggregate(g0, torch.ones(2, dtype=F64), both)
    assert torch.isnan(m.initial_risk[1])  # type: ignore[index]
    g1 = torch.tensor([[0.5, 1.0], [3.0, -1.0]], dtype=F64)
    m.aggregate(g1, torch.ones(2, dtype=F64), both)
    # E_1 = sum g^2 / sqrt(g^2 + eps) (its AdaGrad sum holds this step only) = sum |g|
    torch.testing.assert_close(m.initial_risk[1], torch.tensor(4.0, dtype=F64), rtol=1e-6, atol=0)  # type: ignore[index]
    _, w = m.aggregate(g1, torch.ones(2, dtype=F64), both)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------- FairGrad
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_one_task(alpha: float) -> None:
    """One present task: ``m w = w^(-1/alpha)`` gives ``w = m^(-alpha / (alpha + 1))``
    (Ban & Ji's equation with K = 1). Rejects treating one live task like none."""
    g = torch.tensor([[3.0, 4.0]], dtype=F64)  # m = 25
    _, w = create_weighting("fairgrad", 1, alpha=alpha).aggregate(
        g, torch.ones(1, dtype=F64), torch.ones(1, dtype=torch.bool)
    )
    torch.testing.assert_close(w, _t([25.0 ** (-alpha / (alpha + 1))]), rtol=1e-7, atol=0)


def test_fairgrad_all_gradients_zero() -> None:
    """Every present gradient is 0: no equation to solve; weights 0 (any weights give d = 0)."""
    d, w = create_weighting("fairgrad", 3).aggregate(torch.zeros(3, 4, dtype=F64),
                                                    torch.ones(3, dtype=F64), ALL3)  # fmt: skip
    assert torch.equal(w, torch.zeros(3, dtype=F64)) and torch.equal(d, torch.zeros(4, dtype=F64))


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
def test_fairgrad_zero_gradient_threshold_is_relative(scale: float) -> None:
    """Whether a task counts as having a zero gradient is decided relative to the largest
    squared norm (``1e-20`` of it), at any gradient scale: a task ``1e-9`` times the others'
    norm (squared ratio 1e-18) is solved for, one ``1e-11`` times (1e-22) gets weight 0.
    Rejects an absolute threshold (``1e-20 / max`` or a floor at 1)."""
    for ratio, live in ((1e-9, True), (1e-11, False)):
        g = B[0].clone() * scale
        g[1] *= ratio
        _, w = create_weighting("fairgrad", 3).aggregate(g, torch.ones(3, dtype=F64), ALL3)
        assert torch.isfinite(w).all()
        assert (float(w[1]) > 0) == live, (ratio, w)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_pareto_stationary_weights_stay_nonnegative(alpha: float) -> None:
    """Two opposite gradients (Pareto-stationary: ``G G^T w = w^(-1/alpha)`` has no positive
    solution): the least-squares compromise keeps ``w >= 0`` (the bounds of the authors'
    ``least_squares`` call) and finite. (Dropping the bounds survives here: the unbounded
    iteration does not leave the positive orthant on this case either.)"""
    g = torch.tensor([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]], dtype=F64)
    _, w = create_weighting("fairgrad", 2, alpha=alpha).aggregate(
        g, torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.bool)
    )
    assert torch.isfinite(w).all() and bool((w >= 0).all()), w


# ------------------------------------------------------------------------------------ ConFIG
def test_config_zero_gradient_row_is_left_out() -> None:
    """A present task with an exactly zero gradient: ``pinv(U)`` of ``U`` with a zero row is
    ``pinv`` of the other rows padded with a zero column, so ConFIG's direction is that of
    the other tasks and the zero row's weight is 0 (TorchJD: ``pinv`` of the unit-normalised
    matrix, whose zero rows stay zero). Rejects ``1 / ||g||`` applied to zero rows."""
    g = B[2].clone()
    g[1] = 0.0
    d, w = create_weighting("config", 3).aggregate(g, torch.ones(3, dtype=F64), ALL3)
    d2, w2 = create_weighting("config", 2).aggregate(
        g[[0, 2]], torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.bool)
    )
    assert float(w[1]) == 0.0
    torch.testing.assert_close(d, d2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w[[0, 2]], w2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["config", "dualproj"])
def test_preference_of_the_wrong_length(name: str) -> None:
    """One preference value per task; the message says how many were expected."""
    with pytest.raises(ValueError, match=rf"^{name} pref: expected 3 values, got 2$"):
        create_weighting(name, 3, pref=[1.0, 2.0])


# -------------------------------------------------------------------------------------- MoCo
def test_moco_one_present_task_and_none() -> None:
    """One present task: ``lambda`` over it is ``softmax`` of one value, 1, and ``d = y_t``
    (after one step ``y_t = beta g~_t``, ``||g~_t|| = L_t``). No present task: ``d = 0``,
    all weights 0. Rejects the early return taken for one task instead of none, and a wrong
    size of the zero direction."""
    m = create_weighting("moco", 3)
    g = B[0] * _t([0.0, 1.0, 0.0])[:, None]
    d, w = m.aggregate(g, _t([0.0, 2.0, 0.0]), _mask(0, 1, 0))
    g1 = B[0][1]
    torch.testing.assert_close(d, 0.5 * 2.0 * g1 / (g1.norm() + 1e-8), rtol=1e-14, atol=0)
    assert torch.equal(w, _t([0.0, 1.0, 0.0]))
    d, w = m.aggregate(torch.zeros(3, 4, dtype=F64), torch.zeros(3, dtype=F64), _mask(0, 0, 0))
    assert torch.equal(d, torch.zeros(4, dtype=F64)) and torch.equal(w, torch.zeros(3, dtype=F64))


def test_moco_rho_regularises_the_lambda_step_in_float64() -> None:
    """One step with ``rho = 0.1`` (not a float32 number) from a non-uniform ``lambda_0``
    (with a uniform one ``rho lambda_0`` shifts every logit equally and the softmax hides
    it): ``lambda = softmax(lambda_0 - gamma (Y Y^T + rho I) lambda_0)`` with ``Y = beta G~``
    (``y_0 = 0``, ``beta_1 = beta``), LibMTL ``MoCo``'s update, by hand in float64. Rejects
    ``rho I`` built in float32."""
    gamma, rho = 1.0, 0.1
    m = create_weighting("moco", 3, gamma=gamma, rho=rho)
    lam0 = _t([0.6, 0.3, 0.1])
    m.lambd.copy_(lam0)  # type: ignore[operator]
    loss = _t(LOSSES[0])
    _, w = m.aggregate(B[0], loss, ALL3)
    y = 0.5 * B[0] / (B[0].norm(dim=1, keepdim=True) + 1e-8) * loss[:, None]
    expected = torch.softmax(lam0 - gamma * ((y @ y.T + rho * torch.eye(3, dtype=F64)) @ lam0), 0)
    torch.testing.assert_close(w, expected, rtol=1e-15, atol=1e-16)


# ------------------------------------------------------------------------------ state dtypes
@pytest.mark.parametrize(
    ("name", "dtypes"),
    [
        ("famo", {"logits": F64, "exp_avg": F64, "exp_avg_sq": F64, "adam_steps": F64,
                  "prev_losses": F64, "prev_steps": F64, "steps_seen": F64, "pending": F64,
                  "pending_steps": F64}),
        ("moco", {"lambd": F64, "task_steps": F64, "step": F64}),
        ("modo", {"lambd": F64, "seen": torch.bool}),
        ("sdmgrad", {"w": F64, "seen": torch.bool}),
        ("stch", {"epochs": torch.int64, "nadir": F64}),
    ],
)  # fmt: skip
def test_state_buffers_keep_their_declared_dtypes(
    name: str, dtypes: dict[str, torch.dtype]
) -> None:
    """The checkpointed state is float64 (Adam moments, weights, step counts: exact integers
    up to 2^53, float32 stops at 2^24), step counters of STCH int64, masks bool, whatever
    the default dtype. Rejects a buffer created without its dtype (float32)."""
    m = create_weighting(name, 3)
    assert {k: v.dtype for k, v in m.state_dict().items() if isinstance(v, Tensor)} == dtypes


# ------------------------------------------------------------------------------------ ConFIG
def _config_reference(g: Tensor, rtol: float, pref: Tensor) -> Tensor:
    """TorchJD ``ConFIG``: ``x = pinv(U, rtol) p`` on the unit rows ``U``,
    ``d = (sum_i g_i . x / ||x||) x / ||x||``."""
    u = g / g.norm(dim=1, keepdim=True)
    x = torch.linalg.pinv(u, rtol=rtol) @ pref
    unit = x / x.norm()
    return (g @ unit).sum() * unit


def test_config_explicit_rtol_drops_the_small_singular_value() -> None:
    """Two unit gradients 0.1418 rad apart (``cos = 0.99``) and a third orthogonal one: the
    singular values of ``U`` are ``sqrt(1.99), 1, 0.1``. With ``rtol = 0.1`` the cut-off is
    ``0.1 * sqrt(1.99) = 0.141`` and 0.1 is dropped, as ``torch.linalg.pinv(U, rtol=0.1)``
    does; the default ``rtol`` keeps it (preference ``[1, 3, 1]``: with equal preferences
    the dropped direction carries no weight). Rejects ignoring ``rtol``, ``rtol / max``, a
    floor of 1 on the singular values and a dropped eigenvalue kept with factor 1."""
    g = torch.tensor([[2.0, 0.0, 0.0], [0.99, (1 - 0.99**2) ** 0.5, 0.0], [0.0, 0.0, 3.0]],
                     dtype=F64)  # fmt: skip
    pref = _t([1.0, 3.0, 1.0])
    for rtol in (0.1, None):
        d, _ = create_weighting("config", 3, pref=pref.tolist(), rtol=rtol).aggregate(
            g, torch.ones(3, dtype=F64), ALL3
        )
        ref = _config_reference(g, 0.1 if rtol else 3 * torch.finfo(F64).eps, pref)
        torch.testing.assert_close(d, ref, rtol=1e-10, atol=1e-12, msg=str(rtol))
    assert not torch.allclose(_config_reference(g, 0.1, pref), _config_reference(g, 1e-15, pref))


def test_dualproj_integer_preference() -> None:
    """A preference given as integers is the same preference as floats."""
    g = B[3]
    results = [
        create_weighting("dualproj", 3, pref=pref).aggregate(g, torch.ones(3, dtype=F64), ALL3)
        for pref in ([1, 2, 1], [1.0, 2.0, 1.0])
    ]
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", [n for n in list_weightings() if get_weighting_class(n).level == "gradient"]
)
def test_no_present_task_gives_a_zero_direction(name: str) -> None:
    """``aggregate`` with no task present (reachable under DDP, where ``multitask_backward``
    does not return early): a zero direction of the gradients' width and zero weights, with
    no method called on an empty matrix. Rejects a wrong size of the zero direction."""
    d, w = create_weighting(name, 3).aggregate(
        torch.zeros(3, 5, dtype=F64), torch.zeros(3, dtype=F64), _mask(0, 0, 0)
    )
    assert torch.equal(d, torch.zeros(5, dtype=F64)) and torch.equal(w, torch.zeros(3, dtype=F64))
