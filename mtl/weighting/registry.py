"""The registry of weighting methods: ``@register_weighting(name)`` and ``create_weighting``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from mtl.weighting.base import Weighting

__all__ = ["create_weighting", "get_weighting_class", "list_weightings", "register_weighting"]

_REGISTRY: dict[str, type[Weighting]] = {}

W = TypeVar("W", bound=type[Weighting])


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_weighting(name: str) -> Callable[[W], W]:
    """Class decorator registering a :class:`Weighting` subclass under ``name``."""

    def deco(cls: W) -> W:
        key = _canonical(name)
        if not (isinstance(cls, type) and issubclass(cls, Weighting)):
            raise TypeError(f"@register_weighting({name!r}) must decorate a Weighting subclass")
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"weighting {key!r} is already registered by {_REGISTRY[key]}")
        if cls.level == "gradient" and not cls.backends:
            raise ValueError(f"gradient-level weighting {key!r} declares no backends")
        _REGISTRY[key] = cls
        cls.registered_name = key  # type: ignore[attr-defined]
        return cls

    return deco


def list_weightings() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_REGISTRY)


def get_weighting_class(name: str) -> type[Weighting]:
    """The class registered under ``name``; ``ValueError`` listing the valid names otherwise."""
    key = _canonical(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown weighting {name!r}; valid names: {', '.join(list_weightings())}")
    return _REGISTRY[key]


def hyperparameters(cls: type[Weighting]) -> dict[str, Any]:
    """``{name: default}`` of the keyword hyperparameters of ``cls.__init__``."""
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in ("self", "num_tasks")
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def create_weighting(name: str, num_tasks: int, **hparams: Any) -> Weighting:
    """Instantiate the method ``name`` for ``num_tasks`` tasks with keyword ``hparams``.

    Raises ``ValueError`` for an unknown name (listing the valid names) and ``TypeError`` for a
    hyperparameter the method does not take (listing the ones it does).
    """
    cls = get_weighting_class(name)
    valid = hyperparameters(cls)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise TypeError(
            f"weighting {_canonical(name)!r} got unknown hyperparameter(s) {unknown}; "
            f"it accepts: {accepted}"
        )
    return cls(num_tasks, **hparams)
