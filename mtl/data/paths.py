"""Resolving image paths of the labels table safely inside ``dataset.dir``.

Shared by the clean stage (validation) and the augment stage (loading), so that neither stage
module imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_image_path"]


def resolve_image_path(root: Path, rel: str) -> Path | None:
    """Absolute path of ``rel`` inside ``root``; ``None`` when it (or a symlink) escapes ``root``.

    Raises ``OSError``/``RuntimeError``/``ValueError`` for a path that cannot be resolved at all
    (a symlink loop, an embedded NUL byte).
    """
    if os.path.isabs(rel):
        return None
    real_root = root.resolve()
    candidate = (root / rel).resolve()
    return candidate if candidate.is_relative_to(real_root) else None
