"""Benchmark: the clean and select stages at 10k, 30k and 100k rows, side by side in one run.

    python benchmarks/data_scale.py [--rows 10000 30000 100000] [--workers 0] \
        [--fashion ../shared/datasets/fashion-product] [--distances 2 4 8]

Data: the Fashion photos (9,583 rows) replicated to the largest row count in a temporary folder
under ``/tmp`` (deleted at the end, never inside the project). Replica ``k`` of a photo gets a
new id (``<id>r<k>``) and its own image: a random crop of up to 8 % per side resized back,
a mirror for odd ``k``, a small brightness/contrast change and a few random pixels, so most
copies are new content (new content hash, a pHash a few bits from the original: the
near-duplicate structure of a real catalogue with several shots per product). One replica in
twenty is an exact copy (a hard link), which the clean stage rejects as ``duplicate_image``.
Each row count is a prefix of one labels table over the same images, and runs in its own
process, so its peak memory is its own.

Reported per row count: wall time of clean and select, rows/s, the main process's peak RSS
(``ru_maxrss``) and peak anonymous RSS (``RssAnon``, sampled; the stage's own memory, not
mapped files) during each stage, the peak RSS of the largest decoding worker and of all workers
together (sampled from ``/proc``: they come from a forkserver, which ``RUSAGE_CHILDREN`` never
sees), the manifest's own size (``DataFrame.memory_usage(deep=True)``), and the number of
Hamming distances the near-duplicate search computes on the manifest's pHashes at several
distances (``NearDuplicateStats``), with growth exponents ``log(y2/y1) / log(n2/n1)`` between
successive row counts (1 = linear, 2 = quadratic).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from multiprocessing import Pool
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXACT_COPY_EVERY = 20  # one replica in twenty is a hard link: an exact duplicate


def _default_fashion() -> Path:
    """``../shared/datasets/fashion-product`` of the project, or of the main checkout above a
    git worktree (``/work/wt/<name>`` -> ``/work/shared``)."""
    for base in (REPO.parent, REPO.parent.parent):
        cand = base / "shared" / "datasets" / "fashion-product"
        if (cand / "styles.csv").is_file():
            return cand
    return REPO.parent / "shared" / "datasets" / "fashion-product"


def _replicate_one(job: tuple[str, str, int]) -> None:
    """Write replica ``k`` of ``src`` to ``dst``: cropped, maybe mirrored, shifted, speckled."""
    import numpy as np
    from PIL import Image

    src, dst, k = job
    rng = np.random.default_rng([zlib.crc32(Path(src).name.encode()), k])  # reproducible
    with Image.open(src) as im:
        rgb: Image.Image = im.convert("RGB")
        w, h = rgb.size
        # Crop up to 8 % per side and resize back: moves the pHash by a few bits.
        box = (int(rng.integers(0, w // 12 + 1)), int(rng.integers(0, h // 12 + 1)),
               w - int(rng.integers(0, w // 12 + 1)), h - int(rng.integers(0, h // 12 + 1)))
        rgb = rgb.crop(box).resize((w, h), Image.Resampling.BILINEAR)
        if k % 2:
            rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(rgb, dtype=np.float32)  # [H, W, 3]
        arr = arr * rng.uniform(0.9, 1.1) + rng.uniform(-12, 12)
        ys, xs = rng.integers(0, h, 16), rng.integers(0, w, 16)
        arr[ys, xs] = rng.integers(0, 256, (16, 3))  # a few random pixels
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(dst, quality=90)


def build_dataset(fashion: Path, dest: Path, rows: int, workers: int) -> Path:
    """``dest``: ``images/`` plus ``styles.csv`` of ``rows`` rows (originals first)."""
    import pandas as pd

    (dest / "images").mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(fashion / "styles.csv", dtype=str, keep_default_na=False)
    same_fs = (fashion / "images").stat().st_dev == dest.stat().st_dev
    frames, jobs = [], []
    for k in range(math.ceil(rows / len(table))):
        t = table.copy()
        if k:
            t["id"] = t["id"] + f"r{k}"
        frames.append(t)
        for i, (orig, new) in enumerate(zip(table["id"], t["id"], strict=True)):
            src = fashion / "images" / f"{orig}.jpg"
            dst = dest / "images" / f"{new}.jpg"
            if k == 0 or i % EXACT_COPY_EVERY == k % EXACT_COPY_EVERY:
                if same_fs:
                    os.link(src, dst)
                else:
                    dst.write_bytes(src.read_bytes())
            else:
                jobs.append((str(src), str(dst), k))
    with Pool(workers or os.cpu_count() or 1) as pool:
        pool.map(_replicate_one, jobs, chunksize=256)
    pd.concat(frames, ignore_index=True).iloc[:rows].to_csv(dest / "styles.csv", index=False)
    return dest


class MemorySampler:
    """Samples this process's ``RssAnon`` and every descendant's ``VmRSS`` from ``/proc``.

    ``mark()`` starts a new phase; ``peaks[phase]`` holds that phase's peak main ``RssAnon``,
    largest single descendant RSS and largest sum over descendants (kB).
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.peaks: dict[str, dict[str, int]] = {}
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def mark(self, phase: str) -> None:
        self._sample()  # close the previous phase with a last sample
        self.phase = phase

    @staticmethod
    def _field(pid: int, name: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def _descendants(self) -> list[int]:
        me = os.getpid()
        parent: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        out = []
        for pid in parent:
            p, depth = parent.get(pid), 0
            while p not in (None, 0, 1, me) and depth < 8:
                p, depth = parent.get(p), depth + 1
            if p == me and pid != me:
                out.append(pid)
        return out

    def _sample(self) -> None:
        peak = self.peaks.setdefault(self.phase, {"main_anon": 0, "worker": 0, "workers": 0})
        peak["main_anon"] = max(peak["main_anon"], self._field(os.getpid(), "RssAnon:"))
        rss = [self._field(pid, "VmRSS:") for pid in self._descendants()]
        peak["worker"] = max(peak["worker"], max(rss, default=0))
        peak["workers"] = max(peak["workers"], sum(rss))

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()


def _former_comparisons(hashes: np.ndarray, d: int) -> int:
    """Distances the former search (before multi-index hashing adapted its blocks) computed:
    ``d + 1`` fixed blocks, every bucket of equal block values compared in full (``s**2``)."""
    import numpy as np

    uniq = np.unique(hashes)
    total = 0
    for lo, hi in itertools.pairwise(np.linspace(0, 64, min(d + 1, 64) + 1).astype(int)):
        key = (uniq >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        sizes = np.unique(key, return_counts=True)[1]
        total += int((sizes[sizes > 1].astype(np.int64) ** 2).sum())
    return total


def run_once(dataset_dir: str, labels: str, workers: int, distance: int | None,
             distances: list[int]) -> dict[str, Any]:
    """Run clean + select in this process; timings, memory and near-duplicate search work."""
    from dataclasses import replace

    from mtl.config import load_params
    from mtl.data.clean import clean
    from mtl.data.dedup import NearDuplicateStats, near_duplicate_groups, parse_hashes
    from mtl.data.select import select

    params = load_params(REPO / "configs" / "fashion-product.yaml")
    ds = replace(params.dataset, dir=dataset_dir, labels=labels)
    cfg = replace(params.clean, workers=workers)
    if distance is not None:
        cfg = replace(cfg, near_duplicate_distance=distance)
    with MemorySampler() as mem:
        mem.mark("clean")
        t0 = time.perf_counter()
        cleaned = clean(ds, cfg)
        t1 = time.perf_counter()
        mem.mark("select")
        selected = select(cleaned.manifest, ds, params.select)
        t2 = time.perf_counter()
        mem.mark("search")
        hashes = parse_hashes(list(cleaned.manifest["phash"]))
        search: dict[str, dict[str, Any]] = {}
        for d in distances:
            st = NearDuplicateStats()
            t = time.perf_counter()
            near_duplicate_groups(hashes, d, stats=st)
            search[str(d)] = {"comparisons": st.comparisons, "probes": st.probes,
                              "plan": f"{st.blocks}/{st.radius}", "pairs": st.pairs,
                              "unique": st.unique_hashes, "s": time.perf_counter() - t,
                              "former": _former_comparisons(hashes, d)}
    return {
        "rows": cleaned.report["raw_rows"],
        "clean_rows": cleaned.report["clean_rows"],
        "rejected": cleaned.report["rejects_by_reason"],
        "clean_s": t1 - t0,
        "select_s": t2 - t1,
        "train_rows": len(selected.splits["train"]),
        "near_dup_groups": cleaned.report["duplicates"].get("near_duplicate_groups", 0),
        "stage_distance": cfg.near_duplicate_distance,
        "manifest_mb": float(cleaned.manifest.memory_usage(deep=True).sum()) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_clean_mb": mem.peaks["clean"]["main_anon"] / 1024,
        "anon_select_mb": mem.peaks["select"]["main_anon"] / 1024,
        "anon_start_mb": mem.peaks["start"]["main_anon"] / 1024,
        "worker_mb": mem.peaks["clean"]["worker"] / 1024,
        "workers_mb": mem.peaks["clean"]["workers"] / 1024,
        "search": search,
    }


def _exponent(y1: float, y2: float, n1: float, n2: float) -> str:
    if y1 <= 0 or y2 <= 0:
        return "–"
    return f"{math.log(y2 / y1) / math.log(n2 / n1):.2f}"


def report(results: list[dict[str, Any]], distances: list[int]) -> str:
    """The markdown tables."""
    r = results
    out = ["| rows | clean rows | clean s | select s | rows/s (clean+select) | manifest MB "
           "| peak RSS MB (main) | peak anon MB clean | peak anon MB select "
           "| peak RSS MB (largest worker) | peak RSS MB (all workers) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r:
        tot = float(x["clean_s"]) + float(x["select_s"])
        out.append(
            f"| {x['rows']:,} | {x['clean_rows']:,} | {x['clean_s']:.1f} | {x['select_s']:.1f} "
            f"| {int(x['rows']) / tot:,.0f} | {x['manifest_mb']:.1f} | {x['peak_rss_mb']:.0f} "
            f"| {x['anon_clean_mb']:.0f} | {x['anon_select_mb']:.0f} | {x['worker_mb']:.0f} "
            f"| {x['workers_mb']:.0f} |")
    out += ["", "Growth between successive row counts (exponent: 1 = linear, 2 = quadratic; "
            "memory: extra MB per extra 10k rows, main anonymous RSS vs the manifest itself):",
            "", "| rows | time exponent | anon MB / 10k rows (clean) "
            "| anon MB / 10k rows (select) | manifest MB / 10k rows |",
            "|---|---:|---:|---:|---:|"]
    for a, b in itertools.pairwise(r):
        n1, n2 = float(a["rows"]), float(b["rows"])
        per = 1e4 / (n2 - n1)
        ta = float(a["clean_s"]) + float(a["select_s"])
        tb = float(b["clean_s"]) + float(b["select_s"])
        out.append(
            f"| {int(n1):,} → {int(n2):,} | {_exponent(ta, tb, n1, n2)} "
            f"| {(b['anon_clean_mb'] - a['anon_clean_mb']) * per:.1f} "
            f"| {(b['anon_select_mb'] - a['anon_select_mb']) * per:.1f} "
            f"| {(b['manifest_mb'] - a['manifest_mb']) * per:.1f} |")
    out += ["", "Near-duplicate search on the manifest's pHashes: work now (Hamming distances "
            "computed + block look-ups, plan = blocks/radius) vs the former search (d + 1 "
            "fixed blocks, s² distances per bucket); all pairs would be unique² / 2:", "",
            "| distance | rows | unique pHashes | plan | look-ups | distances | work "
            "| work exponent | former distances | former exponent | pairs found | search s |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in distances:
        prev: tuple[float, float, float] | None = None
        for x in r:
            s = x["search"][str(d)]
            work = s["comparisons"] + s["probes"]
            exp = ("", "") if prev is None else (
                _exponent(prev[1], work, prev[0], s["unique"]),
                _exponent(prev[2], s["former"], prev[0], s["unique"]))
            out.append(f"| {d} | {x['rows']:,} | {s['unique']:,} | {s['plan']} "
                       f"| {s['probes']:,} | {s['comparisons']:,} | {work:,} | {exp[0]} "
                       f"| {s['former']:,} | {exp[1]} | {s['pairs']:,} | {s['s']:.2f} |")
            prev = (s["unique"], work, s["former"])
    return "\n".join(out)


def search_side_by_side(rows: list[int], distances: list[int], former_rev: str,
                        rounds: int = 3) -> str:
    """Seconds of the search now vs ``mtl/data/dedup.py`` at ``former_rev`` (loaded from git),
    on uniform random 64-bit hashes, interleaved (median of ``rounds``); also checks that both
    give the same groups."""
    import importlib.util
    import statistics

    import numpy as np

    from mtl.data.dedup import NearDuplicateStats, near_duplicate_groups

    src = subprocess.run(["git", "show", f"{former_rev}:mtl/data/dedup.py"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("former_dedup", f.name)
    assert spec is not None and spec.loader is not None
    former = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(former)
    os.unlink(f.name)
    rng = np.random.default_rng(0)
    out = [f"Search seconds on uniform random hashes, now vs `{former_rev}` (median of "
           f"{rounds}, interleaved):", "",
           "| distance | hashes | plan | now s | former s | former / now |",
           "|---:|---:|---|---:|---:|---:|"]
    for d in distances:
        for n in rows:
            h = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
            now, old = [], []
            st = NearDuplicateStats()
            for _ in range(rounds):
                t = time.perf_counter()
                a = near_duplicate_groups(h, d, stats=st)
                now.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = former.near_duplicate_groups(h, d)
                old.append(time.perf_counter() - t)
                assert (a == b).all(), f"groups differ at distance {d}, {n} hashes"
            mn, mo = statistics.median(now), statistics.median(old)
            out.append(f"| {d} | {n:,} | {st.blocks}/{st.radius} | {mn:.2f} | {mo:.2f} "
                       f"| {mo / mn:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--workers", type=int, default=0, help="clean.workers (0 = all cores)")
    ap.add_argument("--fashion", type=Path, default=_default_fashion())
    ap.add_argument("--distance", type=int, default=None,
                    help="clean.near_duplicate_distance for the stage run (default: the "
                         "config's)")
    ap.add_argument("--distances", type=int, nargs="+", default=[2, 4, 8],
                    help="distances at which the search work is counted")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--search-only", metavar="REV",
                    help="only time the search now vs mtl/data/dedup.py at git revision REV "
                         "on uniform random hashes (no images)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.search_only:
        print(search_side_by_side(sorted(args.rows), args.distances, args.search_only))
        return
    if args.child:
        print(json.dumps(run_once(args.child[0], args.child[1], args.workers, args.distance,
                                  args.distances)))
        return
    if not (args.fashion / "styles.csv").is_file():
        sys.exit(f"benchmark needs the Fashion data: no styles.csv in {args.fashion}")
    rows = sorted(args.rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="mtl-data-scale-", dir="/tmp") as tmp:
        t = time.perf_counter()
        data = build_dataset(args.fashion, Path(tmp), rows[-1], args.workers)
        print(f"built {rows[-1]:,} rows in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        import pandas as pd

        table = pd.read_csv(data / "styles.csv", dtype=str, keep_default_na=False)
        for n in rows:
            labels = f"styles_{n}.csv"
            table.iloc[:n].to_csv(data / labels, index=False)
            cmd = [sys.executable, __file__, "--child", str(data), labels,
                   "--workers", str(args.workers), "--distances", *map(str, args.distances)]
            if args.distance is not None:
                cmd += ["--distance", str(args.distance)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                 env={**os.environ, "TQDM_DISABLE": "1"})
            if out.returncode:
                sys.exit(f"{n:,} rows failed:\n{out.stderr}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{n:,} rows done", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"cores: {os.cpu_count()}, clean.workers: {args.workers or 'all'}, "
          f"stage near_duplicate_distance: {results[0]['stage_distance']}, "
          f"load average: {os.getloadavg()}\n")
    print(report(results, args.distances))


if __name__ == "__main__":
    main()
