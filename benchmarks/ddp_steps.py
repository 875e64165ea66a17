"""Benchmark: optimiser steps/s of the train stage's step on 1 vs 2 processes (DDP, gloo, CPU).

    python benchmarks/ddp_steps.py [--methods equal pcgrad] [--batch 128] [--steps 40] \
        [--rounds 3] [--threads 1]

The step is ``mtl.train.train_one_epoch`` itself on a ``TrainLoop`` built by the train
stage's own ``_build_loop``: ``hps`` + ``smallcnn`` (the default model), two 10-class tasks,
MultiMNIST-sized 28×28×1 uint8 images, AdamW, conflict logging off. Every process holds the
same per-process batch (``--batch``), so 2 processes step on a global batch twice as large:
the DDP path under test is the one ``mtl train`` takes under ``train.nproc: 2`` (torchrun):
``equal`` through the ``DistributedDataParallel`` wrapper, ``pcgrad`` (a gradient-level
method) with no wrapper, its per-task gradients all-reduced by ``ProcessGroupTaskGradients``
and rank 0's RNG state broadcast every step.

Variants, all in one spawned group of two ranks (``torch.multiprocessing.spawn``, gloo on
127.0.0.1; a one-process variant runs on rank 0 alone while rank 1 waits at a barrier), each
after 3 untimed warm-up steps; ``--rounds`` rounds, the variants in a shuffled order each
round (the same on both ranks); medians over rounds:

* 1 process × ``--threads`` intra-op threads (the reference),
* 2 processes × ``--threads`` threads each (DDP: twice the cores of the reference),
* 1 process × ``2 × --threads`` threads (the same cores as DDP without it).

Reported: optimiser steps/s (rank 0; the ranks step in lockstep), images/s (steps/s × global
batch) and the images/s ratio to the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtl.config import TrainConfig
from mtl.schema import TaskKind, TaskSchema
from mtl.train import Distributed, SplitData, _build_loop, train_one_epoch

TASKS = tuple(TaskSchema(n, TaskKind.MULTICLASS, n, classes=tuple(str(i) for i in range(10)))
              for n in ("left", "right"))
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Variant:
    """One side of the comparison."""

    method: str
    nproc: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.method}: {self.nproc} process(es) × {self.threads} thread(s)"


def _data(n: int, seed: int) -> SplitData:
    """``n`` random 28×28×1 images with two 10-class labels (the same on every rank)."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 255, (n, 28, 28, 1), dtype=np.uint8))
    return SplitData(images, {t.name: rng.integers(0, 10, n).astype(np.float32) for t in TASKS})


def _worker(rank: int, variants: list[Variant], batch: int, steps: int, rounds: int,
            seed: int, port: int, out: str) -> None:
    """One of the two ranks: build every variant's loop, then run ``rounds`` rounds.

    Both ranks shuffle with the same seed, so they take the variants in the same order. A
    one-process variant runs on rank 0 alone (its loop has ``world_size == 1`` and never
    touches the process group) while rank 1 waits at a barrier.
    """
    # DDP's "grad strides do not match bucket view strides" for the 1-channel first conv: its
    # [16, 1, 5, 5] weight's two layouts differ only in the stride of a size-1 dim (no copy).
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loops, data = {}, {}
        for v in variants:
            dist.barrier()  # every rank, every variant: the same collectives in the same order
            if rank >= v.nproc:
                continue
            global_batch = batch * v.nproc  # train.batch_size is the global batch under DDP
            cfg = TrainConfig(batch_size=global_batch, weighting=v.method, scheduler="none",
                              log_conflict_every=0, epochs=1, device="cpu")
            torch.set_num_threads(v.threads)
            loops[v] = _build_loop(TASKS, cfg, 1, 0, torch.device("cpu"),
                                   (steps + WARMUP_STEPS) * rounds, Distributed(rank, v.nproc))
            train_one_epoch(loops[v], _data(WARMUP_STEPS * global_batch, 1))  # warm-up
            data[v] = _data(steps * global_batch, 2)
        rng = random.Random(seed)
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(rounds):
            order = list(variants)
            rng.shuffle(order)
            for v in order:
                dist.barrier()
                if rank < v.nproc:
                    torch.set_num_threads(v.threads)
                    t0 = time.perf_counter()
                    stats = train_one_epoch(loops[v], data[v])  # ends in a collective
                    times[v.name].append((time.perf_counter() - t0) / stats.steps)
                    assert stats.steps == steps, (v, stats.steps)
        dist.barrier()
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(variants: list[Variant], batch: int, steps: int, rounds: int,
        seed: int) -> dict[str, list[float]]:
    """Spawn the two ranks once; seconds per optimiser step of each variant, per round."""
    with tempfile.TemporaryDirectory(prefix="mtl-ddp-") as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(variants, batch, steps, rounds, seed, _free_port(), out),
                 nprocs=2, join=True)
        res: dict[str, list[float]] = json.loads(Path(out).read_text())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["equal", "pcgrad"])
    ap.add_argument("--batch", type=int, default=128, help="per-process batch")
    ap.add_argument("--steps", type=int, default=40, help="timed optimiser steps per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    variants = [Variant(m, n, t) for m in args.methods
                for n, t in ((1, args.threads), (2, args.threads), (1, 2 * args.threads))]
    load = [os.getloadavg()]
    times = run(variants, args.batch, args.steps, args.rounds, args.seed)
    load.append(os.getloadavg())
    print(f"`python benchmarks/ddp_steps.py --methods {' '.join(args.methods)} --batch "
          f"{args.batch} --steps {args.steps} --rounds {args.rounds} --threads {args.threads}`"
          f"\n\ntorch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores; "
          f"load average before {load[0][0]:.1f}, after {load[1][0]:.1f}; per-process batch "
          f"{args.batch}; medians over {args.rounds} rounds (min-max of steps/s in brackets)\n")
    print("| method | processes × threads | global batch | steps/s | images/s "
          "| images/s vs 1 process |")
    print("|---|---|---:|---:|---:|---:|")
    for m in args.methods:
        ref = None
        for v in (x for x in variants if x.method == m):
            sps = [1 / t for t in times[v.name]]
            med = statistics.median(sps)
            ips = med * args.batch * v.nproc
            ref = ref if ref is not None else ips
            print(f"| {m} | {v.nproc} × {v.threads} | {args.batch * v.nproc} | {med:.2f} "
                  f"({min(sps):.2f}-{max(sps):.2f}) | {ips:,.0f} | {ips / ref:.2f} |")


if __name__ == "__main__":
    main()
