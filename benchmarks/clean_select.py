"""Benchmark: clean + select on the Fashion data (1×) and a 10× replicated copy, side by side.

    .venv/bin/python benchmarks/clean_select.py [--scales 1 10] [--workers 0]

The 10× copy is built in a temporary folder: every image is written again under a new id
(``<id>`` + ``r<k>``) with a replica-specific change (mirror / rotation / small brightness shift),
so the copies are new files with new content hashes, like a bigger photo dump, rather than
exact duplicates that the clean stage would reject. Each scale runs in its own process so its
peak RSS (``ru_maxrss`` of the stage process) is its own; the decoding workers' peak RSS is
sampled from ``/proc`` and reported separately (largest single worker).
Prints a markdown table; nothing of the data is written inside the project.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO.parent / "shared" / "datasets" / "fashion-product"


def _replicate_one(job: tuple[str, str, str, int]) -> None:
    import numpy as np
    from PIL import Image

    src, dst, _, k = job
    with Image.open(src) as im:
        im = im.convert("RGB")
        if k % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if k % 4 >= 2:
            im = im.transpose(Image.Transpose.ROTATE_180)
        arr = np.asarray(im, dtype=np.int16) + (k // 4) * 3  # a shift per replica
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(dst, quality=90)


def replicate(dest: Path, factor: int, workers: int) -> Path:
    """A copy of the Fashion data with ``factor`` variants of every row (the original first)."""
    import pandas as pd

    (dest / "images").mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(FASHION / "styles.csv", dtype=str, keep_default_na=False)
    frames, jobs = [], []
    for k in range(factor):
        t = table.copy()
        if k:
            t["id"] = t["id"] + f"r{k}"
        frames.append(t)
        for orig, new in zip(table["id"], t["id"], strict=True):
            src = FASHION / "images" / f"{orig}.jpg"
            dst = dest / "images" / f"{new}.jpg"
            if k == 0:
                os.link(src, dst) if _same_fs(src, dest) else dst.write_bytes(src.read_bytes())
            else:
                jobs.append((str(src), str(dst), new, k))
    with Pool(workers or os.cpu_count() or 1) as pool:
        pool.map(_replicate_one, jobs, chunksize=256)
    pd.concat(frames, ignore_index=True).to_csv(dest / "styles.csv", index=False)
    return dest


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


class DescendantRSS:
    """Samples the RSS of every descendant process (the decoding workers) from ``/proc``.

    The workers come from a forkserver, so ``RUSAGE_CHILDREN`` never sees them.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self) -> DescendantRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, interval: float) -> None:
        me = os.getpid()
        while not self._stop.wait(interval):
            parent: dict[int, int] = {}
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    try:
                        stat = (d / "stat").read_text()
                        parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
            for pid in parent:
                p, depth = parent.get(pid), 0
                while p not in (None, 0, 1, me) and depth < 8:
                    p, depth = parent.get(p), depth + 1
                if p != me or pid == me:
                    continue
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except (OSError, ValueError):
                    continue


def run_once(dataset_dir: str, workers: int) -> dict[str, float]:
    """Run clean + select in this process; return timings and peak memory."""
    from dataclasses import replace

    from mtl.config import load_params
    from mtl.data.clean import clean
    from mtl.data.select import select

    params = load_params(REPO / "configs" / "fashion-product.yaml")
    ds = replace(params.dataset, dir=dataset_dir)
    t0 = time.perf_counter()
    with DescendantRSS() as workers_rss:
        cleaned = clean(ds, replace(params.clean, workers=workers))
    t1 = time.perf_counter()
    selected = select(cleaned.manifest, ds, params.select)
    t2 = time.perf_counter()
    return {
        "rows": cleaned.report["raw_rows"],
        "clean_rows": cleaned.report["clean_rows"],
        "clean_s": t1 - t0,
        "select_s": t2 - t1,
        "near_dup_groups": cleaned.report["duplicates"].get("near_duplicate_groups", 0),
        "train_rows": len(selected.splits["train"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": workers_rss.peak_kb / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--workers", type=int, default=0, help="clean.workers (0 = all cores)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_once(args.child, args.workers)))
        return
    if not (FASHION / "styles.csv").is_file():
        sys.exit(f"benchmark needs the Fashion data at {FASHION}")
    results = []
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        for scale in args.scales:
            data = FASHION if scale == 1 else replicate(Path(tmp) / f"x{scale}", scale,
                                                        args.workers)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(data), "--workers", str(args.workers)],
                capture_output=True, text=True, check=True, cwd=REPO,
                env={**os.environ, "TQDM_DISABLE": "1"})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["scale"] = scale
            results.append(res)
    base = results[0]
    print(f"cores: {os.cpu_count()}, clean.workers: {args.workers or 'all'}\n")
    print("| scale | raw rows | clean rows | clean s | select s | images/s (clean+select) "
          "| peak RSS MB (main) | peak RSS MB (a worker) | time × | RSS × |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        total = r["clean_s"] + r["select_s"]
        print(f"| {r['scale']}× | {r['rows']:,} | {r['clean_rows']:,} | {r['clean_s']:.1f} | "
              f"{r['select_s']:.1f} | {r['rows'] / total:,.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['workers_peak_rss_mb']:.0f} | "
              f"{total / (base['clean_s'] + base['select_s']):.1f} | "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")


if __name__ == "__main__":
    main()
