"""CGC, PLE, DSelect-k and LTB: what each paper's mechanism promises, on tiny models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mtl.models import MultiTaskModel, create_architecture
from mtl.models.architectures import CGC, LTB, PLE, DSelectK, DSelectKGate
from mtl.models.architectures.cgc import ExtractionLayer
from mtl.models.architectures.dselect_k import smooth_step

HEADS = {"a": 3, "b": 1, "c": 2}
SMALL: dict[str, Any] = {"channels": (4, 8), "out_features": 16}
# Three stages: with smallcnn's parameter-free stem, LTB then has two live branching layers,
# one of them shared (``shared_logits``); two stages leave only the task-owned last one.
SMALL3: dict[str, Any] = {"channels": (4, 8, 8), "out_features": 16}
# A gradient "reaches" a parameter when it is above this: the losses here are O(1) and real
# gradients O(1e-3..1), while a parameter that cannot affect the output collects rounding
# noise (1e-13..1e-16 for LTB's former dead first layer), which ``grad.any()`` counted as live.
LIVE_GRAD = 1e-6


def _build(
    arch: str, num_features: int = 0, bkw: dict[str, Any] | None = None, **kw: Any
) -> MultiTaskModel:
    return create_architecture(
        arch, "smallcnn", HEADS, 1, num_features=num_features, backbone_kwargs=bkw or SMALL, **kw
    )


def _x(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 1, 12, 12)


def _check_split(model: MultiTaskModel, num_features: int = 0) -> None:
    """Shared parameters: reached by every task's loss and all below ``z``; task ``t``'s:
    reached by its loss only and all above ``z`` (so the representation backend gives no
    parameter its gradient twice)."""
    x = _x()
    f = torch.randn(4, num_features) if num_features else None
    shared = {id(p) for p in model.shared_parameters()}
    own = {t: {id(p) for p in model.task_parameters(t)} for t in HEADS}
    groups = [shared, *own.values()]
    assert sum(map(len, groups)) == len(set().union(*groups))  # disjoint
    assert set().union(*groups) == {id(p) for p in model.parameters()}
    for task in HEADS:
        model.zero_grad(set_to_none=True)
        model(x, f)[task].square().sum().backward()
        grads = [(id(p), p.grad) for p in model.parameters() if p.grad is not None]
        reached = {i for i, g in grads if g.abs().max() > LIVE_GRAD}  # a live gradient
        touched = {i for i, g in grads if g.any()}  # any non-zero gradient at all
        assert shared <= reached, f"{task}'s loss misses a shared parameter"
        others = set().union(*(own[t] for t in HEADS if t != task))
        assert not touched & others, f"{task}'s loss reaches another task's parameter"
        assert own[task] <= reached
    if not model.supports_representation:
        return
    z = model.encode(x, f)
    leaf = z.detach().requires_grad_()
    model.zero_grad(set_to_none=True)
    sum(y.sum() for y in model.decode(leaf).values()).backward()  # type: ignore[union-attr]
    assert {id(p) for p in model.parameters() if p.grad is not None} == set().union(*own.values())
    model.zero_grad(set_to_none=True)
    z.backward(torch.randn_like(z))
    assert {id(p) for p in model.parameters() if p.grad is not None} == shared


# --------------------------------------------------------------------------------- CGC / PLE
def test_cgc_task_experts_get_no_gradient_from_other_tasks() -> None:
    model = _build("cgc", num_task_experts=2, num_shared_experts=3)
    assert isinstance(model, CGC)
    x = _x()
    for i, task in enumerate(HEADS):
        model.zero_grad(set_to_none=True)
        model(x)[task].sum().backward()
        for j, experts in enumerate(model.layer.task_experts):
            assert isinstance(experts, nn.Linear)
            if j == i:
                assert experts.weight.grad is not None and experts.weight.grad.any()
            else:
                assert experts.weight.grad is None, f"{task}'s loss reached task {j}'s experts"
        shared = model.layer.shared_experts.weight.grad
        assert shared is not None and shared.any()
    # task t's gate chooses among m_s + m_t experts, the shared ones first
    assert model.layer.task_gates[0].out_features == 3 + 2  # type: ignore[union-attr]
    _check_split(model, 0)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_ple_parameter_split_and_representation(levels: int) -> None:
    """Level L's task experts/gates, gate_t^(L-1) and the towers are task parameters; the
    lower levels' task experts reach every task through the shared gate."""
    model = _build("ple", num_features=2, num_levels=levels, num_task_experts=2)
    assert isinstance(model, PLE)
    gates = [layer.shared_gate is not None for layer in model.levels]  # type: ignore[union-attr]
    assert gates == [True] * (levels - 1) + [False]
    _check_split(model, 2)
    if levels >= 2:
        own = {id(p) for p in model.task_parameters("b")}
        gate = model._level(levels - 2).task_gates[1]
        assert {id(p) for p in gate.parameters()} <= own


def test_extraction_layer_gates_are_per_sample_distributions_over_experts() -> None:
    """With one-hot experts (expert i outputs e_i) a mix returns its gate row itself: each row
    is a distribution over the experts (sums to 1), and a sample's row does not depend on the
    other samples of the batch (a softmax over the batch dimension would break both)."""
    torch.manual_seed(0)
    m_s, m_t, tasks, width = 2, 3, 2, 8
    layer = ExtractionLayer(5, tasks, m_s, m_t, width, shared_gate=True)
    x = torch.randn(4, 5)
    eye = torch.eye(width)  # expert i's output is e_i
    shared = eye[:m_s].expand(4, m_s, width)
    own = [eye[m_s + i * m_t : m_s + (i + 1) * m_t].expand(4, m_t, width) for i in range(tasks)]
    mine = eye[m_s : m_s + m_t].expand(4, m_t, width)  # a task gate's own experts follow
    for i in range(tasks):
        rows = layer.mix_task(i, x, shared, mine)  # [B, width]: the gate row, zero-padded
        assert (rows[:, m_s + m_t :] == 0).all() and (rows >= 0).all()
        torch.testing.assert_close(rows.sum(-1), torch.ones(4))
        for b in range(4):
            one = layer.mix_task(i, x[b : b + 1], shared[:1], mine[:1])
            torch.testing.assert_close(one[0], rows[b])
    rows = layer.mix_shared(x, shared, own)  # every expert: m_s + T m_t = 8 = width
    assert (rows >= 0).all()
    torch.testing.assert_close(rows.sum(-1), torch.ones(4))
    for b in range(4):
        one = layer.mix_shared(x[b : b + 1], shared[:1], [o[:1] for o in own])
        torch.testing.assert_close(one[0], rows[b])


EXPERTS: dict[str, Any] = {"num_shared_experts": 2, "num_task_experts": 2}


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        ("cgc", EXPERTS),
        ("ple", {**EXPERTS, "num_levels": 3}),
        ("dselect_k", {}),
        ("ltb", {"warmup_steps": 0}),
    ],
)
def test_gated_models_treat_each_sample_on_its_own(arch: str, kw: dict[str, Any]) -> None:
    """Evaluation outputs of a batch equal those of each sample alone: no gate (task or shared)
    normalises over the batch."""
    torch.manual_seed(0)
    model = _build(arch, num_features=2, **kw).eval()
    x, f = _x(), torch.randn(4, 2)
    out = model(x, f)
    for b in range(4):
        alone = model(x[b : b + 1], f[b : b + 1])
        for task in HEADS:
            torch.testing.assert_close(alone[task][0], out[task][b])


@pytest.mark.parametrize("levels", [3, 4])
def test_ple_matches_a_level_by_level_reference_forward(levels: int) -> None:
    """PLE's split encode/decode equals the paper's recursion run level by level: each task's
    gate reads its own input x_t^(k-1) (not another task's slice of z)."""
    torch.manual_seed(0)
    model = _build(
        "ple", num_features=2, num_levels=levels, num_shared_experts=2, num_task_experts=3
    ).eval()
    assert isinstance(model, PLE)
    x, f = _x(), torch.randn(4, 2)
    h = model.fusion(model.backbone(x), f)
    xs, s = [h] * len(HEADS), h
    for k in range(levels):
        layer = model._level(k)
        shared = layer.shared(s)
        own = [layer.task(i, xi) for i, xi in enumerate(xs)]
        if layer.shared_gate is not None:
            s = layer.mix_shared(s, shared, own)
        xs = [layer.mix_task(i, xi, shared, own[i]) for i, xi in enumerate(xs)]
    out = model(x, f)
    for task, tower, xi in zip(model.towers.tasks, model.towers.heads, xs, strict=True):
        torch.testing.assert_close(out[task], tower(xi))


def test_ple_with_one_level_is_cgc() -> None:
    cgc = _build("cgc", num_features=2, num_shared_experts=2, num_task_experts=3)
    torch.manual_seed(1)  # different initial weights: the outputs agree only through the copy
    ple = _build("ple", num_features=2, num_levels=1, num_shared_experts=2, num_task_experts=3)
    state = {k.replace("layer.", "levels.0.", 1): v for k, v in cgc.state_dict().items()}
    assert set(state) == set(ple.state_dict())
    ple.load_state_dict(state)
    cgc.eval(), ple.eval()
    x, f = _x(), torch.randn(4, 2)
    torch.testing.assert_close(ple.encode(x, f), cgc.encode(x, f))
    for task, y in ple(x, f).items():
        torch.testing.assert_close(y, cgc(x, f)[task])
    for task in HEADS:
        assert len(list(ple.task_parameters(task))) == len(list(cgc.task_parameters(task)))
    assert len(list(ple.shared_parameters())) == len(list(cgc.shared_parameters()))


# --------------------------------------------------------------------------------- DSelect-k
def test_smooth_step_values_and_gamma() -> None:
    t = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0, 0.25])
    torch.testing.assert_close(smooth_step(t), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.84375]))
    # gamma widens the cubic part (LibMTL's port ignored it): S(0.5; gamma=2) = 0.84375
    torch.testing.assert_close(smooth_step(torch.tensor(0.5), gamma=2.0), torch.tensor(0.84375))
    t = torch.tensor([-0.6, 0.6], requires_grad=True)
    smooth_step(t).sum().backward()
    assert t.grad is not None and not t.grad.any()  # flat tails: a binary gate stays binary


def test_dselect_k_gate_uses_its_gamma() -> None:
    """gamma = 4: a logit of 1 lies in the cubic part, S(1; 4) = -2/64 + 3/8 + 1/2 = 0.84375
    (with gamma = 1 it would be saturated at 1), and each selector weight is the product over
    the bits of S or 1 - S by the expert's binary code (most significant bit first)."""
    gate = DSelectKGate(in_features=3, num_experts=4, num_nonzeros=1, gamma=4.0)
    with torch.no_grad():
        gate.z_logits.weight.zero_()
        gate.z_logits.bias.copy_(torch.tensor([1.0, -1.0]))  # bit 1 (MSB) on, bit 0 off
    s = 0.84375
    expected = torch.tensor([(1 - s) * s, (1 - s) * (1 - s), s * s, s * (1 - s)])
    r = gate.selectors(torch.randn(2, 3))
    torch.testing.assert_close(r, expected.expand(2, 1, 4))


def test_smooth_step_gradient_is_finite_in_float16() -> None:
    """fp16 (AMP): 3 t^2 overflows past |t| ~ 148; the unused cubic branch must not turn the
    flat tails' zero gradient into NaN. On the function and through a half-precision gate."""
    t = torch.tensor([0.2, 30.0, 200.0, -200.0, 6e4], dtype=torch.float16, requires_grad=True)
    smooth_step(t).sum().backward()
    assert t.grad is not None
    expected = torch.tensor([-6 * 0.2**2 + 1.5, 0.0, 0.0, 0.0, 0.0])  # dS/dt, gamma = 1
    torch.testing.assert_close(t.grad.float(), expected, atol=1e-3, rtol=1e-3)
    torch.manual_seed(0)
    gate = DSelectKGate(in_features=4, num_experts=4, num_nonzeros=2, gamma=1.0)
    with torch.no_grad():
        gate.z_logits.bias[0] = 200.0  # selector 0, bit 0 saturated at 1
    gate = gate.half()
    q = gate(torch.randn(3, 4, dtype=torch.float16))
    (q * torch.arange(4, dtype=torch.float16)).sum().backward()
    for name, p in gate.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_dselect_k_gates_sum_to_one_and_select_k_experts_when_binary() -> None:
    gate = DSelectKGate(in_features=5, num_experts=8, num_nonzeros=3, gamma=1.0)
    h = torch.randn(6, 5)
    with torch.no_grad():
        gate.z_logits.weight.normal_(0, 3)
    q = gate(h)
    assert q.shape == (6, 8) and (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(6))
    torch.testing.assert_close(gate.selectors(h).sum(-1), torch.ones(6, 3))
    # Saturated logits (|a| >= gamma / 2): selector i picks expert (4, 1, 6)[i] exactly.
    picks = (4, 1, 6)
    bits = torch.tensor([[(e >> s) & 1 for s in (2, 1, 0)] for e in picks], dtype=torch.float32)
    with torch.no_grad():
        gate.z_logits.weight.zero_()
        gate.z_logits.bias.copy_(((bits * 2 - 1) * 0.5).flatten())
    q = gate(h)
    assert ((q > 0).sum(-1) == 3).all()
    assert set((q[0] > 0).nonzero().flatten().tolist()) == set(picks)
    torch.testing.assert_close(q.sum(-1), torch.ones(6))


def test_dselect_k_gate_converges_to_exactly_binary_selectors() -> None:
    """Trained to favour one expert, every selector reaches exactly 0/1 in finite time (a
    sigmoid gate never would) and at most k experts keep a non-zero weight."""
    gate = DSelectKGate(in_features=3, num_experts=4, num_nonzeros=2, gamma=1.0)
    h = torch.randn(16, 3)
    value = torch.tensor([0.1, 0.2, 1.0, 0.3])  # expert 2 is the best
    opt = torch.optim.SGD(gate.parameters(), lr=1.0)  # binary after 7-20 steps (seeds 0-5)
    for _ in range(100):
        opt.zero_grad()
        (-(gate(h) * value).sum(-1).mean()).backward()
        opt.step()
    r = gate.selectors(h).detach()
    assert ((r == 0) | (r == 1)).all(), "selectors not exactly binary"
    q = gate(h).detach()
    assert ((q > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(q[:, 2], torch.ones(16))


def test_dselect_k_refuses_unusable_hyperparameters() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        _build("dselect_k", num_experts=6)
    with pytest.raises(ValueError, match=r"num_nonzeros must be in \[1, 4\]"):
        _build("dselect_k", num_experts=4, num_nonzeros=5)
    model = _build("dselect_k", num_experts=8, num_nonzeros=2)
    assert isinstance(model, DSelectK)
    z = model.encode(_x())
    torch.testing.assert_close(model.expert_weights("c", z).sum(-1), torch.ones(4))
    _check_split(model, 0)


# ----------------------------------------------------------------------------------------- LTB
def test_ltb_branching_is_a_distribution_and_hard_after_warm_up() -> None:
    torch.manual_seed(0)  # the weights, the noise seed and the input: a fixed case
    model = _build("ltb", bkw=SMALL3, warmup_steps=2, tau_initial=5.0, tau_decay_steps=10)
    assert isinstance(model, LTB)
    probs = model.branching_probabilities()
    assert probs.shape == (2, 3, 3)  # [branching layers, children, parents]
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    model.train()
    for _ in range(2):  # warm-up: soft mixing with softmax(theta)
        torch.testing.assert_close(model._alpha(), probs)
    assert int(model.num_steps) == 2
    seen = []
    for _ in range(3):  # after warm-up: exactly one parent per child
        alpha = model._alpha()
        assert ((alpha == 0) | (alpha == 1)).all() and (alpha.sum(-1) == 1).all()
        seen.append(alpha.detach())
    assert int(model.num_steps) == 5
    assert model.temperature(2) == 5.0 and model.temperature(12) == pytest.approx(5.0 / 2**0.5)
    # the noise of a step is a function of (noise_seed, step): a replay samples the same tree
    model.num_steps.fill_(2)
    torch.testing.assert_close(model._alpha().detach(), seen[0])
    # straight-through: the hard sample still trains theta along the sampled path. Task a's
    # column reads layer 1's parent p; layer 0's child p feeds it, so every logit of that row
    # (and of task a's last-layer row) gets a gradient well above rounding noise.
    model.num_steps.fill_(3)
    model.zero_grad(set_to_none=True)
    model(_x())["a"].square().sum().backward()
    model.num_steps.fill_(3)
    alpha = model._alpha().detach()  # replay: the tree that forward sampled
    parent = int(alpha[1, 0].argmax())
    assert model.shared_logits is not None and model.shared_logits.grad is not None
    assert model.shared_logits.grad[0, parent].abs().min() > LIVE_GRAD
    last = model.last_logits[0].grad
    assert last is not None and last.abs().min() > LIVE_GRAD
    assert {"num_steps", "noise_seed"} <= set(model.state_dict())


def test_ltb_evaluates_the_argmax_tree() -> None:
    """After warm-up, evaluation uses each child's most likely parent, deterministically: with
    every child choosing column 0 below the last stage, the other columns' stems and lower
    stages cannot change any output."""
    model = _build("ltb", bkw=SMALL3, warmup_steps=0).eval()
    assert isinstance(model, LTB) and model.shared_logits is not None
    with torch.no_grad():
        model.shared_logits.zero_()[..., 0] = 5.0
        for logits in model.last_logits:
            logits.zero_()[0] = 5.0
    assert (model.tree() == 0).all()
    x = _x()
    before = model(x)
    torch.testing.assert_close(model(x)["a"], before["a"])  # no sampling in evaluation
    with torch.no_grad():
        for col in model._columns()[1:]:
            for p in col.stages[0].parameters():
                p.add_(1.0)
    after = model(x)
    for task in HEADS:
        torch.testing.assert_close(after[task], before[task])
    with torch.no_grad():  # ... while column 0's lower stage feeds every task
        for p in model._columns()[0].stages[0].parameters():
            p.add_(1.0)
    assert all(not torch.allclose(model(x)[t], before[t]) for t in HEADS)


def test_ltb_schedule_and_noise_resume_from_a_state_dict() -> None:
    """A checkpoint carries the step count and the noise seed: a model restored from it
    continues with the same temperature and samples the same trees as the original."""
    model = _build("ltb", warmup_steps=1).train()
    assert isinstance(model, LTB)
    for _ in range(4):
        model._alpha()
    torch.manual_seed(99)  # another initialisation and another noise seed
    twin = _build("ltb", warmup_steps=1).train()
    assert isinstance(twin, LTB)
    assert int(twin.noise_seed) != int(model.noise_seed)
    twin.load_state_dict(model.state_dict())
    assert int(twin.num_steps) == 4
    for _ in range(3):
        torch.testing.assert_close(twin._alpha(), model._alpha())


@pytest.mark.parametrize(("bkw", "layers"), [(SMALL, 1), (SMALL3, 2)])
def test_ltb_every_branching_logit_is_live(bkw: dict[str, Any], layers: int) -> None:
    """smallcnn's stem is ``nn.Identity()``: a choice among its outputs mixes T copies of x and
    could not change anything, so branching starts before stage 1 and every logit is live:
    randomising any layer's logits changes the outputs, and every logit gets a gradient
    (warm-up, soft mixing, all tasks' losses)."""
    torch.manual_seed(0)
    model = _build("ltb", bkw=bkw, warmup_steps=10**6)
    assert isinstance(model, LTB)
    assert model.branching_logits().shape == (layers, 3, 3)
    assert (model.shared_logits is None) == (layers == 1)
    x = _x()
    model.eval()
    before = model(x)
    logits = [*([] if model.shared_logits is None else model.shared_logits), *model.last_logits]
    for row in logits:  # each shared layer [T, T] and each task's last-layer row [T]
        saved = row.detach().clone()
        with torch.no_grad():
            row.normal_(0, 5)
        after = model(x)
        assert max((after[t] - before[t]).abs().max().item() for t in HEADS) > 1e-3
        with torch.no_grad():
            row.copy_(saved)
    model.train()
    model.zero_grad(set_to_none=True)
    sum(y.square().sum() for y in model(x).values()).backward()  # type: ignore[union-attr]
    for name, p in model.named_parameters():
        if "logits" in name:
            assert p.grad is not None and p.grad.abs().min() > LIVE_GRAD, name
    _check_split(model, 0)


def test_ltb_refuses_a_backbone_without_a_live_branching_layer() -> None:
    with pytest.raises(ValueError, match="at least one live branching layer"):
        _build("ltb", bkw={"channels": (4,), "out_features": 8})


def test_ltb_keeps_a_layer_0_choice_after_a_stem_with_parameters() -> None:
    """resnet18's stem is a conv: its T outputs differ, so layer 0 branches (L = S = 4)."""
    model = create_architecture(
        "ltb", "resnet18", {"a": 2, "b": 1}, 1, backbone_kwargs={"small_input": True},
        warmup_steps=10**6,
    ).eval()
    assert isinstance(model, LTB) and model.shared_logits is not None
    assert model.branching_logits().shape == (4, 2, 2)
    x = torch.randn(2, 1, 16, 16)
    before = model(x)
    with torch.no_grad():
        model.shared_logits[0].normal_(0, 5)
    assert max((model(x)[t] - before[t]).abs().max().item() for t in ("a", "b")) > 1e-3


def test_ltb_hard_samples_follow_softmax_theta() -> None:
    """Gumbel-max: the hard sample picks parent p with probability softmax(theta)[p], whatever
    the temperature. Every row of theta is set to (2, 0, -1); 6 rows x 800 steps = 4800
    samples (independent: per-row noise, a new seed per step), and each frequency must be within
    4.5 binomial standard errors of softmax (a flipped Gumbel sign gives ~(0.94, 0.05, 0.01))."""
    torch.manual_seed(0)
    model = _build("ltb", bkw=SMALL3, warmup_steps=0, tau_initial=1.0).train()
    assert isinstance(model, LTB) and model.shared_logits is not None
    row = torch.tensor([2.0, 0.0, -1.0])
    with torch.no_grad():
        model.shared_logits.copy_(row.expand_as(model.shared_logits))
        for logits in model.last_logits:
            logits.copy_(row)
    steps = 800
    counts = torch.zeros(3)
    with torch.no_grad():
        for _ in range(steps):
            counts += model._alpha().sum(dim=(0, 1))  # [L, T, T] one-hot rows -> [T(parents)]
    n = steps * model.branching_logits().numel() // 3  # one sample per (layer, child)
    p = torch.softmax(row, 0)
    se = (p * (1 - p) / n).sqrt()
    assert ((counts / n - p).abs() < 4.5 * se).all(), (counts / n, p)


def test_ltb_straight_through_gradient_is_divided_by_the_temperature() -> None:
    """The backward pass of the hard sample is that of y = softmax((theta + g) / tau): for a
    large tau, y ~ 1/T and d(sum alpha * w)/d theta = (w - mean(w)) / (T tau) whatever the noise
    g. (Without the temperature the gradient would be O(0.1), not O(1e-5).)"""
    torch.manual_seed(0)
    tau = 1e4
    model = _build("ltb", bkw=SMALL3, warmup_steps=0, tau_initial=tau, tau_decay_steps=10**9)
    assert isinstance(model, LTB)
    model.train()
    w = torch.randn(2, 3, 3)  # [L, T(children), T(parents)]
    (model._alpha() * w).sum().backward()
    expected = (w - w.mean(-1, keepdim=True)) / (3 * tau)
    assert model.shared_logits is not None and model.shared_logits.grad is not None
    torch.testing.assert_close(model.shared_logits.grad, expected[:1], rtol=1e-2, atol=1e-9)
    for t, logits in enumerate(model.last_logits):
        assert logits.grad is not None
        torch.testing.assert_close(logits.grad, expected[1, t], rtol=1e-2, atol=1e-9)
