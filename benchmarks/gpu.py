"""GPU check: mixed-precision training throughput and peak memory (run where a GPU is present).

Trains the default MultiMNIST configuration and the Fashion configuration with the real train
loop (``mtl.train.fit``) on CUDA, side by side in one run: fp32, bf16 autocast and fp16 autocast
with a gradient scaler, plus one gradient-level method (PCGrad) under fp16 so that the scaled
per-task gradients path runs on a real GPU. Reports images per second (training epochs after
the first, which includes warm-up), peak GPU memory and the validation score.

It needs only torch, torchvision, numpy, pandas, pillow and pyyaml (what a bare CUDA image has),
so data comes prepared from this machine::

    python benchmarks/gpu.py prepare --out .gpu-data      # here: digits + Fashion photos
    python benchmarks/gpu.py run --data .gpu-data --out gpu.md   # on the GPU machine

The Fashion photos are read from ``../shared/datasets/fashion-product`` by ``prepare`` into an
ignored folder; they are never committed.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl.config import IngestConfig, TrainConfig, load_params
from mtl.data.images import load_image
from mtl.data.ingest import compose_multimnist
from mtl.schema import TaskKind, TaskSchema
from mtl.train import SplitData, fit

ROOT = Path(__file__).resolve().parents[1]
FASHION_TASKS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour",
                 "season", "usage")


def prepare(out: Path) -> None:
    from mtl.data.ingest import load_mnist_digits

    out.mkdir(parents=True, exist_ok=True)
    x, y = load_mnist_digits()
    np.savez_compressed(out / "mnist.npz", x=x, y=y)
    src = ROOT.parent / "shared" / "datasets" / "fashion-product"
    if src.is_dir():
        shutil.copytree(src, out / "fashion", dirs_exist_ok=True)
    print(f"prepared {out}")


def _split(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * n, dtype=object)
    perm = rng.permutation(n)
    split[perm[: n // 10]] = "val"
    split[perm[n // 10: n // 5]] = "test"
    return split


def mnist_data(path: Path) -> tuple[tuple[TaskSchema, ...], SplitData, SplitData, int]:
    d = np.load(path)
    data = compose_multimnist(d["x"], d["y"], IngestConfig())
    tasks = tuple(TaskSchema(n, TaskKind.MULTICLASS, n, classes=tuple(map(str, range(10))))
                  for n in ("left", "right"))
    sets = []
    for s in ("train", "val"):
        keep = (data.table["split"] == s).to_numpy()
        sets.append(SplitData(torch.from_numpy(data.images[keep][..., None]),
                              {t.name: data.table[t.name].to_numpy("float32")[keep]
                               for t in tasks}))
    return tasks, sets[0], sets[1], 1


def fashion_data(root: Path) -> tuple[tuple[TaskSchema, ...], SplitData, SplitData, int]:
    styles = pd.read_csv(root / "styles.csv", dtype=str, on_bad_lines="skip")
    styles = styles[[(root / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    images = np.stack([load_image(root / "images" / f"{i}.jpg", "RGB") for i in styles["id"]])
    split = _split(len(styles), 0)
    tasks: list[TaskSchema] = []
    targets: dict[str, np.ndarray] = {}
    for name in FASHION_TASKS:
        codes, classes = pd.factorize(styles[name], sort=True)
        targets[name] = np.where(codes < 0, np.nan, codes).astype(np.float32)
        tasks.append(TaskSchema(name, TaskKind.MULTICLASS, name,
                                classes=tuple(map(str, classes))))
    year = pd.to_numeric(styles["year"], errors="coerce").to_numpy(np.float64)
    train_year = year[(split == "train") & ~np.isnan(year)]
    mean, std = float(train_year.mean()), float(train_year.std())
    targets["year"] = ((year - mean) / std).astype(np.float32)
    tasks.append(TaskSchema("year", TaskKind.REGRESSION, "year", mean=mean, std=std))
    sets = [SplitData(torch.from_numpy(images[split == s]),
                      {k: v[split == s] for k, v in targets.items()}) for s in ("train", "val")]
    return tuple(tasks), sets[0], sets[1], 3


def measure(name: str, variant: str, tasks: tuple[TaskSchema, ...], train: SplitData,
            val: SplitData, channels: int, cfg: TrainConfig) -> dict[str, object]:
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    _, result = fit(tasks, train, val, cfg, channels, device)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    ips = [r["train/images_per_second"] for r in result.history]
    return {"config": name, "variant": variant, "epochs": len(ips),
            "img/s (epochs 2+)": round(float(np.median(ips[1:] if len(ips) > 1 else ips))),
            "peak GPU MiB": round(torch.cuda.max_memory_allocated() / 2**20),
            "val score": round(result.best_score, 4), "wall s": round(wall, 1)}


def run(data: Path, out: Path, epochs: int) -> None:
    assert torch.cuda.is_available(), "no CUDA device: this script is for the GPU machine"
    base = load_params(ROOT / "params.yaml").train
    fashion_params = ROOT / "configs" / "fashion-product.yaml"
    try:
        fbase = load_params(fashion_params).train
    except ValueError as exc:  # ConfigError: fall back to the default train section
        print(f"warning: {exc}; using params.yaml's train section for Fashion")
        fbase = base
    variants = {"fp32": {"amp": False}, "bf16 autocast": {"amp": True, "amp_dtype": "bf16"},
                "fp16 autocast + GradScaler": {"amp": True, "amp_dtype": "fp16"},
                "fp16 + pcgrad (full backend)": {"amp": True, "amp_dtype": "fp16",
                                                 "weighting": "pcgrad"},
                "bf16 + channels_last": {"amp": True, "amp_dtype": "bf16",
                                         "channels_last": True}}
    rows = []
    suites = [("MultiMNIST (params.yaml)", base, lambda: mnist_data(data / "mnist.npz"))]
    if (data / "fashion").is_dir():
        suites.append(("Fashion (configs/fashion-product.yaml)", fbase,
                       lambda: fashion_data(data / "fashion")))
    for name, cfg0, loader in suites:
        t0 = time.perf_counter()
        tasks, train, val, channels = loader()
        print(f"{name}: {len(train)} train / {len(val)} val images loaded in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        for variant, kw in variants.items():
            cfg = replace(cfg0, epochs=epochs, device="cuda", checkpoint_dir="/tmp/mtl-gpu",
                          resume=False, log_conflict_every=0, batch_size=256, **kw)  # type: ignore[arg-type]
            row = measure(name, variant, tasks, train, val, channels, cfg)
            print(row, flush=True)
            rows.append(row)
    gpu = torch.cuda.get_device_name()
    header = (f"# GPU training throughput\n\nCommand: `python benchmarks/gpu.py run --data "
              f".gpu-data --epochs {epochs}` on {gpu}, torch {torch.__version__}, "
              f"{platform.machine()}; batch 256, {epochs} epochs per row, img/s = median over "
              "epochs 2+ of training images per second (the train loop's own measure), peak = "
              "torch.cuda.max_memory_allocated.\n\n")
    cols = list(rows[0])
    table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    table += "".join("| " + " | ".join(str(r[c]) for c in cols) + " |\n" for r in rows)
    out.write_text(header + table)
    print(header + table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=Path(".gpu-data"))
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, default=Path(".gpu-data"))
    r.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.md"))
    r.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out)
    else:
        run(args.data, args.out, args.epochs)


if __name__ == "__main__":
    main()
