"""Step time of every weighting method x backend relative to a plain PyTorch training step.

Same model (a LeNet-style shared CNN with two 10-class heads on 28x28 greyscale), same batch
(256), ``torch.set_num_threads(2)``; every configuration has its own identically initialised
copy of the model and optimiser. Repetitions are interleaved (one step of every configuration
per round) so that drift in machine load hits all configurations alike; the reported number
is the median over rounds of ``step time / plain step time of the same round``.

Usage::

    python benchmarks/weighting_cost.py [--out benchmarks/results/weighting_cost.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.base import MultiTaskModel
from mtl.weighting import (
    backward_passes,
    create_weighting,
    get_weighting_class,
    list_weightings,
    multitask_backward,
    set_vmapped_gradients,
)


class LeNetMTL(MultiTaskModel):
    """LeNet-5-style shared trunk (two conv + one FC layer) and one linear head per task."""

    def __init__(self, num_tasks: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList(nn.Linear(50, num_classes) for _ in range(num_tasks))

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {f"task{i}": head(z) for i, head in enumerate(self.heads)}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.heads[int(task.removeprefix("task"))].parameters()


Step = Callable[[], None]


def make_plain_step(model: LeNetMTL, x: Tensor, ys: list[Tensor]) -> Step:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = sum(F.cross_entropy(out[f"task{i}"], y) for i, y in enumerate(ys))
        loss.backward()  # type: ignore[union-attr]
        opt.step()

    return step


def make_mtl_step(
    model: LeNetMTL, x: Tensor, ys: list[Tensor], method: str, backend: str, vmapped: bool = True
) -> Step:
    weighting = create_weighting(method, len(ys))
    opt = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=1e-3)
    shared = list(model.shared_parameters())
    heads = [p for i in range(len(ys)) for p in model.task_parameters(f"task{i}")]
    present = torch.ones(len(ys), dtype=torch.bool, device=x.device)

    def step() -> None:
        set_vmapped_gradients(vmapped)
        opt.zero_grad(set_to_none=True)
        z = model.encode(x)
        out = model.decode(z)
        losses = torch.stack([F.cross_entropy(out[f"task{i}"], y) for i, y in enumerate(ys)])
        multitask_backward(weighting, losses, present, shared, heads, z, backend=backend)
        opt.step()
        weighting.step_end(losses.detach(), present)

    return step


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores visible)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/weighting_cost.md"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="default: all registered")
    parser.add_argument("--device", default="cpu", help="cpu (the reference setting) or cuda")
    parser.add_argument(
        "--loop",
        action="store_true",
        help="also time the full backend with one backward per task instead of one vmapped",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 1, 28, 28, device=device)
    ys = [torch.randint(0, 10, (args.batch_size,), device=device) for _ in range(2)]
    base = LeNetMTL(num_tasks=2).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    configs: list[tuple[str, str, str, str]] = []  # (method, level, backend, passes)
    steps: list[Step] = [make_plain_step(copy.deepcopy(base), x, ys)]
    for method in args.methods or list_weightings():
        cls = get_weighting_class(method)
        for backend in cls.backends if cls.level == "gradient" else ("-",):
            w = create_weighting(method, 2)
            passes = backward_passes(w, backend if backend != "-" else "full")
            configs.append((method, cls.level, backend, passes))
            steps.append(
                make_mtl_step(
                    copy.deepcopy(base), x, ys, method, "full" if backend == "-" else backend
                )
            )
            if args.loop and backend == "full":
                configs.append((method, cls.level, "full (loop)", "T"))
                steps.append(make_mtl_step(copy.deepcopy(base), x, ys, method, "full", False))

    for _ in range(args.warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(args.rounds):
        for i, step in enumerate(steps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[i].append(time.perf_counter() - t0)
    plain = times[0]
    plain_ms = statistics.median(plain) * 1e3
    rows = []
    for cfg, ts in zip(configs, times[1:], strict=True):
        ratio = statistics.median(t / p for t, p in zip(ts, plain, strict=True))
        rows.append((*cfg, ratio, statistics.median(ts) * 1e3))

    lines = [
        "# Weighting cost: step time relative to a plain PyTorch step",
        "",
        f"LeNet-style shared CNN, 2 classification heads, 28x28x1, batch {args.batch_size}, "
        f"SGD; torch {torch.__version__}, device {_describe(device)}, "
        f"{args.threads} intra-op threads"
        f"; {args.rounds} interleaved rounds after {args.warmup} warm-up rounds; median of "
        f"per-round ratios. Plain step (`loss = sum(losses); loss.backward(); opt.step()`): "
        f"{plain_ms:.1f} ms.",
        "",
        "| method | level | backend | backward passes | ratio to plain | step ms |",
        "|---|---|---|---|---:|---:|",
    ]
    lines += [f"| {m} | {lv} | {b} | {p} | {r:.2f}x | {ms:.1f} |" for m, lv, b, p, r, ms in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
