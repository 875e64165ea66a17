"""Device selection shared by train, evaluate and predict."""

from __future__ import annotations

import torch

__all__ = ["select_device"]


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit device that is absent is an error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is available "
                           "(use 'auto' to fall back to the CPU)")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)
