"""augment stage: offline albumentations pipeline declared in ``params.yaml``.

The pipeline is built with albumentations' own serialization (``A.from_dict``): each entry of
``augment.transforms`` is a serialized transform (``__class_fullname__`` plus its arguments), so
every albumentations transform is available without a hand-written name table. The training
split gets ``copies`` augmented versions of each image (plus the original when
``keep_original``); val and test get only the deterministic resize.
"""

from __future__ import annotations

from mtl.augment.pipeline import (
    AugmentResult,
    augment,
    build_transform,
    preview_grid,
)

__all__ = ["AugmentResult", "augment", "build_transform", "preview_grid"]
