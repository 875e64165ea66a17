"""Property tests (hypothesis) over random gradient sets, in the style of TorchJD's aggregator
tests: permutation equivariance, non-conflict where the paper guarantees it, and invariance of
the weights to a common gradient scale where the paper's weights are scale-invariant."""

from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtl.weighting import create_weighting, get_weighting_class, list_weightings

# the suite runs on 2 shared cores: few examples, no deadline (solver timings vary)
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Deterministic methods whose definition treats the tasks symmetrically. Excluded: pcgrad,
# gradvac (random task order), graddrop, rlw (random draws), static (per-task constants).
SYMMETRIC_GRADIENT = ["aligned_mtl", "cagrad", "db_mtl", "gradnorm", "imtl", "mgda",
                      "nash_mtl", "upgrad", "config", "dualproj", "excess_mtl"]  # fmt: skip
SYMMETRIC_GRADIENT += ["fairgrad", "moco", "modo", "sdmgrad"]  # issue 12 (first step only)
SYMMETRIC_LOSS = ["dwa", "equal", "famo", "gls", "uncertainty", "stch"]
# The paper's weights do not change when every gradient is multiplied by the same factor.
# (nash_mtl's weights scale as 1 / factor by definition: alpha_t (M alpha)_t = 1.)
SCALE_INVARIANT = ["aligned_mtl", "cagrad", "db_mtl", "gradnorm", "graddrop", "gradvac",
                   "imtl", "mgda", "pcgrad", "upgrad", "config", "dualproj"]  # fmt: skip


@st.composite
def gradient_sets(draw: st.DrawFn, min_k: int = 2, max_k: int = 5) -> Tensor:
    """``[K, P]`` float64 gradients, ``P >= K + 2`` (full row rank almost surely: unique
    solutions), entries in [-1, 1], every row of norm >= 0.1."""
    k = draw(st.integers(min_k, max_k))
    p = draw(st.integers(k + 2, k + 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.rand(k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = 2.0 * g - 1.0
    shift = draw(st.floats(-0.5, 0.5))  # from conflicting to aligned gradient sets
    g = g + shift
    norms = g.norm(dim=1, keepdim=True)
    return torch.where(norms < 0.1, g / norms.clamp_min(1e-12) * 0.1, g)


def _aggregate(name: str, g: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    k = g.shape[0]
    m = create_weighting(name, k, **({"max_norm": 0.0} if name == "nash_mtl" else {}))
    if name == "imtl":
        m = create_weighting(name, k, hybrid=False)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nash_mtl's refused steps
        return m.aggregate(g, torch.ones(k, dtype=g.dtype), torch.ones(k, dtype=torch.bool))


def test_the_lists_cover_the_registry() -> None:
    """A new method must be classified here (or deliberately left out)."""
    random_or_asymmetric = {"pcgrad", "gradvac", "graddrop", "rlw", "static"}
    assert set(list_weightings()) == set(SYMMETRIC_GRADIENT) | set(SYMMETRIC_LOSS) | (
        random_or_asymmetric
    )
    assert all(get_weighting_class(n).level == "gradient" for n in SCALE_INVARIANT)


@SETTINGS
@given(g=gradient_sets(), data=st.data())
def test_permutation_equivariance_gradient_level(g: Tensor, data: st.DataObject) -> None:
    perm = torch.tensor(data.draw(st.permutations(list(range(g.shape[0])))))
    for name in SYMMETRIC_GRADIENT:
        d, w = _aggregate(name, g)
        d_p, w_p = _aggregate(name, g[perm])
        tol = 1e-4 if name == "cagrad" else 1e-6  # SLSQP's tolerance
        torch.testing.assert_close(w_p, w[perm], atol=tol, rtol=tol, msg=name)
        torch.testing.assert_close(d_p, d, atol=tol, rtol=tol, msg=name)


@SETTINGS
@given(
    losses=st.lists(st.floats(0.05, 10.0), min_size=2, max_size=5),
    data=st.data(),
)
def test_permutation_equivariance_loss_level(losses: list[float], data: st.DataObject) -> None:
    k = len(losses)
    perm = torch.tensor(data.draw(st.permutations(list(range(k)))))
    hist = torch.tensor(data.draw(st.lists(st.floats(0.1, 5.0), min_size=2 * k, max_size=2 * k)),
                        dtype=torch.float64).view(2, k)  # fmt: skip
    loss_t = torch.tensor(losses, dtype=torch.float64)
    present = torch.ones(k, dtype=torch.bool)
    for name in SYMMETRIC_LOSS:
        a, b = create_weighting(name, k), create_weighting(name, k)
        if name in ("dwa", "famo"):  # some state: one history, permuted for the second copy
            for row in hist:
                a.epoch_end(row, present) if name == "dwa" else a.step_end(row, present)
                b.epoch_end(row[perm], present) if name == "dwa" else b.step_end(row[perm], present)
        w = a.weights(loss_t, present)
        w_p = b.weights(loss_t[perm], present)
        torch.testing.assert_close(w_p.double(), w.double()[perm], msg=name)


@SETTINGS
@given(g=gradient_sets(max_k=6))
def test_non_conflicting_directions(g: Tensor) -> None:
    """MGDA (Sener & Koltun: ``g_t . d >= ||d||^2``), UPGrad (Quinton & Rey: ``G d >= 0``),
    Nash-MTL (``g_t . d = 1 / alpha_t > 0``, or a refused step ``d = 0``)."""
    scale = g.norm(dim=1).max() ** 2
    d, _ = _aggregate("mgda", g)
    assert bool(((g @ d) >= (d @ d) - 1e-7 * scale).all())
    d, _ = _aggregate("upgrad", g)
    assert bool(((g @ d) >= -1e-7 * scale).all())
    d, _ = _aggregate("nash_mtl", g)
    assert bool(((g @ d) >= 0).all()) or bool((d == 0).all())


@SETTINGS
@given(g=gradient_sets(max_k=5), c=st.floats(0.1, 0.9))
def test_cagrad_improves_the_worst_task_over_the_mean(g: Tensor, c: float) -> None:
    """CAGrad's guarantee (Liu et al. 2021, Eq. 3): d maximises min_t g_t . d in the ball
    ||d - g0|| <= c ||g0||, which holds g0, so min_t g_t . d >= min_t g_t . g0 (before the
    1 / (1 + c^2) rescale). In particular it never conflicts where the mean does not."""
    d, _ = _aggregate_c("cagrad", g, c)
    g0 = g.mean(0)
    lhs = float((g @ d).min()) * (1.0 + c * c)
    assert lhs >= float((g @ g0).min()) - 1e-4 * float(g.norm(dim=1).max() ** 2)
    assert float((d * (1 + c * c) - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-6) + 1e-9


def _aggregate_c(name: str, g: Tensor, c: float) -> tuple[Tensor, Tensor]:
    k = g.shape[0]
    m = create_weighting(name, k, c=c)
    return m.aggregate(g, torch.ones(k, dtype=g.dtype), torch.ones(k, dtype=torch.bool))


@SETTINGS
@given(g=gradient_sets(), exponent=st.integers(-4, 4))
def test_weights_invariant_to_a_common_gradient_scale(g: Tensor, exponent: int) -> None:
    factor = 10.0**exponent
    for name in SCALE_INVARIANT:
        _, w = _aggregate(name, g, seed=1)
        _, w_s = _aggregate(name, g * factor, seed=1)
        tol = 1e-4 if name == "cagrad" else 1e-6
        torch.testing.assert_close(w_s, w, atol=tol, rtol=tol, msg=f"{name} x{factor}")


@SETTINGS
@given(g=gradient_sets(max_k=5))
def test_nash_mtl_optimality_or_a_named_refusal(g: Tensor) -> None:
    """Nash-MTL's weights satisfy alpha_t (M alpha)_t = 1 with alpha > 0 (Navon et al. 2022,
    Eq. 2) within 1e-4, or the step is refused with a warning naming it."""
    k = g.shape[0]
    m = create_weighting("nash_mtl", k, max_norm=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d, w = m.aggregate(g, torch.ones(k, dtype=g.dtype), torch.ones(k, dtype=torch.bool))
    if caught:
        assert any("nash_mtl step 0" in str(c.message) for c in caught)
        assert bool((d == 0).all())
    else:
        assert bool((w > 0).all())
        torch.testing.assert_close(w * ((g @ g.T) @ w), torch.ones(k, dtype=g.dtype),
                                   atol=1e-4, rtol=0)  # fmt: skip
