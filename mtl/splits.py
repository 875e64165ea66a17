"""One split of the augment stage's output, as train and evaluate consume it, and the
``torch.utils.data`` loader that feeds it to the model batch by batch.

The augment stage writes ``<split>/images-*.npy`` shards (``[n, H, W, C]`` uint8) and a
row-aligned ``<split>/labels.parquet``; this module reads them without importing the augment
stage's writer, so train and evaluate do not depend on it. Images are streamed by default: a
:class:`~mtl.shards.ShardedImages` memory-maps the shards and a batch is copied out only when
the loader asks for it (``train.loader: memory`` reads them into one tensor instead, the
pre-streaming path kept for comparison). With online augmentation (``meta.json`` ``online``)
the training split also carries the serialized albumentations pipeline, applied per sample in
the loader workers (:class:`BatchDataset`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mtl.data.io import DataError, read_json
from mtl.schema import TaskSchema
from mtl.shards import TRANSFORM_FILE, ShardedImages, load_shards, open_shards
from mtl.tasks import kind_spec

__all__ = [
    "Batch",
    "BatchDataset",
    "BatchFeed",
    "BatchKey",
    "EpochKeys",
    "SplitData",
    "feature_columns",
    "load_shards",
    "load_split_data",
    "target_array",
]

#: A training batch's key: ``(epoch, sample indices [B])`` (the epoch seeds online augmentation).
BatchKey = tuple[int, Tensor]
#: ``(images [B, H, W, C] uint8, features [B, F] float32 or None, per-task targets [B](, K),
#: per-task teacher outputs [B, K] float32 or None)`` (teachers: ``train.distill``).
Batch = tuple[Tensor, Tensor | None, list[Tensor], list[Tensor] | None]
#: ``(images [B, H, W, C] uint8, sample indices [B], epoch) -> augmented images, same shape``.
Augmenter = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class SplitData:
    """One split: ``images [N, H, W, C]`` uint8 (a tensor in memory, or memory-mapped shards),
    ``targets {task: [N] or [N, K]}`` float32 (NaN = missing; ``[N, K]`` multi-hot for multilabel
    tasks), the selected tabular ``features [N, F]`` float32 (``None`` when there are none),
    for online augmentation the serialized albumentations ``transform`` (``A.to_dict``) and, when
    the model is distilled (``train.distill``), the ``teacher`` outputs ``{task: [N, K]}``
    float32, row-aligned with the targets (:mod:`mtl.distill`)."""

    images: Tensor | ShardedImages
    targets: dict[str, np.ndarray]
    features: Tensor | None = None
    transform: Mapping[str, Any] | None = None
    teacher: dict[str, np.ndarray] | None = None
    #: With online augmentation, the views of each image in one epoch, as the offline stage
    #: writes them to disk: the original (``augment.keep_original``) and ``copies`` augmented
    #: variants (``augment.copies``), so online and offline train on as many samples per epoch.
    copies: int = 1
    keep_original: bool = False

    def __len__(self) -> int:
        return len(self.images)

    def epoch_size(self) -> int:
        """Samples in one training epoch: ``N``, or ``N * (keep_original + copies)`` with online
        augmentation. Sample ``j`` is image ``j % N`` in view ``j // N`` (view 0 is the
        un-augmented original when ``keep_original``)."""
        if self.transform is None:
            return len(self)
        return len(self) * (int(self.keep_original) + self.copies)

    def target_tensors(self, tasks: Sequence[TaskSchema]) -> list[Tensor]:
        """Per task, in order: ``[N]`` or ``[N, K]`` (multilabel) float32, NaN = missing."""
        return [torch.from_numpy(np.array(self.targets[t.name], dtype=np.float32))  # a copy
                for t in tasks]

    def teacher_tensors(self, tasks: Sequence[TaskSchema]) -> list[Tensor] | None:
        """Per task, in order: the teacher outputs ``[N, K]`` float32 (None: no teacher)."""
        if self.teacher is None:
            return None
        return [torch.from_numpy(np.array(self.teacher[t.name], dtype=np.float32))
                for t in tasks]

    def image_batch(self, idx: np.ndarray) -> Tensor:
        """``[B, H, W, C]`` uint8 of the images at ``idx`` (a copy; nothing else is read)."""
        if isinstance(self.images, Tensor):
            return self.images[torch.from_numpy(idx)]
        return torch.from_numpy(self.images[idx])

    def fingerprint(self) -> str:
        """SHA-256 of the full content: every pixel, target and feature, their shapes, the
        online transform and the teacher outputs. The same pixels give the same digest in
        memory or streamed."""
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        if isinstance(self.images, Tensor):
            h.update(np.ascontiguousarray(self.images.numpy()).data)
        else:
            for shard in self.images.shards:  # hashed through the map: no copy in memory
                h.update(np.ascontiguousarray(shard).data)
        for name in sorted(self.targets):
            y = np.ascontiguousarray(self.targets[name])
            h.update(f"{name}:{y.dtype}:{y.shape}".encode())
            h.update(y.tobytes())
        if self.features is not None:
            h.update(str(tuple(self.features.shape)).encode())
            h.update(np.ascontiguousarray(self.features.numpy()).tobytes())
        if self.transform is not None:
            h.update(json.dumps(self.transform, sort_keys=True).encode())
            if (self.copies, self.keep_original) != (1, False):  # (1, False): the digest as before
                h.update(f"views:{self.copies}:{self.keep_original}".encode())
        if self.teacher is not None:  # absent: the digest of a split without teachers is unchanged
            for name in sorted(self.teacher):
                a = np.ascontiguousarray(self.teacher[name], dtype=np.float32)
                h.update(f"teacher:{name}:{a.shape}".encode())
                h.update(a.tobytes())
        return h.hexdigest()


class BatchDataset(Dataset[Batch]):
    """A map-style dataset whose item is a whole batch: ``dataset[(epoch, indices)]``.

    Reading a batch at once costs one fancy index per shard instead of one per image. Targets,
    features and teacher outputs (``train.distill``) are held in memory and indexed by the
    same rows; images are read from ``data.images``
    at each call, and augmented by ``augment`` (seeded per sample from the epoch and the sample
    index, so the result does not depend on which worker reads the batch).
    """

    def __init__(self, data: SplitData, tasks: Sequence[TaskSchema],
                 augment: Augmenter | None = None) -> None:
        self.data = data
        self.targets = data.target_tensors(tasks)
        self.teacher = data.teacher_tensors(tasks)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: BatchKey) -> Batch:
        epoch, idx = key  # idx [B]: samples in [0, data.epoch_size()), image idx % N
        n = len(self.data)
        row_idx = idx % n
        images = self.data.image_batch(row_idx.numpy())  # [B, H, W, C] uint8, a copy
        if self.augment is not None:
            samples = idx.numpy()
            # augmented views: all but view 0 when the original is kept; each sample (image,
            # view) has its own seed, so the views of one image differ
            todo = samples // n >= int(self.data.keep_original)
            if todo.any():
                pixels = images.numpy()
                pixels[todo] = self.augment(pixels[todo], samples[todo], epoch)
        f = self.data.features[row_idx] if self.data.features is not None else None
        teacher = None if self.teacher is None else [s[row_idx] for s in self.teacher]
        return images, f, [t[row_idx] for t in self.targets], teacher


def _as_is(batch: Any) -> Any:
    return batch  # the dataset already returns whole batches (a picklable top-level function)


class EpochKeys(Sampler[BatchKey]):
    """The batch keys of the current epoch, replaced before each pass over the loader: the
    sampler is iterated in the main process, so persistent workers keep their dataset (and
    its augmentation pipeline) while every epoch gets its own order."""

    def __init__(self) -> None:
        self.keys: list[BatchKey] = []

    def __iter__(self) -> Iterator[BatchKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class BatchFeed:
    """A split's batch loader for a whole run: ``workers`` processes (0: this process), started
    once and kept across epochs (starting them costs more than a small epoch), each
    prefetching two batches; pinned memory when ``pin_memory`` (CUDA), so the host-to-device
    copies are asynchronous.

    The loader gets its own generator, so iterating it never draws from the global torch RNG
    (which the training state saves and restores): the stream is the same for any ``workers``.
    """

    def __init__(self, dataset: BatchDataset, workers: int, pin_memory: bool) -> None:
        self.dataset = dataset
        self.sampler = EpochKeys()
        self.loader: DataLoader[Batch] = DataLoader(
            dataset, sampler=self.sampler, batch_size=None, collate_fn=_as_is,
            num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
            prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(0))

    def epoch(self, keys: Sequence[BatchKey]) -> Iterator[Batch]:
        """The batches of ``keys``, in order."""
        self.sampler.keys = list(keys)
        return iter(self.loader)


def feature_columns(schema: Mapping[str, Any]) -> list[str]:
    """The tabular feature columns the select stage kept (``schema.json``'s ``features``)."""
    return [f["column"] for f in schema.get("features", [])]


def target_array(column: Any, task: TaskSchema) -> np.ndarray:
    """``[N]`` float32, or ``[N, K]`` for a multilabel list column (a missing row is NaN)."""
    return kind_spec(task).target_array(column, task)


def _online_transform(augmented: Path) -> tuple[dict[str, Any] | None, int, bool]:
    """The serialized pipeline training applies, when the augment stage ran online, and the
    views of each image per epoch (``copies``, ``keep_original``; meta.json's ``views``)."""
    meta = read_json(augmented / "meta.json")
    if not meta.get("online", False):
        return None, 1, False
    path = augmented / TRANSFORM_FILE
    if not path.is_file():
        raise DataError(f"{augmented}: meta.json says online augmentation, expected "
                        f"{TRANSFORM_FILE} next to it, found none; rerun the augment stage")
    transform: dict[str, Any] = read_json(path)
    # absent: an output of the augment stage before views (one variant per image, no original)
    views = meta.get("views", {"copies": 1, "keep_original": False})
    copies, keep = (views.get("copies"), views.get("keep_original")) if isinstance(
        views, dict) else (None, None)
    if not (isinstance(copies, int) and not isinstance(copies, bool) and copies >= 1
            and isinstance(keep, bool)):
        raise DataError(f"{augmented}/meta.json: expected views {{copies: int >= 1, "
                        f"keep_original: bool}}, found {views!r}; rerun the augment stage")
    return transform, copies, keep


def load_split_data(augmented: Path, split: str, tasks: Sequence[TaskSchema],
                    features: Sequence[str] = (), stream: bool = True) -> SplitData:
    """Read ``augmented/<split>`` (shards and labels) into a :class:`SplitData`: images
    memory-mapped (``stream``) or in one tensor; the training split of an online-augmented
    output carries its transform."""
    if stream:
        images: Tensor | ShardedImages
        images, labels = open_shards(augmented / split)
    else:
        array, labels = load_shards(augmented / split)
        images = torch.from_numpy(np.ascontiguousarray(array))
    feats = None
    if features:
        missing = [c for c in features if c not in labels.columns]
        if missing:
            raise DataError(f"{augmented / split}: expected the feature columns listed in "
                            f"schema.json, found {missing} missing; rerun the augment stage")
        feats = torch.from_numpy(labels[list(features)].to_numpy(dtype="float32"))
    absent = [t.name for t in tasks if t.name not in labels.columns]
    if absent:
        raise DataError(f"{augmented / split}: expected a label column per task, found none for "
                        f"{absent}; rerun the augment stage")
    transform, copies, keep = (_online_transform(augmented) if split == "train"
                               else (None, 1, False))
    return SplitData(images, {t.name: target_array(labels[t.name], t) for t in tasks}, feats,
                     transform, copies=copies, keep_original=keep)
