"""Contract tests run for every registered method and every backend it supports."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor
from weighting_helpers import TinyModel, compute_losses, make_batch

from mtl.weighting import (
    Weighting,
    create_weighting,
    get_weighting_class,
    list_weightings,
    multitask_backward,
)

T = 3


def _step(
    weighting: Weighting,
    model: TinyModel,
    backend: str,
    absent: tuple[int, ...] = (),
    loss_scale: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    x, y = make_batch(absent=absent, dtype=dtype, seed=seed)
    losses, present, z = compute_losses(model, x, y)
    w = multitask_backward(
        weighting,
        losses,
        present,
        list(model.shared_parameters()),
        model.head_parameters(),
        representation=z,
        backend=backend,
        loss_scale=loss_scale,
    )
    return w, losses.detach(), present


def _grads(model: TinyModel) -> list[Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def test_weights_shape_finite_and_params_move(case: tuple[str, str]) -> None:
    name, backend = case
    model = TinyModel()
    weighting = create_weighting(name, T)
    params = list(model.parameters()) + list(weighting.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    before = [p.detach().clone() for p in model.shared_parameters()]
    for step in range(3):
        opt.zero_grad()
        w, losses, present = _step(weighting, model, backend, seed=step)
        assert w.shape == (T,)
        assert not w.requires_grad
        assert torch.isfinite(w).all()
        assert (w[present] != 0).any()
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        opt.step()
        weighting.step_end(losses, present)
    after = list(model.shared_parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    for b, a in zip(before, after, strict=True):
        assert torch.isfinite(a).all()
        assert b.shape == a.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(case: tuple[str, str], dtype: torch.dtype) -> None:
    name, backend = case
    model = TinyModel().to(dtype)
    weighting = create_weighting(name, T)
    w, _, _ = _step(weighting, model, backend, dtype=dtype)
    assert w.dtype == dtype
    assert w.device.type == "cpu"
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()


def _task_slices(t: Tensor, task: int) -> list[Tensor]:
    """Every slice of ``t`` along a dimension of size T at index ``task``."""
    return [t.select(d, task) for d in range(t.dim()) if t.shape[d] == T]


def test_absent_task_gets_no_weight_and_keeps_its_state(case: tuple[str, str]) -> None:
    name, backend = case
    model = TinyModel()
    weighting = create_weighting(name, T)
    # populate the state with a normal step first
    _step(weighting, model, backend, seed=1)
    x, y = make_batch(seed=1)
    losses, present, _ = compute_losses(model, x, y)
    weighting.step_end(losses.detach(), present)
    weighting.epoch_end(losses.detach(), present)
    model.zero_grad()
    for p in weighting.parameters():
        p.grad = None
    state = copy.deepcopy(weighting.state_dict())
    for step in range(2):
        w, losses, present = _step(weighting, model, backend, absent=(1,), seed=2 + step)
        assert present.tolist() == [True, False, True]
        assert w[1] == 0
        assert torch.isfinite(w).all()
        weighting.step_end(losses, present)
    weighting.epoch_end(losses, present)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    for p in model.task_parameters("flag"):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    for p in weighting.parameters():  # learnable method state: no gradient for the absent task
        if p.grad is not None:
            assert p.grad[1] == 0
    new_state = weighting.state_dict()
    for key, old in state.items():
        if not isinstance(old, Tensor):
            continue
        for a, b in zip(_task_slices(old, 1), _task_slices(new_state[key], 1), strict=True):
            torch.testing.assert_close(a, b, equal_nan=True, msg=f"{name}: {key} changed")


def test_all_tasks_absent(case: tuple[str, str]) -> None:
    name, backend = case
    model = TinyModel()
    weighting = create_weighting(name, T)
    w, _, _ = _step(weighting, model, backend, absent=(0, 1, 2))
    assert torch.equal(w, torch.zeros(T))
    for p in model.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_loss_scale_is_divided_out(case: tuple[str, str]) -> None:
    """``loss_scale * (gradient without scaling)``: methods see unscaled gradients."""
    name, backend = case
    grads = []
    for scale in (1.0, 64.0):
        torch.manual_seed(3)
        model = TinyModel().double()
        weighting = create_weighting(name, T)
        _step(weighting, model, backend, loss_scale=scale, dtype=torch.float64)
        grads.append(_grads(model))
    for g1, g64 in zip(*grads, strict=True):
        torch.testing.assert_close(g64, 64.0 * g1, rtol=1e-6, atol=1e-9)


def test_gradients_accumulate(case: tuple[str, str]) -> None:
    name, backend = case
    results = []
    for prefill in (False, True):
        torch.manual_seed(4)
        model = TinyModel().double()
        if prefill:
            for p in model.parameters():
                p.grad = torch.ones_like(p)
        weighting = create_weighting(name, T)
        _step(weighting, model, backend, dtype=torch.float64)
        results.append(_grads(model))
    for fresh, acc in zip(*results, strict=True):
        torch.testing.assert_close(acc, fresh + 1.0)


def test_state_dict_round_trip(case: tuple[str, str]) -> None:
    name, backend = case
    model = TinyModel()
    weighting = create_weighting(name, T)
    for step in range(2):
        _, losses, present = _step(weighting, model, backend, seed=step)
        weighting.step_end(losses, present)
        weighting.epoch_end(losses, present)
    clone = create_weighting(name, T)
    clone.load_state_dict(copy.deepcopy(weighting.state_dict()))
    for (k, a), b in zip(weighting.state_dict().items(), clone.state_dict().values(), strict=True):
        if isinstance(a, Tensor):
            torch.testing.assert_close(a, b, equal_nan=True, msg=k)
    # the restored method continues exactly like the original
    ws = []
    for m in (weighting, clone):
        torch.manual_seed(7)
        ws.append(_step(m, copy.deepcopy(model), backend, seed=5)[0])
    torch.testing.assert_close(ws[0], ws[1])


@pytest.mark.parametrize(
    "name", [n for n in list_weightings() if get_weighting_class(n).level == "gradient"]
)
def test_unsupported_backend_and_missing_representation(name: str) -> None:
    model = TinyModel()
    x, y = make_batch()
    losses, present, z = compute_losses(model, x, y)
    weighting = create_weighting(name, T)
    shared, heads = list(model.shared_parameters()), model.head_parameters()
    with pytest.raises(ValueError, match="backend"):
        multitask_backward(weighting, losses, present, shared, heads, z, backend="nope")
    with pytest.raises(ValueError, match="representation"):
        multitask_backward(weighting, losses, present, shared, heads, None, "representation")
