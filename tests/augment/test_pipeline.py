"""The augment stage: albumentations' own serialization, seeding and shard output."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mtl.augment import (
    OnlineAugment,
    augment,
    build_transform,
    preview_grid,
    preview_images,
    sample_seed,
)
from mtl.cli import main
from mtl.config import AugmentConfig, CleanConfig, SelectConfig
from mtl.data.clean import clean
from mtl.data.select import select
from mtl.shards import TRANSFORM_FILE, load_shards
from mtl.splits import BatchDataset, SplitData
from tests.conftest import REPO_ROOT

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
    cfg = AugmentConfig(image_size=(12, 12), online=False, copies=2, transforms=(AFFINE,),
                        shard_size=7)
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


def test_online_writes_originals_and_the_transform_offline_writes_copies(
        make_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds, root = make_dataset(n=20, split=True)
    manifest = clean(ds, CleanConfig(min_size=4, workers=1)).manifest
    splits = select(manifest, ds, SelectConfig()).splits
    n_train = len(splits["train"])
    cfg = AugmentConfig(image_size=(12, 12), copies=2, transforms=(AFFINE,), seed=3)
    assert cfg.online  # the default
    online = augment(splits, root, "L", cfg, tmp_path / "on")
    assert online.counts["train"] == n_train  # originals only, whatever copies says
    images, labels = load_shards(tmp_path / "on" / "train")
    assert set(labels["copy"]) == {0}
    meta = json.loads((tmp_path / "on" / "meta.json").read_text())
    assert meta["online"] is True
    # each epoch: the original and 2 fresh variants per image, as many samples as offline
    assert meta["views"] == {"copies": 2, "keep_original": True}
    # the serialized pipeline rebuilds the same transform (same output for the same seed)
    spec = json.loads((tmp_path / "on" / TRANSFORM_FILE).read_text())
    rebuilt, direct = A.from_dict(spec), build_transform([AFFINE])
    rebuilt.set_random_seed(1)
    direct.set_random_seed(1)
    assert np.array_equal(rebuilt(image=images[0])["image"], direct(image=images[0])["image"])
    # the preview shows what training draws in epoch 0 (train.seed = augment.seed = 3), laid
    # out as the offline shards are: per image its original, then its 2 variants (samples
    # image + N and image + 2 N: sample image + 0 is the original, never augmented)
    preview = preview_images(tmp_path / "on", cfg, n=8)
    assert preview.shape == (8, 12, 12, 1) and not np.array_equal(preview, images[:8])
    image, view = np.arange(8) // 3, np.arange(8) % 3
    data = SplitData(torch.from_numpy(images), {}, transform=spec, copies=2, keep_original=True)
    trained, _, _, _ = BatchDataset(data, [], OnlineAugment(spec, (12, 12), 3))[
        (0, torch.from_numpy(view * n_train + image))]
    assert np.array_equal(preview, trained.numpy())
    assert np.array_equal(preview[view == 0], images[image[view == 0]])
    # offline (into the same folder): copies on disk, no transform left behind for training
    offline = augment(splits, root, "L", dataclasses.replace(cfg, online=False), tmp_path / "on")
    assert offline.counts["train"] == 3 * n_train
    assert not (tmp_path / "on" / TRANSFORM_FILE).exists()
    assert json.loads((tmp_path / "on" / "meta.json").read_text())["online"] is False
    assert np.array_equal(preview_images(tmp_path / "on", cfg, n=8),
                          load_shards(tmp_path / "on" / "train")[0][:8])


def test_online_augment_resizes_geometry_changes_back_and_varies_by_epoch_and_sample() -> None:
    crop = build_transform([{"__class_fullname__": "RandomCrop", "height": 8, "width": 8,
                             "p": 1.0}])
    aug = OnlineAugment(A.to_dict(crop), (12, 12), seed=0)
    img = np.random.default_rng(0).integers(0, 255, (2, 12, 12, 1), dtype=np.uint8)
    same = np.stack([img[0], img[0]])
    e0 = aug(same, np.array([5, 6]), 0)
    assert e0.shape == (2, 12, 12, 1) and e0.dtype == np.uint8  # cropped, resized back
    assert not np.array_equal(e0[0], e0[1])  # two samples, two crops
    assert not np.array_equal(e0, aug(same, np.array([5, 6]), 1))  # a new epoch, new crops
    assert np.array_equal(e0, aug(same, np.array([5, 6]), 0))  # a pure function of the triple
    assert sample_seed(0, 1, 2) != sample_seed(0, 2, 1) != sample_seed(1, 1, 2)


def test_labels_table_round_trip(make_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds, root = make_dataset(n=6)
    manifest = clean(ds, CleanConfig(min_size=4, workers=1)).manifest
    splits = select(manifest, ds, SelectConfig(val_fraction=0.2, test_fraction=0.2)).splits
    augment(splits, root, "RGB", AugmentConfig(image_size=(8, 8)), tmp_path / "a")
    images, labels = load_shards(tmp_path / "a" / "test")
    assert images.shape[1:] == (8, 8, 3)
    assert isinstance(labels, pd.DataFrame)


def test_online_with_no_copies_augments_nothing(make_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``copies: 0`` means no augmented sample in either mode: online writes no transform (it
    used to augment every image each epoch whatever ``copies`` said)."""
    ds, root = make_dataset(n=12, split=True)
    splits = select(clean(ds, CleanConfig(min_size=4, workers=1)).manifest, ds,
                    SelectConfig()).splits
    out = augment(splits, root, "L", AugmentConfig(image_size=(12, 12), copies=0,
                                                   transforms=(AFFINE,)), tmp_path / "on")
    assert out.counts["train"] == len(splits["train"])
    assert not (tmp_path / "on" / TRANSFORM_FILE).exists()
    assert json.loads((tmp_path / "on" / "meta.json").read_text())["online"] is False


@pytest.mark.parametrize("online,keep", [(True, True), (True, False), (False, True)])
def test_augment_cli_says_what_training_draws_per_epoch(
        make_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], online: bool,
        keep: bool) -> None:  # type: ignore[no-untyped-def]
    """Online, the stage writes N training images but training draws N × (keep_original +
    copies) samples per epoch: the log says so (it used to print the N images only, the
    offline count being twice that)."""
    ds, root = make_dataset(n=20, split=True)
    splits = select(clean(ds, CleanConfig(min_size=4, workers=1)).manifest, ds,
                    SelectConfig()).splits
    selected = tmp_path / "selected"
    selected.mkdir()
    for name, frame in splits.items():
        frame.to_parquet(selected / f"{name}.parquet")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["dataset"] = {**raw["dataset"], "dir": str(root), "tasks": [
        {"name": "a", "column": "a", "kind": "multiclass"},
        {"name": "b", "column": "b", "kind": "binary"}]}
    raw["clean"] = {**raw["clean"], "min_size": 4, "workers": 1}
    raw["augment"] = {**raw["augment"], "image_size": [12, 12], "online": online,
                      "copies": 2, "keep_original": keep, "transforms": [AFFINE]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(["augment", "--params", str(tmp_path / "params.yaml"), "--selected",
                 str(selected), "--out", str(tmp_path / "aug")]) == 0
    out = capsys.readouterr().out
    n = len(splits["train"])
    if online:
        views = "the original and 2 fresh variants" if keep else "2 fresh variants"
        assert (f"augment: online: training draws {(keep + 2) * n} samples per epoch from the "
                f"{n} training images ({views} of each)") in out, out
    else:
        assert "online" not in out and f"'train': {3 * n}" in out, out
