"""The augment stage's on-disk format, shared by the stage that writes it and those that read it.

One folder per split holds ``images-00000.npy``, ``images-00001.npy``, … (``[n, H, W, C]``
uint8, at most ``augment.shard_size`` images each) and a row-aligned ``labels.parquet``; the
output root holds ``meta.json`` (``image_size``, ``channels``, ``mode``, per-split ``counts``).
Torch-free, so the augment stage does not pay for importing torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtl.data.io import DataError, read_json

__all__ = ["SHARD_PATTERN", "load_shards"]

SHARD_PATTERN = "images-{:05d}.npy"


def load_shards(split_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All shards of one split as ``[N, H, W, C]`` uint8 and its labels table (row-aligned).

    Raises :class:`DataError` when the shards and the labels table disagree in length (a
    partial or stale augment output).
    """
    shards = sorted(split_dir.glob("images-*.npy"))
    labels = pd.read_parquet(split_dir / "labels.parquet")
    if not shards:
        meta = read_json(split_dir.parent / "meta.json")
        h, w = meta["image_size"]
        return np.zeros((0, h, w, meta["channels"]), np.uint8), labels
    images = np.concatenate([np.load(s, mmap_mode="r") for s in shards])
    if len(images) != len(labels):
        raise DataError(f"{split_dir}: expected one label row per image, found {len(images)} "
                        f"images and {len(labels)} label rows; rerun the augment stage")
    return images, labels
