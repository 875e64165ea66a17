"""The augment stage's on-disk format, shared by the stage that writes it and those that read it.

One folder per split holds ``images-00000.npy``, ``images-00001.npy``, … (``[n, H, W, C]``
uint8, at most ``augment.shard_size`` images each) and a row-aligned ``labels.parquet``; the
output root holds ``meta.json`` (``image_size``, ``channels``, ``mode``, ``online``, per-split
``counts``) and, with online augmentation, ``transform.json`` (the serialized albumentations
pipeline training applies). Torch-free, so the augment stage does not pay for importing torch.

:class:`ShardedImages` is the streamed view train and evaluate read: every shard is a memory
map, and a batch is copied out of the maps only when it is asked for, so the process's own
(anonymous) memory does not grow with the number of images; the pages it reads are file cache.
:class:`OnlineAugment` applies ``transform.json`` as training reads the images (here, shared by
the augment stage's preview and the training loader, since no stage imports another).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl.data.images import resize_image
from mtl.data.io import DataError, read_json

__all__ = ["SHARD_PATTERN", "TRANSFORM_FILE", "OnlineAugment", "ShardedImages", "augment_image",
           "load_shards", "open_shards", "sample_seed"]

SHARD_PATTERN = "images-{:05d}.npy"
#: The serialized albumentations pipeline (``A.to_dict``) of an online-augmented output.
TRANSFORM_FILE = "transform.json"


class ShardedImages:
    """``[N, H, W, C]`` uint8 images spread over ``.npy`` shards, read through memory maps.

    Indexing with an int array or a slice returns a new ``[B, H, W, C]`` array (a copy of just
    those images); ``len`` and ``shape`` are the whole split's. Picklable by path: a loader
    worker started with ``spawn`` reopens the maps instead of receiving the pixels.
    """

    def __init__(self, paths: list[Path], image_shape: tuple[int, int, int]) -> None:
        self.paths = list(paths)
        self._maps = [np.load(p, mmap_mode="r") for p in self.paths]
        for p, m in zip(self.paths, self._maps, strict=True):
            if m.dtype != np.uint8 or m.ndim != 4 or tuple(m.shape[1:]) != image_shape:
                raise DataError(f"{p}: expected a [n, {', '.join(map(str, image_shape))}] "
                                f"uint8 shard, found {m.dtype} {list(m.shape)}; rerun the "
                                "augment stage")
        self.image_shape = image_shape
        # offsets[k] = index of shard k's first image; offsets[-1] = N
        self.offsets = np.cumsum([0] + [len(m) for m in self._maps], dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "image_shape": self.image_shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"], state["image_shape"])  # type: ignore[misc]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.image_shape)

    @property
    def shards(self) -> list[np.ndarray]:
        """The memory maps, one ``[n, H, W, C]`` per shard, in order."""
        return list(self._maps)

    def __getitem__(self, key: slice | np.ndarray | Any) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        idx = np.asarray(key, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"expected image indices in [0, {len(self)}), found "
                             f"[{idx.min()}, {idx.max()}]")
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1  # [B] shard of each index
        for k in np.unique(shard):
            rows = np.flatnonzero(shard == k)
            # one fancy index per shard touches only the pages of the wanted images
            out[rows] = self._maps[k][idx[rows] - self.offsets[k]]
        return out


def augment_image(transform: Any, img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``transform`` (an albumentations pipeline) applied to ``img [H, W, C]`` uint8, resized back
    to ``size`` ``[h, w, C]``.

    Geometric transforms may return another size (e.g. crops); every image of a split keeps
    the split's geometry, so batches stack.
    """
    out = transform(image=img)["image"]
    out = out[:, :, None] if out.ndim == 2 else out
    return resize_image(np.ascontiguousarray(out, dtype=np.uint8), size)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded ``seed``: a pure
    function of the three, so neither the worker that reads the sample nor a resume changes
    it, and hashed (``SeedSequence``) so that neighbouring triples give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint32)[0])


class OnlineAugment:
    """Online augmentation of a batch: each sample gets the serialized pipeline ``transform``
    (``A.to_dict``), seeded by :func:`sample_seed` and resized back to ``image_size``.

    Picklable (the pipeline is rebuilt from its dict in each process that uses it), so it runs
    in ``DataLoader`` worker processes.
    """

    def __init__(self, transform: Mapping[str, Any], image_size: tuple[int, int],
                 seed: int) -> None:
        self.spec = dict(transform)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = seed
        self._transform: Any = None  # the A.Compose, built on first use in each process

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_transform": None}

    def __call__(self, images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
        """``images [B, H, W, C]`` uint8 of samples ``indices [B]`` -> augmented, same shape."""
        if self._transform is None:
            import albumentations as A  # only where online augmentation runs

            self._transform = A.from_dict(self.spec)
        out = np.empty((len(images), *self.image_size, images.shape[3]), np.uint8)
        for k, (img, i) in enumerate(zip(images, indices, strict=True)):
            self._transform.set_random_seed(sample_seed(self.seed, epoch, int(i)))
            out[k] = augment_image(self._transform, img, self.image_size)
        return out


def open_shards(split_dir: Path) -> tuple[ShardedImages, pd.DataFrame]:
    """One split as memory-mapped :class:`ShardedImages` and its labels table (row-aligned).

    Raises :class:`DataError` when the shards and the labels table disagree in length (a
    partial or stale augment output).
    """
    shards = sorted(split_dir.glob("images-*.npy"))
    labels = pd.read_parquet(split_dir / "labels.parquet")
    if shards:  # every shard must have the first one's image shape
        shape = tuple(int(d) for d in np.load(shards[0], mmap_mode="r").shape[1:])
    else:  # no image to tell the shape: the stage's meta.json does
        meta = read_json(split_dir.parent / "meta.json")
        shape = (*(int(d) for d in meta["image_size"]), int(meta["channels"]))
    if len(shape) != 3:
        raise DataError(f"{shards[0]}: expected [n, H, W, C] images, found shape {list(shape)}; "
                        "rerun the augment stage")
    images = ShardedImages(shards, (shape[0], shape[1], shape[2]))
    if len(images) != len(labels):
        raise DataError(f"{split_dir}: expected one label row per image, found {len(images)} "
                        f"images and {len(labels)} label rows; rerun the augment stage")
    return images, labels


def load_shards(split_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All shards of one split in memory as ``[N, H, W, C]`` uint8 and its labels table.

    For small splits and tools; the stages stream through :func:`open_shards`. Raises
    :class:`DataError` when the shards and the labels table disagree in length.
    """
    images, labels = open_shards(split_dir)
    if not len(images):
        return np.zeros((0, *images.image_shape), np.uint8), labels
    return np.concatenate(images.shards), labels
