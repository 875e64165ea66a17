"""Helpers for the weighting tests: a tiny 3-task model fulfilling ``MultiTaskModel``."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mtl.models.base import MultiTaskModel
from mtl.tasks import TaskKind, TaskSchema, head_size, masked_task_loss
from mtl.weighting import get_weighting_class, list_weightings

TASKS = (
    TaskSchema("shape", TaskKind.MULTICLASS, "shape", classes=("a", "b", "c")),
    TaskSchema("flag", TaskKind.BINARY, "flag"),
    TaskSchema("size", TaskKind.REGRESSION, "size"),
)


class TinyModel(MultiTaskModel):
    """Hard sharing: ``x [B, 5] -> z [B, 6] -> one linear head per task``."""

    def __init__(self, tasks: tuple[TaskSchema, ...] = TASKS) -> None:
        super().__init__()
        self.tasks = tasks
        self.backbone = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.ModuleDict({t.name: nn.Linear(6, head_size(t)) for t in tasks})

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {name: head(z) for name, head in self.heads.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.heads[task].parameters()

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for t in self.tasks for p in self.task_parameters(t.name)]


def make_batch(
    batch: int = 16, absent: tuple[int, ...] = (), dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``x [B, 5]`` and ``targets [B, 3]`` (NaN = missing; tasks in ``absent`` fully missing)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=g, dtype=dtype)
    y = torch.stack(
        [
            torch.randint(0, 3, (batch,), generator=g).float(),
            torch.randint(0, 2, (batch,), generator=g).float(),
            torch.randn(batch, generator=g),
        ],
        dim=1,
    )
    y[: batch // 4, 1] = float("nan")  # partial labels inside a present task
    for t in absent:
        y[:, t] = float("nan")
    return x, y


def compute_losses(model: TinyModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(losses [T], present [T], z)`` with the pipeline's masked losses."""
    z = model.encode(x)
    out = model.decode(z)
    losses, present = [], []
    for i, t in enumerate(model.tasks):
        loss, n = masked_task_loss(t, out[t.name], y[:, i])
        losses.append(loss.to(x.dtype))
        present.append(n > 0)
    return torch.stack(losses), torch.tensor(present), z


def method_backend_cases() -> list[tuple[str, str]]:
    """Every registered method x each backend it supports (loss level: one case)."""
    cases = []
    for name in list_weightings():
        cls = get_weighting_class(name)
        cases += [(name, b) for b in cls.backends] if cls.level == "gradient" else [(name, "full")]
    return cases


CASES = method_backend_cases()
CASE_IDS = [f"{n}-{b}" for n, b in CASES]


_F64 = torch.float64
#: five consecutive batches' per-task gradients (3 tasks, P = 4), shared by the known-answer
#: and mutation-kill tests of the stateful methods
BATCHES = [
    torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, -1.0, 1.0], [-1.0, 2.0, 0.0, 0.5]], dtype=_F64),
    torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=_F64),
    torch.tensor([[0.0, 0.0, 1.0, 3.0], [1.0, -2.0, 0.0, 0.0], [-1.0, 0.0, 2.0, 1.0]], dtype=_F64),
    torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 1.0, 0.0]], dtype=_F64),
    torch.tensor([[-1.0, 0.0, 1.0, 2.0], [2.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]], dtype=_F64),
]

