"""Known answers of the methods the original suite left untested, and multi-step runs of the
stateful ones (FAMO, DWA, GradVac, GradNorm, Nash-MTL, DB-MTL) with a task that is absent for
several steps and returns. Each expected number says where it comes from."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.weighting import create_weighting

F64 = torch.float64


def _mask(*bits: int) -> torch.Tensor:
    return torch.tensor([bool(b) for b in bits])


# ------------------------------------------------------------------------------------- FAMO
def test_famo_matches_the_reference_adam_update_over_steps() -> None:
    """FAMO's reference code (Liu et al. 2023, ``FAMO.update``): ``delta = log L_prev - log L``,
    the logits' gradient is the softmax Jacobian^T delta, applied by ``torch.optim.Adam(lr,
    weight_decay=gamma)``. Reproduced here with torch's Adam over 6 steps of two tasks."""
    losses = [(1.0, 1.0), (0.5, 0.9), (0.45, 0.7), (0.4, 0.68), (0.2, 0.6), (0.19, 0.5)]
    m = create_weighting("famo", 2, lr=0.05, gamma=0.01)
    logits = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05, weight_decay=0.01)
    prev = None
    for pair in losses:
        cur = torch.tensor(pair, dtype=F64)
        m.step_end(cur, _mask(1, 1))
        if prev is not None:
            delta = prev.log() - cur.log()
            z = torch.softmax(logits.detach(), 0)
            logits.grad = z * (delta - (z * delta).sum())
            opt.step()
        prev = cur
    torch.testing.assert_close(m.logits, logits.detach())  # type: ignore[attr-defined]
    # the loss weights: w_t = z_t / (c L_t), c = sum_t z_t / L_t (FAMO's objective gradient)
    z = torch.softmax(logits.detach(), 0)
    cur = torch.tensor([2.0, 0.5], dtype=F64)
    torch.testing.assert_close(m.weights(cur, _mask(1, 1)), z / ((z / cur).sum() * cur))


def test_famo_sparse_decrease_spread_over_its_steps_matches_the_reference_adam() -> None:
    """Task 0 labelled in every step, task 1 at steps 0, 3 and 4 only. FAMO's update (softmax
    Jacobian^T delta, ``torch.optim.Adam(lr, weight_decay=gamma)``) with task 1's ``delta``
    its log-loss decrease spread evenly over the steps it took, fed while task 1 is absent:
    step 3 feeds a third of the 3-step decrease ``D``; at step 4 the queue holds the remaining
    ``2D/3`` over 2 steps plus the 1-step decrease ``D'``, fed as ``(2D/3 + D') / 3`` at steps
    4, 5 and 6; step 7 has no rate for task 1 (and one task alone: no update). Steps 1-2 have
    task 0 only: no update either. The rates are written out here, not computed by the
    method."""
    l0 = [1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4]
    l1 = {0: 2.0, 3: 1.0, 4: 0.9}
    d, d1 = math.log(2.0 / 1.0), math.log(1.0 / 0.9)
    q = (2 * d / 3 + d1) / 3
    rate1 = {3: d / 3, 4: q, 5: q, 6: q}
    m = create_weighting("famo", 2, lr=0.05, gamma=0.01)
    logits = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05, weight_decay=0.01)
    for s, a in enumerate(l0):
        m.step_end(torch.tensor([a, l1.get(s, 9.0)], dtype=F64), _mask(1, s in l1))
        if s in rate1:
            delta = torch.tensor([math.log(l0[s - 1] / a), rate1[s]], dtype=F64)
            z = torch.softmax(logits.detach(), 0)
            logits.grad = z * (delta - (z * delta).sum())
            opt.step()
        torch.testing.assert_close(m.logits, logits.detach(), msg=f"step {s}")  # type: ignore[attr-defined]
    # the whole measured decrease of task 1 (log 2/0.9 = sum of rate1) was fed, once: empty queue
    assert float(m.pending_steps[1]) == 0.0  # type: ignore[index]
    assert abs(float(m.pending[1])) < 1e-12  # type: ignore[index]


def test_famo_absent_task_state_frozen_then_per_step_rate() -> None:
    """Task 2 absent for steps 1-3 (of 0-4): its logit, moments and reference stay frozen; on
    its return its log-loss decrease since step 0 counts per step (divided by 4)."""
    m = create_weighting("famo", 3, lr=0.1)
    m.step_end(torch.tensor([1.0, 1.0, 1.0], dtype=F64), _mask(1, 1, 1))
    for s in range(1, 4):
        before = {k: v.clone() for k, v in m.state_dict().items()}
        m.step_end(torch.tensor([0.9**s, 0.8**s, 5.0], dtype=F64), _mask(1, 1, 0))
        for k in ("exp_avg", "exp_avg_sq", "adam_steps", "prev_losses", "prev_steps"):
            assert m.state_dict()[k][2] == before[k][2] or (
                math.isnan(float(before[k][2])) and math.isnan(float(m.state_dict()[k][2]))
            ), k
        assert float(m.logits[2]) == 0.0  # type: ignore[attr-defined]
    m.step_end(torch.tensor([0.9**4, 0.8**4, 0.7**4], dtype=F64), _mask(1, 1, 1))
    # at step 4 the deltas per step are (log 1/0.9, log 1/0.8, log 1/0.7): task 2 is fastest,
    # its first Adam step has magnitude lr: its logit goes down by exactly 0.1
    torch.testing.assert_close(m.logits[2], torch.tensor(-0.1, dtype=F64))  # type: ignore[index]
    assert float(m.adam_steps[2]) == 1.0  # type: ignore[index]


def test_famo_update_with_min_losses_and_a_loss_at_its_minimum_matches_the_reference() -> None:
    """FAMO's reference ``FAMO.update``: ``delta = log(L_prev - min + eps) - log(L - min +
    eps)`` (``min_losses`` and ``eps`` inside the log), then the softmax Jacobian^T delta with
    ``torch.optim.Adam(lr, weight_decay=gamma)``. min_losses = 0.5; at the 3rd step task 1's
    loss reaches its minimum: its log is log(eps), a large but finite decrease."""
    mn, eps = 0.5, 1e-8
    losses = [(1.5, 2.5), (1.0, 1.5), (0.9, 0.5), (0.7, 0.6)]
    m = create_weighting("famo", 2, lr=0.05, gamma=0.01, min_losses=mn)
    logits = torch.zeros(2, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05, weight_decay=0.01)
    prev = None
    for pair in losses:
        cur = torch.tensor(pair, dtype=F64)
        m.step_end(cur, _mask(1, 1))
        if prev is not None:
            delta = (prev - mn + eps).log() - (cur - mn + eps).log()
            z = torch.softmax(logits.detach(), 0)
            logits.grad = z * (delta - (z * delta).sum())
            opt.step()
        prev = cur
        torch.testing.assert_close(m.logits, logits.detach())  # type: ignore[attr-defined]


def test_famo_loss_weights_known_answers() -> None:
    """FAMO's loss weights (Liu et al. 2023, reference ``FAMO.backward``): ``w_t = z_t / (c
    (L_t - min_t + eps))``, ``c = sum_j z_j / (L_j - min_j + eps)``; with equal logits
    (``z = 1/2``) that is ``(1 / gap_t) / sum_j (1 / gap_j)``, written out per case."""
    m = create_weighting("famo", 2)
    both = _mask(1, 1)
    # large losses (c = 1/15 < 1): gaps 10, 30 -> (1/10, 1/30) / (4/30) = (3/4, 1/4)
    torch.testing.assert_close(m.weights(torch.tensor([10.0, 30.0], dtype=F64), both),
                               torch.tensor([0.75, 0.25], dtype=F64))
    # a loss at its minimum: gap eps = 1e-8 -> that task takes (almost) all the weight
    torch.testing.assert_close(m.weights(torch.tensor([0.0, 1.0], dtype=F64), both),
                               torch.tensor([1.0, 0.0], dtype=F64), atol=1e-7, rtol=0.0)
    # no task present: zero weights (not NaN)
    torch.testing.assert_close(m.weights(torch.tensor([1.0, 2.0], dtype=F64), _mask(0, 0)),
                               torch.zeros(2, dtype=F64))
    # min_losses = 1: gaps (1, 2) -> (1, 1/2) / (3/2) = (2/3, 1/3); a loss below its minimum is
    # clamped to gap eps: (0.5, 2) -> (1, 0)
    m1 = create_weighting("famo", 2, min_losses=1.0)
    torch.testing.assert_close(m1.weights(torch.tensor([2.0, 3.0], dtype=F64), both),
                               torch.tensor([2 / 3, 1 / 3], dtype=F64))
    torch.testing.assert_close(m1.weights(torch.tensor([0.5, 2.0], dtype=F64), both),
                               torch.tensor([1.0, 0.0], dtype=F64), atol=1e-7, rtol=0.0)


# -------------------------------------------------------------------------------------- DWA
def test_dwa_absent_epoch_keeps_history_and_task_returns() -> None:
    """Liu et al. 2019, Eq. 7: w = K softmax(r / T), r_t = L_t(e-1) / L_t(e-2). Task 1 is not
    labelled in epoch 2: its history stays (1.0, 0.8) and it returns with r = 0.8."""
    m = create_weighting("dwa", 2, temperature=2.0)
    m.epoch_end(torch.tensor([1.0, 1.0]), _mask(1, 1))
    m.epoch_end(torch.tensor([0.5, 0.8]), _mask(1, 1))
    m.epoch_end(torch.tensor([0.25, 123.0]), _mask(1, 0))  # task 1 absent all epoch
    torch.testing.assert_close(m.history, torch.tensor([[0.25, 0.8], [0.5, 1.0]], dtype=F64))  # type: ignore[attr-defined]
    e = torch.exp(torch.tensor([0.5 / 2, 0.8 / 2]))
    torch.testing.assert_close(m.weights(torch.ones(2), _mask(1, 1)), 2 * e / e.sum())
    torch.testing.assert_close(m.weights(torch.ones(2), _mask(1, 0)), torch.tensor([1.0, 0.0]))


# ----------------------------------------------------------------------------------- GradVac
def test_gradvac_two_steps_and_an_absent_task() -> None:
    """Wang et al. 2021, Eq. 5 and Alg. 1. g1 = (1, 0), g2 = (-1, 1): phi = -1/sqrt(2) below
    the target 0, so g1' = g1 + ||g1|| (-phi) / ||g2|| g2 = g1 + g2 / 2, g2' = g2 + g1 (as
    PCGrad at target 0): d = (0.5, 1.5), weights (2, 1.5). The targets follow the EMA
    rho <- (1 - beta) rho + beta phi: -0.01/sqrt(2) after one step, then
    0.99 * that + 0.01 phi' with phi' the second step's cosine (a 3rd task, absent,
    keeps its targets at 0)."""
    m = create_weighting("gradvac", 3, beta=0.01)
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]], dtype=F64)
    ones = torch.ones(3, dtype=F64)
    torch.manual_seed(0)
    d, w = m.aggregate(g, ones, _mask(1, 1, 0))
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5], dtype=F64))
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5, 0.0], dtype=F64))
    phi = -1 / math.sqrt(2)
    rho = m.rho  # type: ignore[attr-defined]
    torch.testing.assert_close(rho[0, 1], torch.tensor(0.01 * phi, dtype=F64))
    torch.testing.assert_close(rho[1, 0], torch.tensor(0.01 * phi, dtype=F64))
    g2 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64)  # cos = 1/sqrt(2)
    m.aggregate(g2, ones, _mask(1, 1, 0))  # above the target: no change, target moves up
    expected = 0.99 * 0.01 * phi + 0.01 / math.sqrt(2)
    torch.testing.assert_close(rho[0, 1], torch.tensor(expected, dtype=F64))
    assert float(rho[2].abs().sum() + rho[:, 2].abs().sum()) == 0.0


def test_gradvac_moves_the_cosine_to_a_nonzero_target() -> None:
    """Wang et al. 2021, Eq. 5: below its target ``t`` the cosine is raised to it by
    ``g_i' = g_i + ||g_i|| (t sqrt(1 - phi^2) - phi sqrt(1 - t^2)) / (||g_j|| sqrt(1 - t^2))
    g_j``. beta = 1 makes the target the last measured cosine: step 1 at 45 degrees sets
    t = 1/sqrt(2); step 2 has orthogonal unit gradients (phi = 0): g_i' = g_i + g_j, whose
    cosine with g_j is t again; d = 2 (g1 + g2). Unit gradients at 120 degrees (phi = -1/2)
    instead: the coefficient is (t sqrt(3)/2 + 1/2 t) / t = (1 + sqrt(3)) / 2 (check:
    g1 + (1 + sqrt(3))/2 g2 = (0.317, 1.183) has cosine 1/sqrt(2) with g2)."""
    ones = torch.ones(2, dtype=F64)
    sin120 = math.sqrt(3) / 2
    for g_second, coef in ((torch.eye(2, dtype=F64), 1.0),
                           (torch.tensor([[1.0, 0.0], [-0.5, sin120]], dtype=F64),
                            (1 + math.sqrt(3)) / 2)):
        m = create_weighting("gradvac", 2, beta=1.0)
        m.aggregate(torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64), ones, _mask(1, 1))
        target = torch.tensor([[0.0, 0.5**0.5], [0.5**0.5, 0.0]], dtype=F64)
        torch.testing.assert_close(m.rho, target)  # type: ignore[attr-defined]
        d, w = m.aggregate(g_second, ones, _mask(1, 1))
        torch.testing.assert_close(w, torch.full((2,), 1.0 + coef, dtype=F64))
        torch.testing.assert_close(d, (1.0 + coef) * g_second.sum(0))


def test_gradvac_every_pair_in_any_order_in_float64() -> None:
    """At target 0 GradVac is PCGrad's projection, ``g_i' = g_i - (g_i.g_j / ||g_j||^2) g_j``
    for a conflicting pair. g1 = (1, 0, 0), g2 = (-1, 1, 0) conflict, g3 = (0, 0, 1) is
    orthogonal to both: d = (g1 + g2 / 2) + (g2 + g1) + g3, weights (2, 1.5, 1), whatever the
    random order of the pairs (8 seeds). g1 = (1, 0), g2 = (-1, 3): weights (1 + 1, 1 + 0.1),
    exact in float64 (0.1 is not a float32 number)."""
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    for seed in range(8):
        torch.manual_seed(seed)
        d, w = create_weighting("gradvac", 3).aggregate(g, torch.ones(3, dtype=F64), _mask(1, 1, 1))
        torch.testing.assert_close(w, torch.tensor([2.0, 1.5, 1.0], dtype=F64), msg=f"seed {seed}")
        torch.testing.assert_close(d, torch.tensor([0.5, 1.5, 1.0], dtype=F64))
    g2 = torch.tensor([[1.0, 0.0], [-1.0, 3.0]], dtype=F64)
    _, w2 = create_weighting("gradvac", 2).aggregate(g2, torch.ones(2, dtype=F64), _mask(1, 1))
    torch.testing.assert_close(w2, torch.tensor([2.0, 1.1], dtype=F64), atol=1e-13, rtol=0.0)
    # beta is a rate in [0, 1], both ends included (0: fixed targets, 1: the last cosine)
    for beta in (0.0, 1.0):
        assert create_weighting("gradvac", 2, beta=beta).beta == beta  # type: ignore[attr-defined]
    for beta in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"gradvac beta must be in \[0, 1\], got"):
            create_weighting("gradvac", 2, beta=beta)


# ---------------------------------------------------------------------------------- GradNorm
def test_gradnorm_restoring_force_and_absent_task() -> None:
    """Chen et al. 2018, Eq. 1-3: r_t = (L_t / L_t(0)) / mean_j(L_j / L_j(0)), target
    mean(w n) r^alpha. Equal gradient norms, task 0's loss halved since its first batch:
    r = (2/3, 4/3), targets below / above mean(w n) = 1, so task 0 loses weight and task 1
    gains lr * n / mean n = 0.1 each (sum kept at 2). Task 2 is absent: weight and initial
    loss untouched; its initial loss is recorded when it first appears."""
    m = create_weighting("gradnorm", 3, alpha=1.0, lr=0.1)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)
    m.aggregate(g, torch.tensor([1.0, 1.0, 0.0], dtype=F64), _mask(1, 1, 0))  # L(0) = 1
    _, w = m.aggregate(g, torch.tensor([0.5, 1.0, 0.0], dtype=F64), _mask(1, 1, 0))
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.0], dtype=F64))  # weights used
    torch.testing.assert_close(m.task_weights, torch.tensor([0.9, 1.1, 1.0], dtype=F64))  # type: ignore[attr-defined]
    assert math.isnan(float(m.initial_losses[2]))  # type: ignore[index]
    m.aggregate(
        torch.ones(3, 2, dtype=F64), torch.tensor([0.5, 1.0, 3.0], dtype=F64), _mask(1, 1, 1)
    )
    assert float(m.initial_losses[2]) == 3.0  # type: ignore[index]


# ---------------------------------------------------------------------------------- Nash-MTL
def test_nash_mtl_update_weights_every_reuses_alpha() -> None:
    """``update_weights_every=2`` (Navon et al.'s code): solve at steps 0, 2, ...; in between the
    previous alpha is reused even though the gradients changed. Orthogonal gradients: the
    solution is alpha_t = 1 / ||g_t||."""
    m = create_weighting("nash_mtl", 2, max_norm=0.0, update_weights_every=2)
    ones = torch.ones(2, dtype=F64)
    _, w0 = m.aggregate(torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=F64), ones, _mask(1, 1))
    torch.testing.assert_close(w0, torch.tensor([0.5, 0.25], dtype=F64))
    _, w1 = m.aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64), ones, _mask(1, 1))
    torch.testing.assert_close(w1, w0)
    _, w2 = m.aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64), ones, _mask(1, 1))
    torch.testing.assert_close(w2, ones)


# ------------------------------------------------------------------------------------ DB-MTL
def test_db_mtl_ema_over_steps_with_an_absent_task() -> None:
    """Lin et al. 2023, Alg. 1: h_t <- g~_t + beta / k_t^sigma (h_t - g~_t) with g~_t =
    g_t / L_t and k_t the steps task t was labelled; d = sum_t (max_j ||h_j|| / ||h_t||) h_t.
    Task 1 is absent at step 2: its EMA and count stay, and at step 3 its k is 2."""
    m = create_weighting("db_mtl", 2, beta=0.9, beta_sigma=0.5)
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    losses = torch.tensor([2.0, 0.5], dtype=F64)  # g~ = (1, 0), (0, 2)
    m.aggregate(g, losses, _mask(1, 1))  # k = 1: h = 0.1 g~
    m.aggregate(g * torch.tensor([[1.0], [0.0]], dtype=F64), losses, _mask(1, 0))
    d, _ = m.aggregate(g, losses, _mask(1, 1))
    r2, r3 = 0.9 / math.sqrt(2), 0.9 / math.sqrt(3)
    h0 = 1 + r2 * (0.1 - 1)  # task 0 at k = 2: g~ + r2 (0.1 g~ - g~), first coordinate
    h0 = 1 + r3 * (h0 - 1)  # k = 3
    h1 = 2 + r2 * (0.2 - 2)  # task 1 at k = 2 (absent at step 2)
    top = max(h0, h1)
    torch.testing.assert_close(d, torch.tensor([top, top], dtype=F64))
    torch.testing.assert_close(m.steps, torch.tensor([3.0, 2.0], dtype=F64))  # type: ignore[attr-defined]


def test_db_mtl_weights_head_scales_edge_cases_and_state() -> None:
    """Lin et al. 2023: the logged weight of task t is (max_j ||h_j|| / ||h_t||) / (L_t +
    eps) and the heads get 1 / (L_t + eps) (the log-loss gradient). By hand, first step
    (h = 0.1 g / L): g = (4, 0), (0, 1), L = (2, 0.5): ||h|| = (0.2, 0.2), weights (1/2, 2).
    A zero gradient gets weight 0; a zero loss a positive 1 / eps; no task present returns a
    zero direction of the gradient's size; the EMA follows the gradients' dtype; the state
    round-trips before the first step (no buffer) and after."""
    g = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=F64)
    m = create_weighting("db_mtl", 2)
    d, w = m.aggregate(g, torch.tensor([2.0, 0.5], dtype=F64), _mask(1, 1))
    torch.testing.assert_close(w, torch.tensor([0.5, 2.0], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([0.2, 0.2], dtype=F64))
    torch.testing.assert_close(m.head_scales(torch.tensor([2.0, 0.0]), _mask(1, 1)),  # type: ignore[operator]
                               torch.tensor([0.5, 1e8]))
    # float32 losses, float64 gradients: 1 / (L + eps) at float64 precision (unit gradients:
    # ||h_t|| = 0.1 / (L_t + eps), so every weight is max_j 1 / (L_j + eps))
    loss32 = torch.tensor([0.3, 0.7], dtype=torch.float32)
    _, w32 = create_weighting("db_mtl", 2).aggregate(torch.eye(2, dtype=F64), loss32, _mask(1, 1))
    top = 1.0 / (float(loss32[0]) + 1e-8)
    torch.testing.assert_close(w32, torch.tensor([top, top], dtype=F64), rtol=1e-13, atol=0.0)
    # a zero gradient: weight 0 (not max / 1e-30); a zero loss: h and its weight stay positive
    m0 = create_weighting("db_mtl", 2)
    d0, w0 = m0.aggregate(torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=F64),
                          torch.tensor([0.0, 1.0], dtype=F64), _mask(1, 1))
    torch.testing.assert_close(w0, torch.tensor([1e8, 0.0], dtype=F64))
    torch.testing.assert_close(d0, torch.tensor([0.1 * 3.0 / 1e-8, 0.0], dtype=F64))
    # no task present: a zero direction of size P
    dn, wn = create_weighting("db_mtl", 2).aggregate(torch.ones(2, 5, dtype=F64),
                                                     torch.ones(2, dtype=F64), _mask(0, 0))
    assert dn.shape == (5,) and not dn.any() and not wn.any()
    # the gradients' dtype changes (model.double()): the EMA follows it
    md = create_weighting("db_mtl", 2)
    md.aggregate(g.float(), torch.ones(2), _mask(1, 1))
    dd, _ = md.aggregate(g, torch.ones(2, dtype=F64), _mask(1, 1))
    assert dd.dtype == F64
    # state before the first step (no buffer) and after
    fresh = create_weighting("db_mtl", 2)
    fresh.load_state_dict(create_weighting("db_mtl", 2).state_dict())
    assert fresh.grad_buffer is None  # type: ignore[attr-defined]
    fresh.set_extra_state(None)
    assert fresh.grad_buffer is None  # type: ignore[attr-defined]
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh.grad_buffer, m.grad_buffer)  # type: ignore[attr-defined]
    assert fresh.grad_buffer is not m.grad_buffer  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ RLW and IMTL
def test_rlw_draws_from_the_named_distribution() -> None:
    """Lin et al. 2022: w = softmax(w~), w~ ~ N(0, I) (default) or U(0, 1)."""
    for dist, draw in (("normal", torch.randn), ("uniform", torch.rand)):
        m = create_weighting("rlw", 4, distribution=dist)
        torch.manual_seed(3)
        w = m.weights(torch.ones(4), torch.ones(4, dtype=torch.bool))
        torch.manual_seed(3)
        torch.testing.assert_close(w, torch.softmax(draw(4), 0))
    with pytest.raises(ValueError, match=r"rlw distribution must be normal\|uniform, got 'gauss'"):
        create_weighting("rlw", 2, distribution="gauss")


def test_imtl_l_scales_and_their_gradient() -> None:
    """Liu et al. 2021 (IMTL-L): the loss e^s L - s; its gradient in s is e^s L - 1, and the
    heads get e^s times their gradient. At s = (0, log 2), L = (2, 0.5): grad (1, 0), scales
    (1, 2)."""
    m = create_weighting("imtl", 2, hybrid=True)
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([0.0, math.log(2.0)]))  # type: ignore[operator]
    losses = torch.tensor([2.0, 0.5])
    reg = m.regularization(losses, _mask(1, 1))
    assert reg is not None
    reg.backward()
    torch.testing.assert_close(m.loss_scale.grad, torch.tensor([1.0, 0.0]))  # type: ignore[union-attr]
    torch.testing.assert_close(m.head_scales(losses, _mask(1, 1)), torch.tensor([1.0, 2.0]))


# ------------------------------------------------------------------------- GradDrop, UPGrad
def test_graddrop_leak_keeps_that_fraction_of_the_dropped_gradient() -> None:
    """Chen et al. 2020 (leak): task 0's per-sample gradients (1, -1) on a feature whose
    activations are both positive sum to S_0 = 0, so it is always dropped there; task 1's
    (1, 1) give purity 1 and are always kept. d = leak * g_0 + g_1 = (1.25, 0.75)."""
    m = create_weighting("graddrop", 2, leak=0.25)
    m.set_representation(torch.tensor([[0.5], [2.0]], dtype=F64))  # [B=2, F=1]
    g = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=F64)
    d, w = m.aggregate(g, torch.ones(2, dtype=F64), _mask(1, 1))
    torch.testing.assert_close(d, torch.tensor([1.25, 0.75], dtype=F64))
    torch.testing.assert_close(w, torch.tensor([0.25, 1.0], dtype=F64))


def test_upgrad_projects_each_gradient_not_the_mean() -> None:
    """Quinton & Rey 2024 (UPGrad): g1 = (1, 0), g2 = (-1, 1). Projecting g1 / 2 onto the dual
    cone {x : G x >= 0} gives (0.25, 0.25), g2 / 2 gives (0, 0.5); d = (0.25, 0.75) = 1.0 g1 +
    0.75 g2. (DualProj, projecting the mean (0, 0.5), would return it unchanged.)"""
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    d, w = create_weighting("upgrad", 2).aggregate(g, torch.ones(2, dtype=F64), _mask(1, 1))
    torch.testing.assert_close(d, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.75], dtype=F64))


def test_defaults_are_the_papers() -> None:
    """The hyperparameter defaults of docs/weighting.md (the papers' settings); a changed
    default is a silent change of method."""
    from mtl.weighting import get_weighting_class, hyperparameters

    expected = {
        "famo": {"lr": 0.025, "gamma": 0.001, "min_losses": 0.0, "eps": 1e-8},
        "dwa": {"temperature": 2.0},
        "gradnorm": {"alpha": 1.5, "lr": 0.025, "min_weight": 1e-3},
        "cagrad": {"c": 0.4, "rescale": 1},
        "db_mtl": {"beta": 0.9, "beta_sigma": 0.5, "eps": 1e-8},
        "gradvac": {"beta": 0.01},
        "nash_mtl": {"max_norm": 1.0, "update_weights_every": 1, "optim_niter": 100},
        "mgda": {"normalization": "none", "max_iter": 1000},
        "uncertainty": {"init_log_var": 0.0, "forms": None},
        "rlw": {"distribution": "normal"},
        "graddrop": {"leak": 0.0},
        "imtl": {"hybrid": True},
        "aligned_mtl": {"eps_rank": None},
        "gls": {"eps": 1e-8},
    }
    for name, defaults in expected.items():
        assert hyperparameters(get_weighting_class(name)) == defaults, name
        # and the defaults are the ones in use (not only in the signature)
        m = create_weighting(name, 2)
        for key, value in defaults.items():
            if hasattr(m, key) and value is not None:  # None: resolved at build (forms, eps_rank)
                assert getattr(m, key) == value, (name, key)
