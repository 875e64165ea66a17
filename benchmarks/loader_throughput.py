"""Benchmark: images/s the train loader delivers, by ``train.workers``, online vs offline
augmentation, against the model's own training step rate on CPU.

    nice -n 10 .venv/bin/python benchmarks/loader_throughput.py [--datasets multimnist fashion] \
        [--workers 0 1 2 4] [--batches 20] [--rounds 3] [--threads 1] \
        [--data ../shared/datasets/fashion-product] [--n-train 12000]

The data are built by the real stages in a temporary folder outside the project: for
``multimnist`` the default MultiMNIST (``mtl.data.ingest.ingest`` with params.yaml's ``ingest``
section, ``--n-train`` training images), for ``fashion`` the Fashion photos under ``--data``
with ``configs/fashion-product.yaml`` (64×48 RGB, its transforms; skipped when the folder is
absent); then ``clean``, ``select`` and ``augment`` twice, with ``augment.online`` true (the
training split written resized only, plus ``transform.json``) and false (``copies`` augmented
copies on disk, plus the original).

Every measurement goes through the train stage's own code: a ``TrainLoop`` from ``_build_loop``
(the dataset's ``train`` section with ``workers`` set, ``log_conflict_every: 0``, CPU) over the
memory-mapped training split (``load_split_data(..., stream=True)``), restricted to its first
``--batches × batch_size`` images so that one pass is short. Per (workers, augmentation) one
loop, whose :class:`~mtl.splits.BatchFeed` (built by ``_epoch_batches`` exactly as
``train_one_epoch`` builds it, workers kept across passes) serves two variants:

* **loader alone**: one pass over ``_epoch_batches``' batches, each thrown away (the rate at
  which batches arrive when the consumer takes no time: the loader's upper bound);
* **train step with this loader**: one ``train_one_epoch`` over the same images (the loader
  and the model sharing the machine, as in ``mtl train``).

The reference, **model step**: ``train_one_epoch`` on the same number of images held in one
in-memory tensor, ``workers: 0``, no augmentation: forward + backward + optimiser step of the
dataset's model (``hps`` + ``smallcnn`` by default) on batches already in memory (their
indexing, a tensor gather, is the only data cost).

Each pass uses a new epoch number (online augmentation draws new variants). The variants run
interleaved in a shuffled order each round (``_timing.interleaved_times``, one warm-up round
that also starts the workers); reported: the median images/s over rounds (min-max) and the
median per-round ratio to the model step. Prints markdown (also to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_times

from mtl.config import Params, validate_params
from mtl.schema import SPLITS, TaskSchema
from mtl.shards import ShardedImages
from mtl.splits import SplitData, feature_columns, load_split_data
from mtl.train import Distributed, TrainLoop, _build_loop, _epoch_batches, train_one_epoch

__all__ = ["Dataset", "Prefix", "build_dataset", "main", "measure"]

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO.parent / "shared" / "datasets" / "fashion-product"


@dataclass(frozen=True)
class Dataset:
    """One dataset as the augment stage wrote it, online and offline."""

    name: str
    params: Params
    tasks: tuple[TaskSchema, ...]
    features: tuple[str, ...]
    channels: int
    augmented: dict[bool, Path]  # augment.online -> the augment stage's output folder


class Prefix(ShardedImages):
    """The first ``n`` images of memory-mapped shards (a shorter pass over the same files).

    Only the offsets change: a batch is still one fancy index per shard of the memory maps,
    and a loader worker reopens the maps from the paths.
    """

    def __init__(self, paths: list[Path], image_shape: tuple[int, int, int], n: int) -> None:
        super().__init__(paths, image_shape)
        self.n = n
        self.offsets = np.minimum(self.offsets, n)  # offsets[-1] = n: len, bounds, shard lookup

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "n": self.n}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"], state["image_shape"], state["n"])  # type: ignore[misc]


def _prefix(data: SplitData, n: int) -> SplitData:
    """``data``'s first ``n`` images (streamed, or sliced from the in-memory tensor)."""
    n = min(n, len(data))
    images = data.images
    images = (images[:n] if isinstance(images, torch.Tensor)
              else Prefix(images.paths, images.image_shape, n))
    features = data.features[:n] if data.features is not None else None
    # the online views (copies, keep_original) are left at one augmented view per image: a
    # pass is n samples, every one augmented (the loader's rate per augmented sample; in
    # training, with keep_original, N of an epoch's samples are originals and skip it)
    return SplitData(images, {k: v[:n] for k, v in data.targets.items()}, features,
                     data.transform)


def _params(raw: dict[str, Any], dataset_dir: Path) -> Params:
    raw = dict(raw)
    raw["dataset"] = {**raw["dataset"], "dir": str(dataset_dir)}
    return validate_params(raw)


def build_dataset(name: str, root: Path, fashion: Path, n_train: int | None) -> Dataset:
    """Run the data stages (ingest for MultiMNIST, clean, select, augment online and offline)
    into ``root``; returns where the two augment outputs are."""
    from mtl.augment import augment
    from mtl.data.clean import clean
    from mtl.data.select import select

    if name == "multimnist":
        from mtl.data.ingest import ingest

        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        if n_train is not None:  # a smaller MultiMNIST (tests): val and test scale with it
            raw["ingest"] = {**raw["ingest"], "n_train": n_train,
                             "n_val": max(n_train // 6, 8), "n_test": max(n_train // 4, 8)}
        ingest(validate_params(raw).ingest, root / "raw")
        p = _params(raw, root / "raw")
    else:
        raw = yaml.safe_load((REPO / "configs" / "fashion-product.yaml").read_text())
        p = _params(raw, fashion.resolve())
    cleaned = clean(p.dataset, p.clean)
    selected = select(cleaned.manifest, p.dataset, p.select)
    splits = {s: selected.splits[s] for s in SPLITS}
    out: dict[bool, Path] = {}
    for online in (True, False):
        out[online] = root / f"augmented-{'online' if online else 'offline'}"
        result = augment(splits, Path(p.dataset.dir), p.clean.mode,
                         replace(p.augment, online=online), out[online])
    tasks = tuple(TaskSchema.from_dict(d) for d in selected.schema["tasks"])
    return Dataset(name, p, tasks, tuple(feature_columns(selected.schema)), result.channels,
                   out)


@dataclass
class Variant:
    """One timed pass: ``run()`` trains or reads ``images`` images."""

    label: str
    workers: int | None  # None: the model-step reference
    online: bool | None
    kind: str  # "model", "loader", "train"
    run: Callable[[], object]
    images: int


def _loop(ds: Dataset, workers: int, steps: int) -> TrainLoop:
    cfg = replace(ds.params.train, workers=workers, log_conflict_every=0, device="cpu",
                  epochs=1)
    return _build_loop(ds.tasks, cfg, ds.channels, len(ds.features), torch.device("cpu"),
                       steps, Distributed())


def variants(ds: Dataset, workers: Sequence[int], batches: int,
             rounds: int) -> list[Variant]:
    """The model-step reference, then per (online, workers) the loader alone and the train
    step with that loader; every loop is built here (its workers start on its first pass)."""
    batch = ds.params.train.batch_size
    steps = batches * (rounds + 1)
    out: list[Variant] = []

    mem = _prefix(load_split_data(ds.augmented[False], "train", ds.tasks, ds.features,
                                  stream=False), batches * batch)
    mem = SplitData(mem.images.clone() if isinstance(mem.images, torch.Tensor) else mem.images,
                    mem.targets, mem.features, None)  # the slice alone, no augmentation
    ref = _loop(ds, 0, steps)
    out.append(Variant("model step (batches in memory)", None, None, "model",
                       lambda: train_one_epoch(ref, mem), len(mem)))
    for online in (False, True):
        data = _prefix(load_split_data(ds.augmented[online], "train", ds.tasks, ds.features,
                                       stream=True), batches * batch)
        assert (data.transform is not None) == online, "augment.online did not take effect"
        for w in workers:
            loop = _loop(ds, w, steps)
            epoch = iter(range(1, 1 << 30))  # every pass a new epoch: new online variants

            def read(loop: TrainLoop = loop, data: SplitData = data,
                     epoch: Any = epoch) -> None:
                _, it = _epoch_batches(loop, data, next(epoch))
                for _ in it:
                    pass

            def train(loop: TrainLoop = loop, data: SplitData = data,
                      epoch: Any = epoch) -> None:
                train_one_epoch(loop, data, next(epoch))

            aug = "online" if online else "offline"
            out.append(Variant(f"loader alone, {aug}, workers {w}", w, online, "loader", read,
                               len(data)))
            out.append(Variant(f"train step with loader, {aug}, workers {w}", w, online,
                               "train", train, len(data)))
    return out


def measure(ds: Dataset, workers: Sequence[int], batches: int, rounds: int,
            seed: int) -> list[dict[str, Any]]:
    """Images/s of every variant per round, and its median per-round ratio to the model step."""
    vs = variants(ds, workers, batches, rounds)
    times = interleaved_times([v.run for v in vs], rounds=rounds, warmup=1, seed=seed)
    rows = []
    for v, ts in zip(vs, times, strict=True):
        rates = [v.images / t for t in ts]
        ratios = [(v.images / t) / (vs[0].images / t0) for t, t0 in zip(ts, times[0],
                                                                         strict=True)]
        rows.append({"label": v.label, "kind": v.kind, "workers": v.workers,
                     "online": v.online, "images": v.images, "rates": rates,
                     "median": statistics.median(rates), "ratio": statistics.median(ratios)})
    del vs
    gc.collect()  # the loops' loaders go: their worker processes exit
    return rows


def table(ds: Dataset, rows: list[dict[str, Any]]) -> str:
    """The markdown table of one dataset."""
    ref = rows[0]
    p = ds.params
    h, w = p.augment.image_size
    lines = [f"### {ds.name}: {h}×{w}×{ds.channels}, {len(ds.tasks)} tasks, "
             f"{p.train.architecture} + {p.train.backbone}, batch {p.train.batch_size}, "
             f"{ref['images']} images per pass", "",
             f"Model step (forward + backward + optimiser step, batches in memory): "
             f"**{ref['median']:,.0f} images/s** "
             f"({min(ref['rates']):,.0f}-{max(ref['rates']):,.0f}).", "",
             "| augmentation | train.workers | loader alone: images/s | loader ÷ model step "
             "| train step with this loader: images/s | ÷ model step |",
             "|---|---:|---:|---:|---:|---:|"]
    by = {(r["kind"], r["online"], r["workers"]): r for r in rows[1:]}
    for online in (False, True):
        for wk in sorted({r["workers"] for r in rows[1:]}):
            a, b = by[("loader", online, wk)], by[("train", online, wk)]
            lines.append(
                f"| {'online' if online else 'offline'} | {wk} | {a['median']:,.0f} "
                f"({min(a['rates']):,.0f}-{max(a['rates']):,.0f}) | {a['ratio']:.2f} | "
                f"{b['median']:,.0f} ({min(b['rates']):,.0f}-{max(b['rates']):,.0f}) | "
                f"{b['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["multimnist", "fashion"],
                    choices=["multimnist", "fashion"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2, 4])
    ap.add_argument("--batches", type=int, default=20, help="batches per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads of the training process (0: torch's default)")
    ap.add_argument("--data", type=Path, default=FASHION, help="the Fashion dataset folder")
    ap.add_argument("--n-train", type=int, default=None,
                    help="MultiMNIST training images (default: params.yaml's ingest.n_train)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the interleaving order")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.datasets if n != "fashion" or (args.data / "styles.csv").is_file()]
    skipped = [n for n in args.datasets if n not in names]
    load = [os.getloadavg()]
    parts = []
    with tempfile.TemporaryDirectory(prefix="mtl-loader-") as tmp:
        for name in names:
            ds = build_dataset(name, Path(tmp) / name, args.data, args.n_train)
            rows = measure(ds, args.workers, args.batches, args.rounds, args.seed)
            parts.append(table(ds, rows))
    load.append(os.getloadavg())
    head = (f"`python benchmarks/loader_throughput.py --datasets {' '.join(args.datasets)} "
            f"--workers {' '.join(map(str, args.workers))} --batches {args.batches} "
            f"--rounds {args.rounds} --threads {args.threads}`\n\n"
            f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} intra-op thread(s) in the training process; load "
            f"average before {load[0][0]:.1f}, after {load[1][0]:.1f}; medians over "
            f"{args.rounds} rounds (min-max in brackets), ratios are medians of per-round "
            "ratios to the model step" + (f"; skipped (no data): {skipped}" if skipped else ""))
    text = "\n\n".join([head, *parts]) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
