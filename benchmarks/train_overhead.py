"""Overhead of the train stage's step over a plain hand-written PyTorch loop.

Same model (the pipeline's default: ``hps`` + ``smallcnn``, two 10-class heads), same batches
(MultiMNIST-sized 28×28 greyscale uint8, batch 256), same optimiser (AdamW, constant LR),
``torch.set_num_threads(2)``. Every side starts every round from identical weights and runs
the same number of steps over the same batches; each round runs the sides in a freshly
shuffled order (``_timing.py``), and the reported figures are medians over rounds of per-round
ratios. A second copy of the plain loop is timed as a control (its ratio must be near 1.00).

The mtl side is ``mtl.train.train_one_epoch`` itself (masked per-task losses, the weighting
backend, NaN checks, statistics), with task-conflict logging off and, in a second row, at the
default of one measurement every 50 optimiser steps. The optimiser-step counter runs on
across rounds (``loop.step`` = steps done so far, as it runs on across epochs in ``mtl
train``) and ``--steps`` must be a multiple of 50, so every round holds exactly one conflict
measurement: the default's rate, no more. (Before, every round restarted the counter at 0 with
20 steps per round, i.e. one measurement every 20 steps, 2.5× the default rate.)

Usage::

    python benchmarks/train_overhead.py [--rounds 15] [--steps 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_times, median_ratios

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
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--steps", type=int, default=50, help="steps per side per round")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="", help="free text (machine, load) added to the output")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_overhead.md"))
    args = ap.parse_args()
    every = 50
    if args.steps % every:
        ap.error(f"--steps must be a multiple of {every} (one conflict measurement per round), "
                 f"got {args.steps}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = _data(args.batch * args.steps)
    base = create_model("hps", "smallcnn", TASKS, in_channels=1)
    cfgs = {"mtl (conflict logging off)": TrainConfig(batch_size=args.batch, scheduler="none",
                                                       log_conflict_every=0),
            f"mtl (conflict logging every {every} steps, the default)": TrainConfig(
                batch_size=args.batch, scheduler="none", log_conflict_every=every)}
    state = {"round": 0}

    def plain_side() -> None:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        plain_epoch(model, opt, data, args.batch, torch.Generator().manual_seed(state["round"]))

    def mtl_side(cfg: TrainConfig) -> None:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loop = TrainLoop(model, create_weighting("equal", len(TASKS)), TASKS, opt,
                         _build_scheduler(opt, replace(cfg, epochs=1), args.steps),
                         torch.device("cpu"), cfg, torch.Generator().manual_seed(state["round"]))
        loop.step = state["round"] * args.steps  # the optimiser-step counter runs on
        train_one_epoch(loop, data)

    names = ["plain hand-written loop", "plain loop again (control)", *cfgs]
    sides = [plain_side, plain_side, *(functools.partial(mtl_side, c) for c in cfgs.values())]
    times = interleaved_times(sides, args.rounds, args.warmup,
                              on_round=lambda r: state.update(round=r))
    to_plain = median_ratios(times, 0)
    to_off = median_ratios(times, 2)
    plain_ms = statistics.median(times[0]) / args.steps * 1e3
    lines = [
        "# Train-stage step overhead vs a plain PyTorch loop",
        "",
        f"Command: `python benchmarks/train_overhead.py --rounds {args.rounds} --steps "
        f"{args.steps} --batch {args.batch} --threads {args.threads}`",
        "",
        *([args.note, ""] if args.note else []),
        f"hps + smallcnn, 2 tasks × 10 classes, 28×28×1, batch {args.batch}, AdamW, "
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; "
        f"{args.rounds} rounds × {args.steps} steps per side after {args.warmup} warm-up "
        f"round(s), sides in a shuffled order each round; medians of per-round ratios. "
        f"Plain step: {plain_ms:.1f} ms (median).",
        "",
        "| loop | median ratio to plain | min | max | median ratio to logging off |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(names):
        r = [t / p for t, p in zip(times[i], times[0], strict=True)]
        off = f"{to_off[i]:.3f}" if i >= 2 else ""
        lines.append(f"| {name} | {to_plain[i]:.3f} | {min(r):.3f} | {max(r):.3f} | {off} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
