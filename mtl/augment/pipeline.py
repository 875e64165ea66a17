"""Building the albumentations pipeline and writing augmented ``.npy`` shards.

Offline (``augment.online: false``) the training split gets ``copies`` augmented versions of
each image written to disk. Online (the default) every split is written resized only, plus the
serialized pipeline (:data:`~mtl.shards.TRANSFORM_FILE`) that training applies per sample
(:class:`OnlineAugment`), seeded from ``(train.seed, epoch, sample index)``: every epoch sees
new variants and disk does not grow with the number of variants.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from mtl.config import AugmentConfig
from mtl.data.images import load_image, resize_image
from mtl.data.io import write_json
from mtl.data.paths import resolve_image_path
from mtl.shards import (
    SHARD_PATTERN,
    TRANSFORM_FILE,
    OnlineAugment,
    augment_image,
    open_shards,
    sample_seed,
)

__all__ = [
    "AugmentResult", "OnlineAugment", "augment", "augment_image", "build_transform",
    "preview_grid", "preview_images", "resize_image", "sample_seed",
]

@dataclass(frozen=True)
class AugmentResult:
    """Per split: number of images written; and the image geometry every shard has."""

    counts: dict[str, int]
    image_size: tuple[int, int]
    channels: int


def build_transform(specs: Sequence[Mapping[str, Any]], seed: int | None = None) -> A.Compose:
    """An ``A.Compose`` from serialized transforms; unknown names or arguments raise ValueError."""
    payload = {"transform": {"__class_fullname__": "Compose", "p": 1.0,
                             "transforms": [dict(s) for s in specs]}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = A.from_dict(payload)
        except KeyError as exc:
            raise ValueError(
                f"augment.transforms: unknown albumentations transform {exc.args[0]!r} "
                "(expected a class name such as 'Affine' or 'HorizontalFlip')") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"augment.transforms: invalid transform arguments: {exc}") from exc
    bad = [str(w.message) for w in caught if "not valid for transform" in str(w.message)]
    if bad:
        raise ValueError("augment.transforms: " + "; ".join(bad))
    assert isinstance(transform, A.Compose)
    if seed is not None:
        transform.set_random_seed(seed)
    return transform


def _samples(frame: pd.DataFrame, root: Path, mode: str, size: tuple[int, int],
             transform: A.Compose | None, copies: int, keep_original: bool,
             desc: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """(row in ``frame``, copy number, image) — copy 0 is the original (resized only)."""
    for i, rel in enumerate(tqdm(frame["image"], desc=desc, unit="img", mininterval=1.0)):
        path = resolve_image_path(root, rel)
        if path is None:  # the clean stage rejects these; reaching here means a stale manifest
            raise ValueError(f"augment: {rel!r} resolves outside {root}; rerun the clean stage")
        img = resize_image(load_image(path, mode), size)
        if keep_original or transform is None:
            yield i, 0, img
        if transform is not None:
            for c in range(1, copies + 1):
                yield i, c, augment_image(transform, img, size)


def _write_split(samples: Iterator[tuple[int, int, np.ndarray]], frame: pd.DataFrame,
                 out_dir: Path, shard_size: int) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[int] = []
    copies: list[int] = []
    buf: list[np.ndarray] = []
    shard = 0

    def flush() -> None:
        nonlocal shard, buf
        if buf:
            np.save(out_dir / SHARD_PATTERN.format(shard), np.stack(buf))
            shard += 1
            buf = []

    for i, c, img in samples:
        rows.append(i)
        copies.append(c)
        buf.append(img)
        if len(buf) == shard_size:
            flush()
    flush()
    labels = frame.iloc[rows].reset_index(drop=True)
    labels.insert(1, "copy", np.asarray(copies, dtype=np.int32))
    labels.to_parquet(out_dir / "labels.parquet", index=False)
    return len(rows)


def augment(splits: Mapping[str, pd.DataFrame], dataset_dir: Path, mode: str,
            cfg: AugmentConfig, out_dir: Path) -> AugmentResult:
    """Decode, resize and augment each split into ``out_dir/<split>/`` shards and labels.

    Online (``cfg.online`` with transforms and ``copies > 0``), every split is written resized
    only and the pipeline goes to ``out_dir/transform.json`` for training to apply, with the
    views of each training image per epoch in ``meta.json`` (``views``: the original when
    ``keep_original``, and ``copies`` fresh variants): an epoch has as many samples as the
    offline copies on disk, so switching ``online`` changes where augmentation happens and how
    often the variants change, not the training budget. ``copies: 0`` augments nothing in
    either mode.
    """
    transform = build_transform(cfg.transforms, seed=cfg.seed) if cfg.transforms else None
    online = cfg.online and transform is not None and cfg.copies > 0
    channels = 1 if mode == "L" else 3
    counts: dict[str, int] = {}
    (out_dir / TRANSFORM_FILE).unlink(missing_ok=True)
    for split, frame in splits.items():
        offline_train = split == "train" and not online
        samples = _samples(frame, dataset_dir, mode, cfg.image_size,
                           transform if offline_train and cfg.copies > 0 else None,
                           cfg.copies, cfg.keep_original or not offline_train,
                           desc=f"augment: {split}")
        counts[split] = _write_split(samples, frame, out_dir / split, cfg.shard_size)
    if online:
        write_json(out_dir / TRANSFORM_FILE, A.to_dict(transform))
    result = AugmentResult(counts, cfg.image_size, channels)
    meta: dict[str, Any] = {"counts": counts, "image_size": list(cfg.image_size),
                            "channels": channels, "mode": mode, "online": online}
    if online:
        meta["views"] = {"copies": cfg.copies, "keep_original": cfg.keep_original}
    write_json(out_dir / "meta.json", meta)
    return result


def preview_images(out_dir: Path, cfg: AugmentConfig, n: int = 64) -> np.ndarray:
    """The first ``n`` training samples as training sees them, ``[n, H, W, C]`` uint8, laid out
    as the offline shards are (per image: the original with ``keep_original``, then its
    ``copies`` variants): from the shards (offline), or, online, the views training draws in
    epoch 0 (:class:`OnlineAugment` at sample ``view * N + image``, seeded from ``cfg.seed``:
    training seeds from ``train.seed``, so equal to training's when the two seeds are).
    Reads only those images from the shards."""
    images, _ = open_shards(out_dir / "train")
    path = out_dir / TRANSFORM_FILE
    if not path.is_file():
        return images[np.arange(min(n, len(images)))]
    keep = int(cfg.keep_original)
    views = keep + cfg.copies  # per image and epoch (meta.json "views")
    k = np.arange(min(n, len(images) * views))
    image, view = k // views, k % views  # [n] each: the offline layout's order
    out = images[image]
    todo = view >= keep  # view 0 is the original when it is kept: never augmented
    spec = json.loads(path.read_text())
    out[todo] = OnlineAugment(spec, cfg.image_size, cfg.seed)(
        out[todo], view[todo] * len(images) + image[todo], 0)  # training's sample indices
    return out


def preview_grid(images: np.ndarray, columns: int = 8) -> Image.Image:
    """A grid image of ``images [N, H, W, C]`` (for ``preview.png``)."""
    n = len(images)
    if n == 0:
        return Image.new("L", (1, 1))
    h, w, c = images.shape[1:]
    rows = (n + columns - 1) // columns
    grid = np.zeros((rows * (h + 2), columns * (w + 2), c), dtype=np.uint8)
    for k, img in enumerate(images):
        r, q = divmod(k, columns)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = img
    scale = max(1, 96 // h)
    pil = Image.fromarray(grid[:, :, 0] if c == 1 else grid)
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
