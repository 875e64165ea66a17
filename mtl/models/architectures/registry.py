"""The architecture registry (timm-style): ``@register_architecture(name)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from mtl.models.backbones import create_backbone, list_backbones
from mtl.models.base import Backbone, MultiTaskModel

__all__ = [
    "ArchitectureBuilder",
    "BackboneFactory",
    "create_architecture",
    "list_architectures",
    "register_architecture",
]

#: Builds a fresh backbone (pretrained weights loaded) at each call; cross-stitch calls it once
#: per task column, the others once.
BackboneFactory = Callable[[], Backbone]


class ArchitectureBuilder(Protocol):
    """``builder(make_backbone, heads, num_features, **kw) -> MultiTaskModel``."""

    def __call__(
        self, make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
    ) -> MultiTaskModel: ...


_A = TypeVar("_A", bound=ArchitectureBuilder)
_REGISTRY: dict[str, ArchitectureBuilder] = {}


def register_architecture(name: str) -> Callable[[_A], _A]:
    """Decorator registering an :class:`ArchitectureBuilder` under ``name``."""

    def decorator(builder: _A) -> _A:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_architectures() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def create_architecture(
    name: str,
    backbone_name: str,
    heads: Mapping[str, int],
    in_channels: int,
    num_features: int = 0,
    pretrained: str | None = None,
    *,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kw: Any,
) -> MultiTaskModel:
    """Build architecture ``name`` over backbone ``backbone_name``.

    ``heads`` maps each task to its number of outputs; ``num_features`` is the width F of the
    tabular features passed to ``forward`` (0: none); ``pretrained`` is a local state-dict file
    for the backbone (every backbone column for cross-stitch); ``backbone_kwargs`` go to
    :func:`~mtl.models.backbones.create_backbone` and ``kw`` to the architecture.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown architecture {name!r}; valid names: {', '.join(list_architectures())}"
        )
    bkw = dict(backbone_kwargs or {})
    # Fail on an unknown backbone name before building anything.
    if backbone_name not in list_backbones():
        raise ValueError(
            f"unknown backbone {backbone_name!r}; valid names: {', '.join(list_backbones())}"
        )

    def make_backbone() -> Backbone:
        return create_backbone(backbone_name, in_channels, pretrained=pretrained, **bkw)

    return _REGISTRY[name](make_backbone, heads, num_features, **kw)
