"""augment stage: the albumentations pipeline declared in ``params.yaml``, online or offline.

The pipeline is built with albumentations' own serialization (``A.from_dict``): each entry of
``augment.transforms`` is a serialized transform (``__class_fullname__`` plus its arguments), so
every albumentations transform is available without a hand-written name table. Online (the
default), every split gets only the deterministic resize and training applies the pipeline per
sample (:class:`OnlineAugment`); offline, the training split gets ``copies`` augmented versions
of each image (plus the original when ``keep_original``).
"""

from __future__ import annotations

from mtl.augment.pipeline import (
    AugmentResult,
    OnlineAugment,
    augment,
    augment_image,
    build_transform,
    preview_grid,
    preview_images,
    sample_seed,
)

__all__ = ["AugmentResult", "OnlineAugment", "augment", "augment_image", "build_transform",
           "preview_grid", "preview_images", "sample_seed"]
