"""The contract every multi-task architecture fulfils (trainer and weighting backends use it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from mtl.models.backbones.pretrained import PretrainedReport

__all__ = ["Backbone", "MultiTaskModel"]


class Backbone(nn.Module):
    """An image encoder: ``forward(x [B, C, H, W]) -> [B, out_features]``.

    Staged form (what MTAN and cross-stitch networks need)::

        x [B, C, H, W] -> stem -> stages[0] -> ... -> stages[S-1] -> neck -> [B, out_features]

    ``stage_channels[i]`` is the channel count of the feature map ``stages[i]`` returns and
    ``neck`` turns the last map ``[B, stage_channels[-1], h, w]`` into ``[B, out_features]``
    (global pooling, plus whatever the family puts after it, e.g. ConvNeXt's LayerNorm).

    A subclass registers its modules under any names it likes (the torchvision ones, so that a
    torchvision state dict loads without renaming) and then calls :meth:`set_structure` with
    *views* on them: the stem, the stages and the neck are plain references to registered
    modules, so they add no parameters or state-dict keys of their own. ``stem_weight_key`` is
    the state-dict key of the stem convolution's weight, the one tensor whose shape depends on
    ``in_channels`` (pretrained loading adapts it).
    """

    out_features: int
    stage_channels: tuple[int, ...]
    stem_weight_key: str = ""
    #: what loading a pretrained file did (set by ``create_backbone(..., pretrained=path)``)
    pretrained_report: PretrainedReport | None = None

    def set_structure(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        neck: nn.Module,
        stage_channels: Sequence[int],
        out_features: int,
    ) -> None:
        """Declare the staged form; every parameter must belong to exactly one part."""
        if len(stages) == 0 or len(stages) != len(stage_channels):
            raise ValueError("a backbone needs >= 1 stage and one channel count per stage")
        # A plain tuple is not registered by nn.Module.__setattr__: the views share the module
        # objects (hence parameters, train/eval mode, device moves) with the registered ones.
        self._structure: tuple[nn.Module, tuple[nn.Module, ...], nn.Module] = (
            stem,
            tuple(stages),
            neck,
        )
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.out_features = int(out_features)
        viewed = {id(p) for part in (stem, *stages, neck) for p in part.parameters()}
        owned = {id(p) for p in self.parameters()}
        if viewed != owned:
            raise ValueError(
                f"{type(self).__name__}: the stem/stages/neck views must cover exactly the "
                f"registered parameters ({len(viewed)} viewed vs {len(owned)} registered)"
            )

    @property
    def is_staged(self) -> bool:
        """Whether :meth:`set_structure` was called (MTAN and cross-stitch need the stages)."""
        return "_structure" in self.__dict__

    @property
    def stem(self) -> nn.Module:
        """``[B, C, H, W] -> [B, C0, H0, W0]`` (the input of the first stage)."""
        return self._structure[0]

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        """The stages in order; ``stages[i]`` outputs ``stage_channels[i]`` channels."""
        return self._structure[1]

    @property
    def neck(self) -> nn.Module:
        """``[B, stage_channels[-1], h, w] -> [B, out_features]``."""
        return self._structure[2]

    @property
    def num_stages(self) -> int:
        return len(self._structure[1])

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every stage's output feature map, ``[B, stage_channels[i], H_i, W_i]``."""
        h = self.stem(x)
        outs: list[Tensor] = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.forward_stages(x)[-1])


class MultiTaskModel(nn.Module, ABC):
    """A model with a shared part and one output per task.

    ``forward(x, features)`` returns ``{task_name: output}`` where an output is ``[B, K]`` for a
    multiclass task with K classes and ``[B, 1]`` otherwise. ``features`` are the tabular
    features chosen by the select stage, ``[B, F]`` (``None`` when there are none).

    Architectures whose shared computation ends in one tensor (hard sharing, MMoE) expose it:
    ``encode`` returns that shared representation ``z`` and ``decode(z)`` the task outputs, with
    ``forward == decode(encode(...))``; representation-level weighting backends differentiate
    the task losses with respect to ``z``. Others set ``supports_representation = False``.
    """

    supports_representation: bool = True

    @abstractmethod
    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor: ...

    @abstractmethod
    def decode(self, z: Tensor) -> dict[str, Tensor]: ...

    def forward(self, x: Tensor, features: Tensor | None = None) -> dict[str, Tensor]:
        return self.decode(self.encode(x, features))

    @abstractmethod
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters every task's loss depends on (what gradient-level methods balance)."""

    @abstractmethod
    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters only ``task``'s loss depends on (its head)."""
