"""Task-conflict logging: ``task_gradient_cosine`` values, its graph contract, and its rate.

The cosine is checked against per-task gradients computed independently with
``torch.autograd.grad`` (one call per task, flattened and concatenated): the definition, not
the implementation under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl.train as train_mod
from mtl.config import TrainConfig
from mtl.schema import TaskKind, TaskSchema
from mtl.train import SplitData, fit
from mtl.weighting import set_vmapped_gradients, task_gradient_cosine


class _Net(nn.Module):
    """A conv + linear trunk (shared) and three linear heads, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.Tanh()
        )
        self.heads = nn.ModuleList(nn.Linear(8, 4) for _ in range(3))

    def losses(self, x: Tensor, ys: Tensor, present: Tensor) -> Tensor:
        z = self.trunk(x)
        per_task = [F.cross_entropy(h(z), ys[:, i]) for i, h in enumerate(self.heads)]
        # an absent task's loss is a constant 0 (no labelled sample), as in the trainer
        return torch.stack(
            [loss if bool(p) else loss * 0 for loss, p in zip(per_task, present, strict=True)]
        )

    def shared(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()


def _setup(present: list[bool], seed: int = 0) -> tuple[_Net, Tensor, Tensor]:
    torch.manual_seed(seed)
    net = _Net().double()
    x = torch.randn(16, 1, 6, 6, dtype=torch.float64)
    ys = torch.randint(0, 4, (16, 3))
    p = torch.tensor(present)
    return net, net.losses(x, ys, p), p


def _expected(net: _Net, losses: Tensor, tasks: list[int]) -> Tensor:
    shared = list(net.shared())
    g = [
        torch.cat([t.reshape(-1) for t in torch.autograd.grad(losses[i], shared,
                                                              retain_graph=True)])
        for i in tasks
    ]  # fmt: skip
    return torch.stack([torch.stack([a @ b / (a.norm() * b.norm()) for b in g]) for a in g])


@pytest.fixture(params=[False, True], ids=["per-task loop", "vmapped"])
def vmapped(request: pytest.FixtureRequest) -> Iterator[bool]:
    set_vmapped_gradients(request.param)
    yield request.param
    set_vmapped_gradients(None)


def test_cosine_matches_the_definition(vmapped: bool) -> None:
    net, losses, present = _setup([True, True, True])
    cos = task_gradient_cosine(losses, present, list(net.shared()))
    expected = _expected(net, losses, [0, 1, 2])
    assert (expected - torch.eye(3)).abs().max() > 0.05  # the tasks really differ
    torch.testing.assert_close(cos, expected)


def test_absent_task_is_nan_and_the_rest_is_exact(vmapped: bool) -> None:
    net, losses, present = _setup([True, False, True], seed=1)
    cos = task_gradient_cosine(losses, present, list(net.shared()))
    assert torch.isnan(cos[1]).all() and torch.isnan(cos[:, 1]).all()
    torch.testing.assert_close(cos[[[0], [2]], [0, 2]], _expected(net, losses, [0, 2]))


def test_a_task_with_a_zero_gradient_is_nan_not_a_number_from_noise() -> None:
    net, _, _ = _setup([True, True, True])
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    z = net.trunk(x)
    losses = torch.stack([net.heads[0](z).logsumexp(1).mean(), net.heads[1](z).sum() * 0,
                          net.heads[2](z).pow(2).mean()])  # fmt: skip
    cos = task_gradient_cosine(losses, torch.ones(3, dtype=torch.bool), list(net.shared()))
    assert torch.isnan(cos[1]).all() and torch.isnan(cos[:, 1]).all()
    assert torch.isfinite(cos[[[0], [2]], [0, 2]]).all()
    torch.testing.assert_close(cos[0, 0], torch.tensor(1.0, dtype=torch.float64))


def test_no_grad_written_and_graph_kept_or_freed_as_asked(vmapped: bool) -> None:
    net, losses, present = _setup([True, True, True])
    shared = list(net.shared())
    task_gradient_cosine(losses, present, shared)
    assert all(p.grad is None for p in net.parameters())
    losses.sum().backward()  # the graph was retained for the real backward
    net2, losses2, present2 = _setup([True, True, True])
    task_gradient_cosine(losses2, present2, list(net2.shared()), retain_graph=vmapped)
    if not vmapped:  # the per-task loop frees the graph on its last task when asked to
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            losses2.sum().backward()


# ---------------------------------------------------------------------------- logging rate
TASKS = (
    TaskSchema("a", TaskKind.MULTICLASS, "a", classes=("0", "1", "2")),
    TaskSchema("b", TaskKind.BINARY, "b", classes=("no", "yes")),
)


def _split(n: int, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8)
    return SplitData(torch.from_numpy(img), {"a": rng.integers(0, 3, n).astype(np.float32),
                                             "b": rng.integers(0, 2, n).astype(np.float32)})


@pytest.mark.parametrize(("grad_accum", "every", "epochs"), [(1, 4, 2), (2, 2, 3)])
def test_conflict_is_measured_once_per_period_of_optimiser_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grad_accum: int, every: int, epochs: int
) -> None:
    """Every ``log_conflict_every`` optimiser steps across epochs, never per micro-batch.

    The real function runs (it is wrapped to count calls, not replaced). The cases tell a
    per-epoch counter (4 resp. 6 calls) and a per-micro-batch check apart from the global
    optimiser-step counter (3 resp. 5 calls).
    """
    calls: list[int] = []
    real = train_mod.task_gradient_cosine

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "task_gradient_cosine", counting)
    batches = 6  # 8 samples per batch
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.01, log_conflict_every=every,
                      grad_accum=grad_accum, checkpoint_dir=str(tmp_path / "state"),
                      backbone_kwargs={"channels": (2,), "out_features": 4},
                      architecture_kwargs={"head_hidden": 0}, resume=False)
    torch.manual_seed(0)
    fit(TASKS, _split(8 * batches, 0), _split(16, 1), cfg, 1, torch.device("cpu"))
    opt_steps = epochs * -(-batches // grad_accum)  # the last micro-batch of an epoch steps
    assert len(calls) == -(-opt_steps // every)  # steps 0, every, 2 every, ... < opt_steps
