"""Overhead of the train stage's step over a plain hand-written PyTorch loop.

Same model (the pipeline's default: ``hps`` + ``smallcnn``, two 10-class heads), same batches
(MultiMNIST-sized 28×28 greyscale uint8, batch 256), same optimiser (AdamW, constant LR),
``torch.set_num_threads(2)``. Both sides start every round from identical weights and run the
same number of steps over the same batches; rounds alternate which side goes first, and the
reported figure is the median over rounds of ``mtl time / plain time``.

The mtl side is ``mtl.train.train_one_epoch`` itself (masked per-task losses, the weighting
backend, NaN checks, statistics), with task-conflict logging off and, in a second row, at the
default of one measurement every 50 steps.

Usage::

    python benchmarks/train_overhead.py [--rounds 15] [--steps 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtl.config import TrainConfig
from mtl.inference import to_model_input
from mtl.models import create_model
from mtl.schema import TaskKind, TaskSchema
from mtl.train import SplitData, TrainLoop, _build_scheduler, train_one_epoch
from mtl.weighting import create_weighting

TASKS = tuple(TaskSchema(n, TaskKind.MULTICLASS, n, classes=tuple(str(i) for i in range(10)))
              for n in ("left", "right"))


def _data(n: int) -> SplitData:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (n, 28, 28, 1), dtype=np.uint8))
    targets = {t.name: rng.integers(0, 10, n).astype(np.float32) for t in TASKS}
    return SplitData(images, targets)


def plain_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, data: SplitData,
                batch: int, generator: torch.Generator) -> None:
    """What a user would write by hand: forward, sum of cross-entropies, backward, step."""
    model.train()
    y = torch.from_numpy(np.stack([data.targets[t.name] for t in TASKS], 1)).long()
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data), batch):
        idx = order[start:start + batch]
        out = model(to_model_input(data.images[idx], torch.device("cpu")))
        loss = sum(F.cross_entropy(out[t.name], y[idx, i]) for i, t in enumerate(TASKS))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20, help="steps per side per round")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_overhead.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = _data(args.batch * args.steps)
    base = create_model("hps", "smallcnn", TASKS, in_channels=1)
    cfgs = {"mtl (conflict logging off)": TrainConfig(batch_size=args.batch, scheduler="none",
                                                       log_conflict_every=0),
            "mtl (conflict logging every 50 steps)": TrainConfig(
                batch_size=args.batch, scheduler="none", log_conflict_every=50)}
    ratios: dict[str, list[float]] = {k: [] for k in cfgs}
    plain_ms: list[float] = []
    for r in range(args.rounds + 1):  # round 0 warms up
        times: dict[str, float] = {}
        sides = ["plain", *cfgs]
        if r % 2:
            sides.reverse()
        for side in sides:
            model = copy.deepcopy(base)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            if side == "plain":
                plain_epoch(model, opt, data, args.batch, gen)
            else:
                cfg = cfgs[side]
                loop = TrainLoop(model, create_weighting("equal", len(TASKS)), TASKS, opt,
                                 _build_scheduler(opt, replace(cfg, epochs=1), args.steps),
                                 torch.device("cpu"), cfg, gen)
                train_one_epoch(loop, data)
            times[side] = time.perf_counter() - t0
        if r == 0:
            continue
        plain_ms.append(times["plain"] / args.steps * 1e3)
        for k in cfgs:
            ratios[k].append(times[k] / times["plain"])
    lines = [
        "# Train-stage step overhead vs a plain PyTorch loop",
        "",
        f"Command: `python benchmarks/train_overhead.py --rounds {args.rounds} --steps "
        f"{args.steps} --batch {args.batch}`",
        "",
        f"hps + smallcnn, 2 tasks × 10 classes, 28×28×1, batch {args.batch}, AdamW, "
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; "
        f"{args.rounds} rounds × {args.steps} steps per side, sides alternating order. "
        f"Plain step: {statistics.median(plain_ms):.1f} ms (median).",
        "",
        "| loop | median ratio to plain | min | max |",
        "|---|---:|---:|---:|",
        "| plain hand-written loop | 1.000 | | |",
    ]
    for k, v in ratios.items():
        lines.append(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
