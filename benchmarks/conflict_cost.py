"""Cost of one task-conflict measurement, in train steps, and what the default rate makes of it.

``benchmarks/train_overhead.py`` times whole 50-step epochs, so one measurement is 1/50 of
what it sees and drowns in the noise of a loaded machine. Here single train steps are
interleaved (shuffled order, many rounds): ``mtl.train.train_one_epoch`` over one batch with
conflict logging off, and with a measurement in that step (``log_conflict_every: 1``), on the
pipeline's default model (``hps`` + ``smallcnn``, 2 tasks, batch 256, AdamW). The extra cost of
one measurement is ``c = median(with / without) - 1`` steps; at one measurement every ``N``
steps the overhead is ``c / N`` (the default ``N = 50``).

Usage::

    python benchmarks/conflict_cost.py [--rounds 40] [--threads 2] [--tasks 2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_times, median_ratios

from mtl.config import TrainConfig
from mtl.models import create_model
from mtl.schema import TaskKind, TaskSchema
from mtl.train import SplitData, TrainLoop, _build_scheduler, train_one_epoch
from mtl.weighting import create_weighting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=50, help="the rate to convert the cost to")
    ap.add_argument("--note", default="", help="free text (machine, load) added to the output")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/conflict_cost.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tasks = tuple(
        TaskSchema(f"t{i}", TaskKind.MULTICLASS, f"t{i}", classes=tuple(map(str, range(10))))
        for i in range(args.tasks)
    )
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (args.batch, 28, 28, 1), dtype=np.uint8))
    data = SplitData(images, {t.name: rng.integers(0, 10, args.batch).astype(np.float32)
                              for t in tasks})  # fmt: skip
    base = create_model("hps", "smallcnn", tasks, in_channels=1)

    def make(every: int) -> TrainLoop:
        cfg = TrainConfig(batch_size=args.batch, scheduler="none", log_conflict_every=every)
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return TrainLoop(model, create_weighting("equal", len(tasks)), tasks, opt,
                         _build_scheduler(opt, cfg, 1), torch.device("cpu"), cfg,
                         torch.Generator().manual_seed(0))  # fmt: skip

    loops = [make(0), make(0), make(1)]  # off, off again (control), a measurement every step

    def step(loop: TrainLoop) -> None:
        stats = train_one_epoch(loop, data)  # one batch = one optimiser step
        assert bool(stats.conflict) == bool(loop.cfg.log_conflict_every)

    times = interleaved_times([lambda lp=lp: step(lp) for lp in loops], args.rounds,
                              args.warmup)  # fmt: skip
    ratios = median_ratios(times)
    c = ratios[2] - 1.0
    step_ms = statistics.median(times[0]) * 1e3
    text = "\n".join([
        "# Cost of one task-conflict measurement",
        "",
        f"Command: `python benchmarks/conflict_cost.py --rounds {args.rounds} --threads "
        f"{args.threads} --tasks {args.tasks} --batch {args.batch}`",
        "",
        *([args.note, ""] if args.note else []),
        f"hps + smallcnn, {args.tasks} tasks × 10 classes, 28×28×1, batch {args.batch}, AdamW, "
        f"equal weighting; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads; {args.rounds} rounds of single train steps in a "
        f"shuffled order after {args.warmup} warm-up rounds; step without logging "
        f"{step_ms:.1f} ms (median).",
        "",
        "| train step | median ratio to a step without logging |",
        "|---|---:|",
        "| conflict logging off | 1.000 |",
        f"| conflict logging off again (control) | {ratios[1]:.3f} |",
        f"| with one conflict measurement | {ratios[2]:.3f} |",
        "",
        f"One measurement costs {c:.2f} train steps; at one every {args.every} steps (the "
        f"default) that is {100 * c / args.every:.1f} % over logging off.",
    ]) + "\n"  # fmt: skip
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
