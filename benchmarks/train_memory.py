"""Benchmark: peak anonymous memory of ``mtl train`` (1 epoch) at 1x, 4x, 10x the Fashion data,
streamed (``train.loader: stream``) next to the in-memory path (``train.loader: memory``).

    nice -n 10 .venv/bin/python benchmarks/train_memory.py [--scales 1 4 10] [--size 96] \
        [--data ../shared/datasets/fashion-product]

The 1x shards are built once: every Fashion photo decoded (RGB) and resized to ``--size``
pixels square, 90 % train / 10 % val, tasks ``gender`` and ``masterCategory``. The 4x and 10x
outputs replicate those shards (the same arrays saved ``k`` times, the labels table repeated),
so only the number of images changes. Each run is one ``mtl train`` process (a tiny CNN, so
the epoch is short; memory does not depend on the model's size). Its ``RssAnon`` (from
``/proc/<pid>/status``: the process's own memory, not the file cache that memory maps fill)
is sampled every 50 ms, for the main process and summed over its loader processes. Prints a
markdown table; the data lives in a temporary folder outside the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO.parent / "shared" / "datasets" / "fashion-product"
TASKS = ("gender", "masterCategory")


def build_base(fashion: Path, size: int) -> tuple[dict[str, np.ndarray], dict[str, pd.DataFrame],
                                               dict[str, object]]:
    """The 1x images ``{split: [N, size, size, 3]}``, labels tables and schema.json."""
    from PIL import Image

    from mtl.schema import TaskKind, TaskSchema

    table = pd.read_csv(fashion / "styles.csv", dtype=str, keep_default_na=False)
    table = table[[(fashion / "images" / f"{i}.jpg").is_file() for i in table["id"]]]
    images = np.empty((len(table), size, size, 3), np.uint8)
    for k, i in enumerate(table["id"]):
        with Image.open(fashion / "images" / f"{i}.jpg") as im:
            images[k] = np.asarray(im.convert("RGB").resize((size, size),
                                                            Image.Resampling.BILINEAR))
    tasks, labels = [], pd.DataFrame({"id": table["id"].to_numpy(), "copy": 0})
    for name in TASKS:
        classes = tuple(sorted(set(table[name]) - {""}))
        index = {c: float(j) for j, c in enumerate(classes)}
        labels[name] = [index.get(v, np.nan) for v in table[name]]
        tasks.append(TaskSchema(name, TaskKind.MULTICLASS, name, classes=classes).to_dict())
    val = np.arange(len(table)) % 10 == 0
    return ({"train": images[~val], "val": images[val]},
            {"train": labels[~val].reset_index(drop=True),
             "val": labels[val].reset_index(drop=True)},
            {"tasks": tasks})


def write_scale(root: Path, factor: int, images: dict[str, np.ndarray],
                labels: dict[str, pd.DataFrame], schema: dict[str, object]) -> None:
    """``factor`` copies of the 1x shards (train and val) as the augment stage writes them."""
    (root / "selected").mkdir(parents=True)
    (root / "selected" / "schema.json").write_text(json.dumps(schema))
    aug = root / "augmented"
    for split in ("train", "val"):
        (aug / split).mkdir(parents=True)
        for k in range(factor):
            np.save(aug / split / f"images-{k:05d}.npy", images[split])
        pd.concat([labels[split]] * factor, ignore_index=True).to_parquet(
            aug / split / "labels.parquet", index=False)
    size = list(images["train"].shape[1:3])
    (aug / "meta.json").write_text(json.dumps(
        {"image_size": size, "channels": 3, "mode": "RGB", "online": False,
         "counts": {s: factor * len(images[s]) for s in images}}))


def _rss_anon(pid: int) -> int:
    """``RssAnon`` of ``pid`` in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def measure(root: Path, loader: str, workers: int) -> dict[str, float]:
    """Run ``mtl train`` for 1 epoch; peak RssAnon (MiB) of the process and of the tree."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"epochs": 1, "batch_size": 256, "loader": loader,
                            "workers": workers, "log_conflict_every": 0, "resume": False,
                            "backbone_kwargs": {"channels": [8, 16], "out_features": 32},
                            "checkpoint_dir": str(root / f"state-{loader}")})
    path = root / f"params-{loader}.yaml"
    path.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "mtl", "train", "--params", str(path),
           "--selected", str(root / "selected"), "--augmented", str(root / "augmented"),
           "--out", str(root / f"model-{loader}.pt"), "--live", str(root / f"live-{loader}")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = {"main": 0, "tree": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            main = _rss_anon(proc.pid)
            tree = main + sum(_rss_anon(c) for c in _children(proc.pid))
            peak["main"], peak["tree"] = max(peak["main"], main), max(peak["tree"], tree)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"mtl train failed ({proc.returncode}):\n{out[-3000:]}")
    return {"main": peak["main"] / 2**20, "tree": peak["tree"] / 2**20,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2, help="streamed run's train.workers")
    parser.add_argument("--data", type=Path, default=FASHION, help="the Fashion data folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtl-train-memory-") as tmp:
        images, labels, schema = build_base(args.data, args.size)
        rows = []
        for factor in args.scales:
            root = Path(tmp) / f"x{factor}"
            write_scale(root, factor, images, labels, schema)
            n = factor * len(images["train"])
            gib = factor * (images["train"].nbytes + images["val"].nbytes) / 2**30
            stream = measure(root, "stream", args.workers)
            memory = measure(root, "memory", 0)
            rows.append((factor, n, gib, stream, memory))
            print(f"x{factor}: {n} train images, stream {stream}, memory {memory}", flush=True)
            for p in (root / "augmented").rglob("*.npy"):
                p.unlink()  # keep at most one scale on disk
    base = rows[0]
    print(f"\n| scale | train images | shards (GiB) | stream: main RssAnon (MiB) | stream: "
          f"+ {args.workers} workers | stream s | memory: RssAnon (MiB) | memory s |")
    print("|---|---|---|---|---|---|---|---|")
    for factor, n, gib, s, m in rows:
        print(f"| {factor}x | {n:,} | {gib:.2f} | {s['main']:.0f} "
              f"({100 * (s['main'] / base[3]['main'] - 1):+.1f} %) | {s['tree']:.0f} "
              f"({100 * (s['tree'] / base[3]['tree'] - 1):+.1f} %) | {s['seconds']:.0f} | "
              f"{m['main']:.0f} ({100 * (m['main'] / base[4]['main'] - 1):+.1f} %) | "
              f"{m['seconds']:.0f} |")


if __name__ == "__main__":
    main()
