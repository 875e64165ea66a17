"""Loading a local state-dict file into a backbone (never a download).

The file may hold a plain state dict, or a dict with the state dict under ``"state_dict"`` or
``"model"``; keys may carry a ``module.`` (DDP) and/or ``backbone.`` (an mtl model) prefix. Keys
are matched against the backbone's own state dict, which for the torchvision families uses the
torchvision names, so an ImageNet checkpoint of the same torchvision model loads as is (its
classifier keys are reported as ignored).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from mtl.checkpoint import safe_load
from mtl.models.base import Backbone

__all__ = ["PretrainedReport", "adapt_input_conv", "load_pretrained"]

log = logging.getLogger(__name__)

_PREFIXES = ("", "module.", "backbone.", "module.backbone.")
# Keys of a torchvision classification head: expected to be in an ImageNet file, never used.
_HEAD_PREFIXES = ("fc.", "classifier.")


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did with each key of the file."""

    path: str
    loaded: list[str] = field(default_factory=list)
    #: in the backbone but not in the file (left at their random initialisation)
    missing: list[str] = field(default_factory=list)
    #: in the file but not in the backbone (ignored); classifier-head keys are in ``ignored_head``
    unexpected: list[str] = field(default_factory=list)
    ignored_head: list[str] = field(default_factory=list)
    #: loaded after adapting the stem convolution to another channel count
    adapted: list[str] = field(default_factory=list)
    #: present in both with incompatible shapes (``"key: file (..) vs model (..)"``), not loaded
    skipped: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every backbone tensor was loaded and no file key was unexplained."""
        return not (self.missing or self.unexpected or self.skipped)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        parts = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        for label, keys in (
            ("adapted stem", self.adapted),
            ("missing (kept random init)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("shape mismatch (kept random init)", self.skipped),
            ("classifier head (ignored)", self.ignored_head),
        ):
            if keys:
                parts.append(f"{label} [{len(keys)}]: {few(keys)}")
        return "; ".join(parts)


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a stem conv weight ``[O, C, kh, kw]`` to ``[O, in_channels, kh, kw]``.

    One channel: the filters are summed over the C input channels, so a grey image gives the
    same response as the original network on that image replicated to C channels. Otherwise the
    filters are repeated cyclically and scaled by ``C / in_channels`` (the timm convention),
    which keeps the expected activation magnitude.
    """
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / c)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c / in_channels)


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def load_pretrained(
    backbone: Backbone, path: str | os.PathLike[str], *, strict: bool = False
) -> PretrainedReport:
    """Load the local state-dict file ``path`` into ``backbone`` and report what happened.

    Loaded with ``torch.load(path, weights_only=True, map_location="cpu")`` (a pickle payload
    is refused with ``mtl.checkpoint.CheckpointError``, never run). The stem weight
    (``backbone.stem_weight_key``) is adapted with :func:`adapt_input_conv` when only its input
    channel count differs; any other shape mismatch (e.g. a 7×7 ImageNet stem vs the 3×3
    ``small_input`` stem) leaves that tensor at its initialisation and is reported. The report
    is logged (a warning when something was missing, unexpected or skipped).

    Raises ``FileNotFoundError`` naming the path when it does not exist, ``ValueError`` when no
    key of the file matches the backbone, or (``strict=True``) when the report is not clean.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: {str(p)!r} (mtl never downloads weights; "
            "pass the path of a local state-dict file)"
        )
    raw = _extract_state_dict(safe_load(p, "train.pretrained weights file"), p)
    own = backbone.state_dict()

    # Pick the key prefix under which the file's keys best match the backbone's.
    def strip(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}

    candidates = [strip(prefix) for prefix in _PREFIXES]
    state = max(candidates, key=lambda sd: sum(k in own for k in sd))

    report = PretrainedReport(path=str(p))
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            (report.ignored_head if key.startswith(_HEAD_PREFIXES) else report.unexpected).append(
                key
            )
            continue
        target = own[key]
        if value.shape != target.shape:
            same_but_channels = (
                value.dim() == 4
                and target.dim() == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
            )
            if key == backbone.stem_weight_key and same_but_channels:
                value = adapt_input_conv(value, target.shape[1])
                report.adapted.append(key)
            else:
                report.skipped.append(
                    f"{key}: file {tuple(value.shape)} vs model {tuple(target.shape)}"
                )
                continue
        to_load[key] = value.to(dtype=target.dtype)
    if not to_load:
        raise ValueError(
            f"no key of the state dict in {str(p)!r} matches backbone {type(backbone).__name__} "
            f"(file keys e.g. {list(raw)[:5]}, backbone keys e.g. {list(own)[:5]})"
        )
    report.loaded = sorted(to_load)
    # BatchNorm's batch counter is bookkeeping, not a weight: not worth reporting as missing.
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if strict and not report.clean:
        raise ValueError(f"strict pretrained loading failed: {report.summary()}")
    backbone.load_state_dict(to_load, strict=False)
    (log.info if report.clean else log.warning)("%s", report.summary())
    return report
