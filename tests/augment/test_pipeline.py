"""The augment stage: albumentations' own serialization, seeding and shard output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl.augment import augment, build_transform, preview_grid
from mtl.config import AugmentConfig, CleanConfig, SelectConfig
from mtl.data.clean import clean
from mtl.data.select import select
from mtl.shards import load_shards

AFFINE = {"__class_fullname__": "Affine", "rotate": [-20, 20], "p": 1.0}


def test_unknown_transform_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown albumentations transform 'Nope'"):
        build_transform([{"__class_fullname__": "Nope"}])


def test_invalid_argument_is_an_error_not_a_warning() -> None:
    with pytest.raises(ValueError, match="rotat"):
        build_transform([{"__class_fullname__": "Affine", "rotat": 3, "p": 1.0}])


def test_transform_is_seeded() -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 1), dtype=np.uint8)
    a = build_transform([AFFINE], seed=5)(image=img)["image"]
    b = build_transform([AFFINE], seed=5)(image=img)["image"]
    c = build_transform([AFFINE], seed=6)(image=img)["image"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augment_writes_shards_and_only_train_is_augmented(make_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds, root = make_dataset(n=20, split=True)
    manifest = clean(ds, CleanConfig(min_size=4, workers=1)).manifest
    splits = select(manifest, ds, SelectConfig()).splits
    cfg = AugmentConfig(image_size=(12, 12), copies=2, transforms=(AFFINE,), shard_size=7)
    out = tmp_path / "aug"
    result = augment(splits, root, "L", cfg, out)
    n_train = len(splits["train"])
    assert result.counts == {"train": 3 * n_train, "val": len(splits["val"]),
                             "test": len(splits["test"])}
    images, labels = load_shards(out / "train")
    assert images.shape == (3 * n_train, 12, 12, 1) and images.dtype == np.uint8
    assert len(list((out / "train").glob("images-*.npy"))) == -(-3 * n_train // 7)
    assert sorted(labels["copy"].unique()) == [0, 1, 2]
    # Copies carry their source's labels.
    first = labels[labels["id"] == labels["id"][0]]
    assert len(first) == 3 and first["a"].nunique() == 1
    _, val_labels = load_shards(out / "val")
    assert set(val_labels["copy"]) == {0}
    # Same seed, same bytes.
    again = augment(splits, root, "L", cfg, tmp_path / "aug2")
    assert again.counts == result.counts
    assert np.array_equal(load_shards(tmp_path / "aug2" / "train")[0], images)
    assert preview_grid(images[:10]).size[0] > 0


def test_labels_table_round_trip(make_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds, root = make_dataset(n=6)
    manifest = clean(ds, CleanConfig(min_size=4, workers=1)).manifest
    splits = select(manifest, ds, SelectConfig(val_fraction=0.2, test_fraction=0.2)).splits
    augment(splits, root, "RGB", AugmentConfig(image_size=(8, 8)), tmp_path / "a")
    images, labels = load_shards(tmp_path / "a" / "test")
    assert images.shape[1:] == (8, 8, 3)
    assert isinstance(labels, pd.DataFrame)
