"""The shared engine (``mtl.weighting.backward``) against answers computed independently.

Written to kill the surviving mutants of ``backward.py`` (issue 8's mutation testing; see
docs/weighting.md): every expected value is recomputed here with plain ``torch.autograd`` on
one task at a time, never with the engine itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from weighting_helpers import TinyModel, compute_losses, make_batch

import mtl.weighting.backward as backward_mod
import mtl.weighting.registry as registry_mod
from mtl.weighting import (
    backward_passes,
    create_weighting,
    get_weighting_class,
    list_weightings,
    multitask_backward,
    register_weighting,
    set_vmapped_gradients,
    task_gradient_cosine,
)
from mtl.weighting.base import GradientWeighting, Weighting

F64 = torch.float64


@pytest.fixture(autouse=True)
def _restore_vmapped_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts on the automatic choice and leaves the process-wide flag as found."""
    monkeypatch.setattr(backward_mod, "_BATCHED_OK", None)
    yield


class Recorder(GradientWeighting):
    """The plain sum ``d = sum_t g_t`` that keeps the ``[T, P]`` matrix it was handed."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.seen: Tensor | None = None

    def aggregate(self, grads: Tensor, losses: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        self.seen = grads.clone()
        return grads.sum(0), present.to(grads.dtype)


def _task_grads(losses: Tensor, present: Tensor, wrt: list[Tensor]) -> Tensor:
    """``[T, P]``: each present task's gradient on its own (zeros for absent tasks)."""
    rows = []
    for t in range(losses.shape[0]):
        if not bool(present[t]):
            rows.append(torch.zeros(sum(p.numel() for p in wrt), dtype=F64))
            continue
        g = torch.autograd.grad(losses[t], wrt, retain_graph=True, allow_unused=True,
                                materialize_grads=True)
        rows.append(torch.cat([x.reshape(-1) for x in g]))
    return torch.stack(rows)


class HostScale(torch.autograd.Function):
    """``2 x`` whose backward goes through NumPy: an op without a vmap batching rule."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x * 2.0

    @staticmethod
    def backward(ctx: object, g: Tensor) -> Tensor:
        return torch.from_numpy(g.detach().numpy() * 2.0)


# ------------------------------------------------------------------------ mode and its cost
def test_backward_passes_names_the_cost_of_each_mode() -> None:
    """The strings of the module docstring: loss level one pass; gradient level T passes on
    the CPU or one vmapped one, plus the heads-only part of the representation backend."""
    loss_level, grad_level = create_weighting("equal", 2), create_weighting("pcgrad", 2)
    assert backward_passes(loss_level, "representation") == "1"
    assert backward_passes(grad_level) == "1 vmapped (T), T on CPU"
    assert backward_passes(grad_level, "representation") == "1 + heads (1 vmapped (T), T on CPU)"
    assert backward_passes(grad_level, device="cpu") == "T"
    assert backward_passes(grad_level, device=torch.device("cpu")) == "T"
    assert backward_passes(grad_level, device="cuda") == "1 vmapped (T)"  # automatic: by device
    set_vmapped_gradients(True)
    assert backward_passes(grad_level) == "1 vmapped (T)"
    assert backward_passes(grad_level, "representation", "cpu") == "1 + heads (1 vmapped (T))"
    set_vmapped_gradients(False)
    assert backward_passes(grad_level) == "T"
    assert backward_mod._BATCHED_OK is False
    set_vmapped_gradients(None)
    assert backward_mod._BATCHED_OK is None
    set_vmapped_gradients(1)  # type: ignore[arg-type]
    assert backward_mod._BATCHED_OK is True


# ------------------------------------------------------------------ the vmapped per-task path
@pytest.mark.parametrize("backend", ["full", "representation"])
def test_forced_vmapped_backward_needs_no_fallback(backend: str) -> None:
    """With the vmapped backward forced (as on a GPU), TinyModel's ops all have batching
    rules: the per-task gradients must come out of that one backward (no fallback warning,
    the choice kept) and equal each task's own autograd gradient; task 1 is absent."""
    set_vmapped_gradients(True)
    model = TinyModel().double()
    x, y = make_batch(absent=(1,), dtype=F64)
    losses, present, z = compute_losses(model, x, y)
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    wrt = shared if backend == "full" else [z]
    expected = _task_grads(losses, present, wrt)  # [T, P]
    expected_heads = _task_grads(losses, present, heads).sum(0)
    expected_shared = torch.autograd.grad(losses[0] + losses[2], shared, retain_graph=True)
    rec = Recorder(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        w = multitask_backward(rec, losses, present, shared, heads, z, backend=backend)
    assert backward_mod._BATCHED_OK is True
    assert rec.seen is not None
    torch.testing.assert_close(rec.seen, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    for p, e in zip(shared, expected_shared, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
    got_heads = torch.cat([p.grad.reshape(-1) for p in heads])  # type: ignore[union-attr]
    torch.testing.assert_close(got_heads, expected_heads, rtol=1e-12, atol=1e-14)


def test_vmapped_cosine_matches_the_per_task_gradients() -> None:
    set_vmapped_gradients(True)
    model = TinyModel().double()
    x, y = make_batch(dtype=F64)
    losses, present, _ = compute_losses(model, x, y)
    shared = list(model.shared_parameters())
    g = _task_grads(losses, present, shared)
    n = g.norm(dim=1)
    expected = (g @ g.T) / (n[:, None] * n[None, :])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cos = task_gradient_cosine(losses, present, shared)
    assert backward_mod._BATCHED_OK is True
    torch.testing.assert_close(cos, expected, rtol=1e-12, atol=1e-14)


def _host_scaled_losses() -> tuple[Tensor, Tensor, list[Tensor]]:
    """Two tasks behind :class:`HostScale`: ``L_0 = sum 2 (x W)_0``, ``L_1 = sum (2 x W)_1^2``."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, dtype=F64, generator=gen)
    weight = nn.Parameter(torch.randn(3, 2, dtype=F64, generator=gen))
    out = HostScale.apply(x @ weight)
    assert isinstance(out, Tensor)
    losses = torch.stack([out[:, 0].sum(), (out[:, 1] ** 2).sum()])
    return losses, x, [weight]


def test_an_op_without_a_batching_rule_falls_back_once_with_a_warning() -> None:
    """The vmapped backward fails on the host-side op: one warning naming the failure, the
    rest of the process on the per-task loop, and the same gradients as that loop.
    ``d L_0 / d W = 2 x^T [1, 0]``, ``d L_1 / d W = 8 x^T [0, (x W)_1]``."""
    set_vmapped_gradients(True)
    losses, x, params = _host_scaled_losses()
    weight = params[0]
    rec = Recorder(2)
    with pytest.warns(RuntimeWarning) as caught:
        multitask_backward(rec, losses, torch.ones(2, dtype=torch.bool), params, [])
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("vmapped per-task backward failed (")
    assert text.endswith("); falling back to one backward per task for the rest of this process")
    assert backward_mod._BATCHED_OK is False
    xw = (x @ weight).detach()
    g0 = 2.0 * x.T @ torch.stack([torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64)], 1)
    g1 = 8.0 * x.T @ torch.stack([torch.zeros(4, dtype=F64), xw[:, 1]], 1)
    assert rec.seen is not None
    torch.testing.assert_close(rec.seen, torch.stack([g0.reshape(-1), g1.reshape(-1)]))
    torch.testing.assert_close(weight.grad, g0 + g1)


def test_no_vmapped_attempt_for_the_loop_or_a_single_task() -> None:
    """The vmapped backward is only tried where chosen and with more than one task: the loop
    chosen (the CPU default), or one present task, meets the host-side op without a warning
    and leaves the choice as it was."""
    set_vmapped_gradients(False)
    losses, _, params = _host_scaled_losses()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        multitask_backward(Recorder(2), losses, torch.ones(2, dtype=torch.bool), params, [])
        task_gradient_cosine(losses, torch.ones(2, dtype=torch.bool), params)
    assert backward_mod._BATCHED_OK is False
    set_vmapped_gradients(True)
    losses, _, params = _host_scaled_losses()
    one = torch.tensor([False, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        multitask_backward(Recorder(2), losses, one, params, [])
        task_gradient_cosine(losses, one, params)
    assert backward_mod._BATCHED_OK is True


@pytest.mark.parametrize("vmapped", [True, False])
def test_an_unused_shared_parameter_gets_a_zero_gradient(vmapped: bool) -> None:
    """A shared parameter no loss depends on (a frozen branch, an unused embedding): its
    per-task gradients are zeros, so is its share of the direction; the others are
    unchanged (sum of the two task gradients, per-task autograd)."""
    set_vmapped_gradients(vmapped)
    losses, shared = _linear_losses()
    weight, unused = shared
    rec = Recorder(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        multitask_backward(rec, losses, torch.ones(3, dtype=torch.bool), shared, [])
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0],
                             [-1.0, -1.0, 0.0, 0.0]], dtype=F64)
    assert rec.seen is not None
    torch.testing.assert_close(rec.seen, torch.cat([expected, torch.zeros(3, 5, dtype=F64)], 1))
    torch.testing.assert_close(weight.grad, torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=F64))
    torch.testing.assert_close(unused.grad, torch.zeros(5, dtype=F64))


def test_cosine_falls_back_once_with_a_warning() -> None:
    set_vmapped_gradients(True)
    losses, _, params = _host_scaled_losses()
    with pytest.warns(RuntimeWarning) as caught:
        cos = task_gradient_cosine(losses, torch.ones(2, dtype=torch.bool), params)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("vmapped per-task backward failed (")
    assert text.endswith("); falling back to one backward per task for the rest of this process")
    assert backward_mod._BATCHED_OK is False
    # the two gradients live in different columns of W: orthogonal
    torch.testing.assert_close(cos, torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64))


# ---------------------------------------------------------------------- task_gradient_cosine
def _linear_losses(zero_task: bool = False) -> tuple[Tensor, list[nn.Parameter]]:
    """Three losses of ``W [2, 2]`` (and an unused shared parameter): gradients
    ``g_0 = (1, 0, 0, 0)``, ``g_1 = (0, 1, 0, 0)`` scaled by 3, ``g_2 = (-1, -1, 0, 0)``
    (or exactly zero with ``zero_task``): cosines 0, -1/sqrt(2), -1/sqrt(2)."""
    weight = nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=F64))
    unused = nn.Parameter(torch.ones(5, dtype=F64))  # shared, but no loss touches it
    l2 = -(weight[0, 0] + weight[0, 1])
    losses = torch.stack([weight[0, 0], 3.0 * weight[0, 1], 0.0 * l2 if zero_task else l2])
    return losses, [weight, unused]


@pytest.mark.parametrize("vmapped", [True, False])
def test_cosine_known_answers_unused_parameter_and_float64(vmapped: bool) -> None:
    set_vmapped_gradients(vmapped)
    losses, shared = _linear_losses()
    cos = task_gradient_cosine(losses, torch.ones(3, dtype=torch.bool), shared)
    r = 2.0**-0.5
    expected = torch.tensor([[1.0, 0.0, -r], [0.0, 1.0, -r], [-r, -r, 1.0]], dtype=F64)
    assert cos.dtype == F64
    torch.testing.assert_close(cos, expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("vmapped", [True, False])
def test_cosine_of_a_zero_gradient_task_is_nan(vmapped: bool) -> None:
    """A present task with an exactly zero gradient has no direction: NaN in its row and
    column (not 0), the others keep their cosines."""
    set_vmapped_gradients(vmapped)
    losses, shared = _linear_losses(zero_task=True)
    cos = task_gradient_cosine(losses, torch.ones(3, dtype=torch.bool), shared)
    assert torch.isnan(cos[2]).all() and torch.isnan(cos[:, 2]).all()
    torch.testing.assert_close(cos[:2, :2], torch.eye(2, dtype=F64))


def test_cosine_one_present_task_and_no_shared_parameters() -> None:
    losses, shared = _linear_losses()
    present = torch.tensor([False, True, False])
    cos = task_gradient_cosine(losses, present, shared)
    assert cos[1, 1] == 1.0
    assert int(torch.isnan(cos).sum()) == 8
    frozen = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in shared]
    assert torch.isnan(task_gradient_cosine(losses, torch.ones(3, dtype=torch.bool),
                                            frozen)).all()


def test_cosine_without_retain_graph_frees_it() -> None:
    """``retain_graph=False``: every task's gradient is still computed (the graph is kept
    until the last one), then the graph is released."""
    losses, shared = _linear_losses()
    cos = task_gradient_cosine(losses, torch.ones(3, dtype=torch.bool), shared,
                               retain_graph=False)
    assert not torch.isnan(cos).any()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        (losses[0] * losses[2]).backward()


# ------------------------------------------------------------------------------- _accumulate
def test_shared_gradients_own_their_memory_and_accumulate() -> None:
    """The direction is split into per-parameter pieces: each ``.grad`` must be its own
    tensor (not a view keeping the whole ``[P]`` direction alive), and a second call adds."""
    model = TinyModel().double()
    x, y = make_batch(dtype=F64)
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    for _ in range(2):
        losses, present, z = compute_losses(model, x, y)
        multitask_backward(Recorder(3), losses, present, shared, heads, z)
    losses, present, _ = compute_losses(model, x, y)
    once = torch.autograd.grad(losses.sum(), shared)
    for p, g in zip(shared, once, strict=True):
        assert p.grad is not None and p.grad._base is None and p.grad.is_contiguous()
        torch.testing.assert_close(p.grad, 2.0 * g)


@pytest.mark.parametrize("vmapped", [True, False])
def test_half_precision_parameters_get_gradients_in_their_dtype(vmapped: bool) -> None:
    """bfloat16 parameters: the methods work on float32 gradients (``_work_dtype``), on both
    per-task paths, and each parameter's ``.grad`` is written back in its own dtype."""
    set_vmapped_gradients(vmapped)
    model = TinyModel().to(torch.bfloat16)
    x, y = make_batch(dtype=torch.bfloat16)
    losses, present, z = compute_losses(model, x, y)
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    rec = Recorder(3)
    multitask_backward(rec, losses, present, shared, heads, z)
    assert rec.seen is not None and rec.seen.dtype == torch.float32
    for p in [*shared, *heads]:
        assert p.grad is not None and p.grad.dtype == torch.bfloat16


# ------------------------------------------------------------------- DDP path on one process
@pytest.fixture
def one_process_group(tmp_path: object) -> Iterator[None]:
    """A real gloo process group of world size 1 (the trainer's collectives are then exact
    identities, so the synchronised result must equal the unsynchronised one)."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["full", "representation"])
def test_synchronised_backward_on_one_process_equals_the_local_one(
    backend: str, one_process_group: None
) -> None:
    """``mtl.train.ProcessGroupTaskGradients`` on one process: the global batch is the local
    one, so gradients, weights and head gradients equal those of ``sync=None`` (task 1 absent,
    IMTL-L's head scales and the representation backend's gathered rows included)."""
    from mtl.train import ProcessGroupTaskGradients

    results = []
    for synced in (False, True):
        torch.manual_seed(0)
        model = TinyModel().double()
        x, y = make_batch(absent=(1,), dtype=F64)
        losses, present, z = compute_losses(model, x, y)
        counts = torch.tensor([16.0, 0.0, 16.0])
        sync = ProcessGroupTaskGradients(counts) if synced else None
        m = create_weighting("imtl", 3)  # IMTL-L: head scales e^s and a regulariser
        with torch.no_grad():
            m.loss_scale.copy_(torch.tensor([0.3, -0.2, 0.5]))  # type: ignore[operator]
        w = multitask_backward(m, losses, present, list(model.shared_parameters()),
                               model.head_parameters(), z, backend=backend, sync=sync)
        results.append((w, [p.grad.clone() if p.grad is not None else None
                            for p in model.parameters()]))
    (w0, g0), (w1, g1) = results
    torch.testing.assert_close(w1, w0, rtol=1e-12, atol=1e-14)
    assert w0[1] == 0.0
    for a, b in zip(g0, g1, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------- base and registry
def test_registering_a_new_method_under_a_canonical_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``@register_weighting(" My-Method ")`` files the class under ``my_method`` (stripped,
    lower case, ``-`` -> ``_``), sets ``registered_name``, and may be repeated for the same
    class; a gradient-level class without backends and a non-class are refused by name."""
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))

    class MyMethod(Weighting):
        def weights(self, losses: Tensor, present: Tensor) -> Tensor:
            return torch.ones_like(losses)

    assert register_weighting(" My-Method ")(MyMethod) is MyMethod
    assert register_weighting("my_method")(MyMethod) is MyMethod  # same class: no error
    assert MyMethod.registered_name == "my_method"  # type: ignore[attr-defined]
    assert get_weighting_class("MY-METHOD") is MyMethod
    assert "my_method" in list_weightings()

    class NoBackends(GradientWeighting):
        backends = ()

    with pytest.raises(ValueError,
                       match=r"^gradient-level weighting 'no_backends' declares no backends$"):
        register_weighting("No-Backends")(NoBackends)
    assert "no_backends" not in list_weightings()
    with pytest.raises(TypeError,
                       match=r"^@register_weighting\('bogus'\) must decorate a Weighting "
                             r"subclass$"):
        register_weighting("bogus")(int)  # type: ignore[type-var]


def test_the_base_class_names_the_level_a_method_lacks() -> None:
    losses, present = torch.ones(2), torch.ones(2, dtype=torch.bool)
    with pytest.raises(NotImplementedError, match=r"^PCGrad is a gradient-level method$"):
        create_weighting("pcgrad", 2).weights(losses, present)
    with pytest.raises(NotImplementedError, match=r"^Equal is a loss-level method$"):
        create_weighting("equal", 2).aggregate(torch.ones(2, 3), losses, present)


def test_objective_weights_are_in_the_losses_dtype() -> None:
    """``Weighting.objective`` casts whatever ``weights()`` returns to the losses' dtype and
    zeroes absent tasks: a method computing float32 weights (2, 3, 4) on float64 losses gives
    float64 weights (2, 0, 4) and the objective 2 L_0 + 4 L_2."""

    class Float32Weights(Weighting):
        def weights(self, losses: Tensor, present: Tensor) -> Tensor:
            return torch.tensor([2.0, 3.0, 4.0])

    losses = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    total, w = Float32Weights(3).objective(losses, torch.tensor([True, False, True]))
    assert w.dtype == F64 and total.dtype == F64
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0, 4.0], dtype=F64))
    assert float(total) == 14.0


# ------------------------------------------------------------------- multitask_backward inputs
def test_losses_and_present_of_the_wrong_shape_are_refused() -> None:
    """``losses`` must be ``[T]`` (a ``[T, 1]`` tensor has the right length but two
    dimensions) and ``present`` the same shape; the messages name both shapes. Rejects
    ``and`` for ``or`` in the shape check and the texts replaced."""
    model = TinyModel()
    x, y = make_batch()
    losses, present, z = compute_losses(model, x, y)
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    m = create_weighting("equal", 3)
    with pytest.raises(ValueError, match=r"^losses must have shape \[3\], got \(3, 1\)$"):
        multitask_backward(m, losses[:, None], present, shared, heads, z)
    with pytest.raises(ValueError, match=r"^present must have shape \[3\], got \(2,\)$"):
        multitask_backward(m, losses, present[:2], shared, heads, z)


@pytest.mark.parametrize("name", ["dwa", "pcgrad"])
def test_a_zero_one_present_mask_works_like_a_bool_one(name: str) -> None:
    """``present`` given as a 0/1 integer tensor is converted to bool: the same weights and
    gradients as the bool mask, at the loss and at the gradient level. Rejects dropping the
    ``dtype=torch.bool`` of the conversion (``torch.where`` and indexing need a bool mask)."""
    results = []
    for as_int in (False, True):
        torch.manual_seed(0)
        model = TinyModel().double()
        x, y = make_batch(absent=(1,), dtype=F64)
        losses, present, z = compute_losses(model, x, y)
        mask = present.to(torch.int64) if as_int else present
        shared, heads = list(model.shared_parameters()), model.head_parameters()
        w = multitask_backward(create_weighting(name, 3), losses, mask, shared, heads, z)
        results.append([w, *[p.grad.clone() for p in model.parameters() if p.grad is not None]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _grads_at_scales_one_and_two(method: str) -> list[list[Tensor]]:
    """The parameter gradients of one seeded float64 batch under ``method``, with
    ``loss_scale`` 1 and 2."""
    grads = []
    for scale in (1.0, 2.0):
        torch.manual_seed(0)
        model = TinyModel().double()
        x, y = make_batch(dtype=F64)
        losses, present, z = compute_losses(model, x, y)
        shared, heads = list(model.shared_parameters()), model.head_parameters()
        multitask_backward(
            create_weighting(method, 3), losses, present, shared, heads, z, loss_scale=scale
        )
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    return grads


def test_loss_level_scale_of_two() -> None:
    """A loss-level method with ``loss_scale = 2``: every gradient is exactly twice the
    unscaled one (the contract test uses 64). Rejects comparing the scale with 2 instead of
    1 to decide whether to multiply."""
    grads = _grads_at_scales_one_and_two("equal")
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g2, 2.0 * g1, rtol=0, atol=0)


def test_unknown_hyperparameter_lists_the_accepted_ones() -> None:
    """The ``TypeError`` for an unknown hyperparameter lists the accepted ones with their
    defaults, comma-separated, or says ``none`` for a method without any (PCGrad)."""
    with pytest.raises(TypeError, match=r"\['foo'\]; it accepts: none$"):
        create_weighting("pcgrad", 3, foo=1)
    with pytest.raises(TypeError, match=r"it accepts: normalization='none', max_iter=1000$"):
        create_weighting("mgda", 3, foo=1)


def test_unknown_name_and_no_task_messages() -> None:
    """An unknown name lists every registered name, comma-separated; ``num_tasks < 1`` says
    what it got."""
    names = ", ".join(list_weightings())
    with pytest.raises(ValueError, match=rf"^unknown weighting 'nope'; valid names: {names}$"):
        create_weighting("nope", 3)
    with pytest.raises(ValueError, match=r"^num_tasks must be >= 1, got 0$"):
        create_weighting("equal", 0)


def test_backend_messages_name_the_method_and_what_is_missing() -> None:
    """The unsupported-backend error names the method's class and its backends; the missing
    representation error says what is needed (the contract test matches one word only)."""
    model = TinyModel()
    x, y = make_batch()
    losses, present, z = compute_losses(model, x, y)
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    m = create_weighting("moco", 3)
    with pytest.raises(ValueError, match=r"^weighting MoCo does not support backend='nope'; "
                       r"supported: \('full',\)$"):  # fmt: skip
        multitask_backward(m, losses, present, shared, heads, z, backend="nope")
    with pytest.raises(ValueError, match=r"^backend='representation' needs the shared "
                       r"representation z$"):  # fmt: skip
        multitask_backward(create_weighting("pcgrad", 3), losses, present, shared, heads, None,
                           "representation")  # fmt: skip


def test_one_present_task_and_none_at_the_gradient_level() -> None:
    """One present task: the shared parameters get exactly its gradient (every linear method
    gives ``d = g`` for one task: PCGrad here). No present task: no gradient at all (``grad``
    stays ``None``, so an optimiser skips the parameters instead of applying weight decay to
    a zero gradient). Rejects the early return taken for one task, and not taken for none."""
    torch.manual_seed(0)
    model = TinyModel().double()
    x, y = make_batch(absent=(0, 2), dtype=F64)
    losses, present, z = compute_losses(model, x, y)
    shared = list(model.shared_parameters())
    expected = torch.autograd.grad(losses[1], shared, retain_graph=True)
    multitask_backward(create_weighting("pcgrad", 3), losses, present, shared,
                       model.head_parameters(), z)  # fmt: skip
    for p, g in zip(shared, expected, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    model = TinyModel().double()
    x, y = make_batch(absent=(0, 1, 2), dtype=F64)
    losses, present, z = compute_losses(model, x, y)
    w = multitask_backward(create_weighting("pcgrad", 3), losses, present,
                           list(model.shared_parameters()), model.head_parameters(), z)  # fmt: skip
    assert torch.equal(w, torch.zeros(3, dtype=F64))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("backend", ["full", "representation"])
def test_synchronised_backward_with_nothing_labelled_here(
    backend: str, one_process_group: None
) -> None:
    """Under DDP a process whose shard has no label at all still joins the collectives with
    zero-row matrices (``[0, P]`` shared, ``[0, *shape]`` per head). On one process nothing is
    labelled anywhere: zero weights and a zero (or no) gradient everywhere, no error. Rejects
    a ``None`` / one-row / untyped placeholder for those matrices."""
    from mtl.train import ProcessGroupTaskGradients

    torch.manual_seed(0)
    model = TinyModel().double()
    x, y = make_batch(absent=(0, 1, 2), dtype=F64)
    losses, present, z = compute_losses(model, x, y)
    sync = ProcessGroupTaskGradients(torch.zeros(3))
    w = multitask_backward(create_weighting("pcgrad", 3), losses, present,
                           list(model.shared_parameters()), model.head_parameters(), z,
                           backend=backend, sync=sync)  # fmt: skip
    assert torch.equal(w, torch.zeros(3, dtype=F64))
    for p in model.parameters():
        assert p.grad is None or (p.grad.dtype == F64 and torch.count_nonzero(p.grad) == 0)


def test_gradient_level_scale_of_two_and_an_overflow() -> None:
    """PCGrad (scale-equivariant) with ``loss_scale = 2``: the method sees the unscaled
    gradients and every gradient is exactly twice the unscaled one. An infinite gradient
    under ``loss_scale = 2`` is an overflow: the plain sum is written (non-finite, so the
    ``GradScaler`` skips the step) and the weights are the presence mask, the method (MGDA)
    is not called on it. Rejects comparing the scale with 2 instead of 1 (dividing it out, or
    detecting the overflow) and a disabled overflow check."""
    grads = _grads_at_scales_one_and_two("pcgrad")
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g2, 2.0 * g1, rtol=1e-12, atol=1e-14)
    model = TinyModel().double()
    x, y = make_batch(absent=(1,), dtype=F64)
    losses, present, z = compute_losses(model, x, y)
    losses = losses * torch.tensor([1.0, 1.0, float("inf")], dtype=F64)  # task 2 overflows
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    # MGDA (not PCGrad, whose weights stay 1 on a NaN Gram matrix) would return NaN weights
    w = multitask_backward(
        create_weighting("mgda", 3), losses, present, shared, heads, z, loss_scale=2.0
    )
    assert torch.equal(w, torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    assert not all(bool(torch.isfinite(p.grad).all()) for p in shared if p.grad is not None)


@pytest.mark.parametrize("absent", [(), (0, 2)])
def test_head_scales_reach_the_heads(absent: tuple[int, ...]) -> None:
    """IMTL-L's head scales ``e^{s_t}`` (``Weighting.head_scales``) multiply each task's own
    head gradient, with three present tasks and with one. Rejects ignoring the head scales,
    passing no presence mask to them, and skipping the heads when one task is present."""
    torch.manual_seed(0)
    model = TinyModel().double()
    x, y = make_batch(absent=absent, dtype=F64)
    losses, present, z = compute_losses(model, x, y)
    m = create_weighting("imtl", 3)
    with torch.no_grad():
        m.loss_scale.copy_(torch.tensor([0.3, -0.2, 0.5]))  # type: ignore[operator]
    scales = m.head_scales(losses.detach(), present)  # e^s (float32 parameters)
    assert scales is not None
    torch.testing.assert_close(scales.double(), torch.tensor([0.3, -0.2, 0.5]).exp().double())
    expected = {}
    for t, task in enumerate(model.tasks):
        params = list(model.task_parameters(task.name))
        if bool(present[t]):
            g = torch.autograd.grad(losses[t], params, retain_graph=True)
            for p, gp in zip(params, g, strict=True):
                expected[id(p)] = scales[t].to(F64) * gp
    multitask_backward(m, losses, present, list(model.shared_parameters()),
                       model.head_parameters(), z)  # fmt: skip
    for p in model.head_parameters():
        if id(p) in expected:
            assert p.grad is not None
            torch.testing.assert_close(p.grad, expected[id(p)], rtol=1e-12, atol=1e-14)
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_gradient_level_regulariser_is_back_propagated_scaled() -> None:
    """IMTL-L at the gradient level: its regulariser (a term of its own parameters) is
    back-propagated once, times the loss scale, into ``loss_scale.grad``. Rejects dropping
    the regulariser and dividing it by the scale."""
    for scale in (1.0, 4.0):
        torch.manual_seed(0)
        model = TinyModel().double()
        x, y = make_batch(dtype=F64)
        losses, present, z = compute_losses(model, x, y)
        m = create_weighting("imtl", 3)
        reg = m.regularization(losses.detach(), present)
        assert reg is not None
        (expected,) = torch.autograd.grad(reg, [m.loss_scale])
        multitask_backward(m, losses, present, list(model.shared_parameters()),
                           model.head_parameters(), z, loss_scale=scale)  # fmt: skip
        assert m.loss_scale.grad is not None
        torch.testing.assert_close(m.loss_scale.grad, scale * expected, rtol=1e-6, atol=0)
