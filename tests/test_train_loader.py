"""The streamed data path: memory-mapped shards read batch by batch through a torch
``DataLoader`` (issue 11), equal to the in-memory path and independent of ``train.workers``."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch

from mtl.augment import OnlineAugment
from mtl.config import TrainConfig
from mtl.shards import SHARD_PATTERN, TRANSFORM_FILE, ShardedImages, load_shards, open_shards
from mtl.splits import BatchDataset, BatchFeed, SplitData, load_split_data
from mtl.train import Distributed, _build_loop, fit, train_one_epoch
from tests.test_train import TASKS, make_split, tiny_cfg


def write_shards(root: Path, split: str, data: SplitData, shard_size: int,
                 meta: dict[str, object] | None = None) -> None:
    """``data`` as the augment stage writes it: shards of ``shard_size`` images, labels, meta."""
    out = root / split
    out.mkdir(parents=True)
    images = np.asarray(data.images)
    for k, start in enumerate(range(0, len(images), shard_size)):
        np.save(out / SHARD_PATTERN.format(k), images[start:start + shard_size])
    columns = {k: v if v.ndim == 1 else [None if np.isnan(r[0]) else r.tolist() for r in v]
               for k, v in data.targets.items()}
    pd.DataFrame({"id": [f"{split}{i}" for i in range(len(images))], "copy": 0,
                  **columns}).to_parquet(out / "labels.parquet", index=False)
    (root / "meta.json").write_text(json.dumps(
        {"image_size": list(images.shape[1:3]), "channels": int(images.shape[3]), "mode": "L",
         **(meta or {})}))


def test_sharded_images_index_across_shard_boundaries(tmp_path: Path) -> None:
    data = make_split(50, 0)
    write_shards(tmp_path, "train", data, shard_size=7)  # 8 shards, the last one of 1 image
    images, labels = open_shards(tmp_path / "train")
    full = data.images.numpy()
    assert len(images) == 50 and images.shape == (50, 12, 12, 1) and len(labels) == 50
    idx = np.array([49, 0, 6, 7, 13, 14, 6, 35, 48])  # unsorted, repeated, on both sides of edges
    assert np.array_equal(images[idx], full[idx])
    assert np.array_equal(images[3:45:4], full[3:45:4])
    assert np.array_equal(load_shards(tmp_path / "train")[0], full)
    with pytest.raises(IndexError, match=r"expected image indices in \[0, 50\), found"):
        images[np.array([50])]


def test_sharded_images_stay_memory_mapped_and_pickle_by_path(tmp_path: Path) -> None:
    """A streamed split holds memory maps, never the pixels (the anonymous-memory claim), and
    a spawned loader worker receives paths, not a copy of the data."""
    data = make_split(300, 0)
    write_shards(tmp_path, "train", data, shard_size=128)
    split = load_split_data(tmp_path, "train", TASKS)
    assert isinstance(split.images, ShardedImages)
    assert all(isinstance(m, np.memmap) for m in split.images.shards)
    blob = pickle.dumps(split.images)
    assert len(blob) < 2000 < 300 * 144  # paths only
    assert np.array_equal(pickle.loads(blob)[np.arange(300)], data.images.numpy())
    in_memory = load_split_data(tmp_path, "train", TASKS, stream=False)
    assert isinstance(in_memory.images, torch.Tensor)
    assert in_memory.fingerprint() == split.fingerprint()  # the same content either way


def test_shards_of_another_geometry_are_refused(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", make_split(10, 0), shard_size=4)
    np.save(tmp_path / "train" / SHARD_PATTERN.format(1), np.zeros((4, 28, 28, 1), np.uint8))
    with pytest.raises(ValueError, match=r"images-00001.npy: expected a \[n, 12, 12, 1\] uint8 "
                                         r"shard, found uint8 \[4, 28, 28, 1\]"):
        open_shards(tmp_path / "train")


def test_streamed_training_equals_in_memory_for_any_worker_count(tmp_path: Path) -> None:
    """The same run from memory-mapped shards (0 and 2 loader processes) and from one tensor
    ends with bitwise equal weights: same batches, same order, same random draws (RLW draws
    its weights from the global torch RNG, which the loader must not consume)."""
    train, val = make_split(160, 0, missing=0.2), make_split(48, 1)
    write_shards(tmp_path / "aug", "train", train, shard_size=50)
    write_shards(tmp_path / "aug", "val", val, shard_size=50)
    results = {}
    for name, stream, workers in (("memory", False, 0), ("stream0", True, 0),
                                  ("stream2", True, 2)):
        t = load_split_data(tmp_path / "aug", "train", TASKS, stream=stream)
        v = load_split_data(tmp_path / "aug", "val", TASKS, stream=stream)
        cfg = tiny_cfg(tmp_path / name, weighting="rlw", workers=workers, epochs=2,
                       log_conflict_every=0)
        model, result = fit(TASKS, t, v, cfg, 1, torch.device("cpu"))
        results[name] = (model.state_dict(), [r["val/score"] for r in result.history])
    ref_state, ref_scores = results["memory"]
    for name in ("stream0", "stream2"):
        state, scores = results[name]
        assert scores == ref_scores, name
        for k, v in ref_state.items():
            assert torch.equal(v, state[k]), (name, k)


AFFINE = {"__class_fullname__": "Compose", "p": 1.0, "transforms": [
    {"__class_fullname__": "Affine", "rotate": [-20, 20], "translate_percent": [-0.1, 0.1],
     "p": 1.0}]}


def _online(tmp_path: Path, n: int = 64) -> SplitData:
    """A training split whose augment output says online, with a serialized Affine."""
    write_shards(tmp_path, "train", make_split(n, 0), shard_size=20, meta={"online": True})
    (tmp_path / TRANSFORM_FILE).write_text(json.dumps(A.to_dict(A.from_dict(
        {"transform": AFFINE}))))
    data = load_split_data(tmp_path, "train", TASKS)
    assert data.transform is not None
    return data


def _stream(data: SplitData, seed: int, workers: int, epochs: int) -> list[np.ndarray]:
    """Every batch's images, epoch by epoch, as training's loader yields them."""
    size = (int(data.images.shape[1]), int(data.images.shape[2]))
    assert data.transform is not None
    feed = BatchFeed(BatchDataset(data, TASKS, OnlineAugment(data.transform, size, seed)),
                     workers, pin_memory=False)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    keys = [order[s:s + 16] for s in range(0, len(data), 16)]
    return [b[0].numpy() for e in range(epochs) for b in feed.epoch([(e, k) for k in keys])]


def test_online_augmentation_new_variants_each_epoch_same_stream_for_a_seed(
        tmp_path: Path) -> None:
    data = _online(tmp_path)
    two = _stream(data, seed=0, workers=0, epochs=2)
    first, second = np.concatenate(two[:4]), np.concatenate(two[4:])
    originals = data.images[np.concatenate(
        [k.numpy() for k in torch.randperm(64, generator=torch.Generator().manual_seed(0))
         .split(16)])]
    assert first.shape == originals.shape and not np.array_equal(first, originals)
    assert (first != second).any(axis=(1, 2, 3)).all()  # every image, a new variant in epoch 1
    assert all(np.array_equal(a, b) for a, b in
               zip(two, _stream(data, seed=0, workers=2, epochs=2), strict=True))  # workers
    assert all(np.array_equal(a, b) for a, b in
               zip(two, _stream(data, seed=0, workers=0, epochs=2), strict=True))  # a rerun
    other = _stream(data, seed=1, workers=0, epochs=1)
    assert not np.array_equal(np.concatenate(other), first)  # train.seed decides the stream


def test_training_applies_the_online_transform(tmp_path: Path) -> None:
    """The same shards with and without the online transform train differently (training
    must not ignore ``transform.json``), and a different pipeline changes the state key."""
    online = _online(tmp_path / "aug")
    plain = SplitData(online.images, online.targets)
    val = make_split(32, 1)
    cfg = tiny_cfg(tmp_path, epochs=1, log_conflict_every=0)
    a, _ = fit(TASKS, online, val, cfg, 1, torch.device("cpu"))
    b, _ = fit(TASKS, plain, val, replace(cfg, checkpoint_dir=str(tmp_path / "s2")), 1,
               torch.device("cpu"))
    assert not all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert online.fingerprint() != plain.fingerprint()


def test_online_views_per_epoch_match_the_offline_copies(tmp_path: Path) -> None:
    """``augment.copies: 2`` with ``keep_original``: an online epoch has 3 N samples, like the
    offline shards: view 0 is the original, views 1 and 2 are two different variants, and each
    sample carries its own image's labels."""
    write_shards(tmp_path, "train", make_split(20, 0, missing=0.3), shard_size=8,
                 meta={"online": True, "views": {"copies": 2, "keep_original": True}})
    (tmp_path / TRANSFORM_FILE).write_text(json.dumps(A.to_dict(A.from_dict(
        {"transform": AFFINE}))))
    data = load_split_data(tmp_path, "train", TASKS)
    assert (len(data), data.epoch_size(), data.copies, data.keep_original) == (20, 60, 2, True)
    assert data.transform is not None
    ds = BatchDataset(data, TASKS, OnlineAugment(data.transform, (12, 12), 0))
    samples = torch.arange(60).flip(0)  # any order: a sample's view is sample // N
    images, _, targets, _ = ds[(0, samples)]
    by_sample = dict(zip(samples.tolist(), images.numpy(), strict=True))
    originals = data.images[np.arange(20)]
    for i in range(20):
        assert np.array_equal(by_sample[i], originals[i])  # view 0: the original
        one, two = by_sample[20 + i], by_sample[40 + i]
        assert not np.array_equal(one, originals[i]) and not np.array_equal(one, two)
    for t, y in zip(TASKS, targets, strict=True):
        expected = torch.from_numpy(data.targets[t.name][(samples % 20).numpy()])
        assert torch.equal(torch.nan_to_num(y, -1.0), torch.nan_to_num(expected, -1.0))
    # the views are part of the content: a resumed state of another setting is not reused
    assert data.fingerprint() != replace(data, copies=1).fingerprint()
    assert data.fingerprint() != replace(data, keep_original=False).fingerprint()


def test_training_takes_as_many_steps_online_as_offline(tmp_path: Path) -> None:
    """One online epoch over N images with 1 copy and the original is 2 N samples: the
    schedule's steps per epoch and the loop's step count follow the epoch size, not N."""
    write_shards(tmp_path, "train", make_split(40, 0), shard_size=16,
                 meta={"online": True, "views": {"copies": 1, "keep_original": True}})
    (tmp_path / TRANSFORM_FILE).write_text(json.dumps(A.to_dict(A.from_dict(
        {"transform": AFFINE}))))
    data = load_split_data(tmp_path, "train", TASKS)
    cfg = tiny_cfg(tmp_path / "s", epochs=1, batch_size=8, log_conflict_every=0,
                   scheduler="step", step_size=1, gamma=0.5, warmup_epochs=0.0)
    loop = _build_loop(TASKS, cfg, 1, 0, torch.device("cpu"), 10, Distributed())
    assert train_one_epoch(loop, data, 0).steps == 10  # 80 samples / 8: 5 = one view per image
    # fit's schedule counts the same epoch: after one epoch the step schedule has halved the
    # rate once (with 5 steps per epoch in the schedule, 10 steps would halve it twice)
    _, result = fit(TASKS, data, make_split(16, 1), cfg, 1, torch.device("cpu"))
    assert result.history[-1]["train/lr"] == pytest.approx(cfg.lr * 0.5)


def test_views_in_meta_are_checked(tmp_path: Path) -> None:
    write_shards(tmp_path, "train", make_split(8, 0), shard_size=8,
                 meta={"online": True, "views": {"copies": 0, "keep_original": True}})
    (tmp_path / TRANSFORM_FILE).write_text(json.dumps(A.to_dict(A.from_dict(
        {"transform": AFFINE}))))
    with pytest.raises(ValueError, match=r"expected views \{copies: int >= 1, keep_original: "
                                         r"bool\}, found \{'copies': 0"):
        load_split_data(tmp_path, "train", TASKS)


@pytest.mark.parametrize("views", [None, [2, True], {"copies": True, "keep_original": True},
                                   {"copies": 2}, {"copies": 2.0, "keep_original": False}])
def test_malformed_views_in_meta_are_a_data_error(tmp_path: Path, views: object) -> None:
    """Not a mapping (an AttributeError deep in the loader before), a bool for a count, a key
    missing or a float: each names the field and asks for the augment stage."""
    write_shards(tmp_path, "train", make_split(8, 0), shard_size=8,
                 meta={"online": True, "views": views})
    (tmp_path / TRANSFORM_FILE).write_text(json.dumps(A.to_dict(A.from_dict(
        {"transform": AFFINE}))))
    with pytest.raises(ValueError, match=r"expected views \{copies: int >= 1, keep_original: "
                                         r"bool\}, found .*rerun the augment stage"):
        load_split_data(tmp_path, "train", TASKS)


def test_online_views_carry_their_image_features_and_teacher_outputs() -> None:
    """Features and teacher outputs are per image (``[N, ...]``, teach runs over the N
    originals): sample ``j`` of an epoch of 3 N gets row ``j % N`` of each, in any order (an
    index by ``j`` fails past N, one by ``j // 3`` mixes images up)."""
    data = make_split(10, 0)
    features = torch.arange(30, dtype=torch.float32).reshape(10, 3)  # row i: 3i, 3i+1, 3i+2
    teacher = {"a": np.arange(30, dtype=np.float32).reshape(10, 3) * -1.0}
    data = replace(data, features=features, teacher=teacher,
                   transform=A.to_dict(A.from_dict({"transform": AFFINE})), copies=2,
                   keep_original=True)
    assert data.transform is not None and data.epoch_size() == 30
    ds = BatchDataset(data, TASKS[:1], OnlineAugment(data.transform, (12, 12), 0))
    samples = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    _, f, ys, soft = ds[(1, samples)]
    rows = samples % 10
    assert f is not None and soft is not None
    assert torch.equal(f, features[rows])
    assert torch.equal(soft[0], torch.from_numpy(teacher["a"])[rows])
    assert torch.equal(ys[0], torch.from_numpy(data.targets["a"])[rows])


def test_interrupted_online_run_with_views_resumes_bitwise(tmp_path: Path) -> None:
    """Killed after epoch 0 and resumed, a run over the original and 2 variants per image
    (3 N samples an epoch) ends bitwise equal to the uninterrupted one: the resumed epochs
    draw the same samples and the same variants (sample seeds are (seed, epoch, sample))."""
    write_shards(tmp_path / "aug", "val", make_split(16, 1), shard_size=16)
    write_shards(tmp_path / "aug", "train", make_split(24, 0, missing=0.2), shard_size=16,
                 meta={"online": True, "views": {"copies": 2, "keep_original": True}})
    (tmp_path / "aug" / TRANSFORM_FILE).write_text(json.dumps(A.to_dict(A.from_dict(
        {"transform": AFFINE}))))
    train = load_split_data(tmp_path / "aug", "train", TASKS)
    val = load_split_data(tmp_path / "aug", "val", TASKS, stream=False)
    assert train.epoch_size() == 72 and val.transform is None
    cpu = torch.device("cpu")

    def cfg(name: str) -> TrainConfig:
        return tiny_cfg(tmp_path / name, epochs=2, batch_size=16, log_conflict_every=0)

    _, full = fit(TASKS, train, val, cfg("full"), 1, cpu)

    class Killed(Exception):
        pass

    def die(epoch: int, row: dict[str, float]) -> None:
        if epoch == 1:  # epoch 0's state is on disk, epoch 1's not yet
            raise Killed

    with pytest.raises(Killed):
        fit(TASKS, train, val, cfg("killed"), 1, cpu, log=die)
    state = torch.load(next((tmp_path / "killed" / "state").glob("*.pt")), weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 5)  # 72 samples / 16: every view trained
    _, resumed = fit(TASKS, train, val, cfg("killed"), 1, cpu)
    assert resumed.resumed_from == 0
    assert [r["val/score"] for r in resumed.history] == [r["val/score"] for r in full.history]
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k
