"""Pieces shared by the architectures: task heads, tabular-feature fusion, parameter helpers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureFusion",
    "TaskHeads",
    "check_heads",
    "decode_per_task",
    "make_head",
    "unique_trainable",
]


def check_heads(heads: Mapping[str, int]) -> dict[str, int]:
    """Validate ``{task: output units}`` (>= 1 task, >= 1 unit each) and copy it in order."""
    if not heads:
        raise ValueError("a multi-task model needs at least one task head")
    out: dict[str, int] = {}
    for task, size in heads.items():
        if int(size) < 1:
            raise ValueError(f"head {task!r} must have >= 1 output, got {size}")
        out[str(task)] = int(size)
    return out


def make_head(
    in_features: int, out_features: int, hidden: int = 0, dropout: float = 0.0
) -> nn.Module:
    """``[B, in] -> [B, out]``: a Linear layer, or ``Linear -> ReLU -> Dropout -> Linear``."""
    if hidden <= 0:
        return nn.Linear(in_features, out_features)
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_features),
    )


class TaskHeads(nn.Module):
    """One head per task, in the order of ``heads``.

    Held in a ``ModuleList`` (not a ``ModuleDict``) so that any task name works, including
    names with dots or names of ``ModuleDict`` methods.
    """

    def __init__(
        self, in_features: int, heads: Mapping[str, int], hidden: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tasks: list[str] = list(heads)
        self.index = {task: i for i, task in enumerate(self.tasks)}
        self.heads = nn.ModuleList(
            make_head(in_features, size, hidden, dropout) for size in heads.values()
        )

    def __getitem__(self, task: str) -> nn.Module:
        return self.heads[self.task_index(task)]

    def task_index(self, task: str) -> int:
        if task not in self.index:
            raise KeyError(f"unknown task {task!r}; tasks: {self.tasks}")
        return self.index[task]

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        """The same ``z [B, D]`` into every head: ``{task: [B, K_task]}``."""
        return {task: head(z) for task, head in zip(self.tasks, self.heads, strict=True)}


class FeatureFusion(nn.Module):
    """Fuses tabular features into an image representation by concatenation.

    ``fuse(h [B, D], f [B, F]) = concat(h, mlp(f)) [B, D + hidden]`` with
    ``mlp = Linear(F, hidden) -> ReLU -> Linear(hidden, hidden) -> ReLU``; the heads (or the
    MMoE experts) after it mix both parts. With ``num_features == 0`` it is the identity and
    ``features`` must be ``None``.
    """

    def __init__(self, in_features: int, num_features: int, hidden: int = 64) -> None:
        super().__init__()
        if num_features < 0:
            raise ValueError(f"num_features must be >= 0, got {num_features}")
        self.num_features = num_features
        self.mlp: nn.Module | None = None
        self.out_features = in_features
        if num_features > 0:
            self.mlp = nn.Sequential(
                nn.Linear(num_features, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
            )
            self.out_features = in_features + hidden

    def check(self, features: Tensor | None, batch: int) -> None:
        """Raise a clear ``ValueError`` when ``features`` does not fit the model."""
        if self.mlp is None:
            if features is not None:
                raise ValueError(
                    "this model was built with num_features=0 but received tabular features"
                )
            return
        if features is None:
            raise ValueError(
                f"this model was built with num_features={self.num_features} and needs "
                "the tabular features ([B, F])"
            )
        if features.dim() != 2 or features.shape != (batch, self.num_features):
            raise ValueError(
                f"features must be [B={batch}, F={self.num_features}], got {tuple(features.shape)}"
            )

    def forward(self, h: Tensor, features: Tensor | None) -> Tensor:
        self.check(features, h.shape[0])
        if self.mlp is None or features is None:
            return h
        # [B, D] ++ [B, hidden] -> [B, D + hidden]
        return torch.cat([h, self.mlp(features.to(h.dtype))], dim=1)


def unique_trainable(*parts: nn.Module | Iterable[nn.Parameter]) -> Iterator[nn.Parameter]:
    """The trainable parameters of ``parts``, each once (modules or parameter iterables)."""
    seen: set[int] = set()
    for part in parts:
        params = part.parameters() if isinstance(part, nn.Module) else part
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p


def decode_per_task(heads: TaskHeads, z: Tensor) -> dict[str, Tensor]:
    """``z [B, T, D]`` (one representation per task, in head order) -> ``{task: [B, K_task]}``."""
    if z.dim() != 3 or z.shape[1] != len(heads.tasks):
        raise ValueError(
            f"expected per-task representations [B, T={len(heads.tasks)}, D], got {tuple(z.shape)}"
        )
    pairs = zip(heads.tasks, heads.heads, strict=True)
    return {task: head(z[:, i]) for i, (task, head) in enumerate(pairs)}
