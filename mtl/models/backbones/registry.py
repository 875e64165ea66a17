"""The backbone registry (timm-style): ``@register_backbone(name)`` and ``create_backbone``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from mtl.models.backbones.pretrained import load_pretrained
from mtl.models.base import Backbone

__all__ = ["BackboneBuilder", "create_backbone", "list_backbones", "register_backbone"]

#: ``builder(in_channels, **kw) -> Backbone`` with freshly initialised (never downloaded) weights.
BackboneBuilder = Callable[..., Backbone]
_B = TypeVar("_B", bound=BackboneBuilder)

_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[_B], _B]:
    """Decorator registering ``builder(in_channels: int, **kw) -> Backbone`` under ``name``."""

    def decorator(builder: _B) -> _B:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str, in_channels: int, pretrained: str | None = None, **kw: Any
) -> Backbone:
    """Build backbone ``name`` for ``in_channels``-channel images.

    ``kw`` goes to the builder (e.g. ``small_input=True``). ``pretrained`` is the path of a
    local state-dict file loaded with :func:`~mtl.models.backbones.pretrained.load_pretrained`
    (the stem is adapted when the channel count differs; the report of loaded / missing /
    unexpected keys is kept as ``backbone.pretrained_report``). Nothing is ever downloaded.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    backbone = _REGISTRY[name](in_channels, **kw)
    if pretrained is not None:
        backbone.pretrained_report = load_pretrained(backbone, pretrained)
    return backbone
