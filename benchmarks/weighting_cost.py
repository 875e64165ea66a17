"""Step time of every weighting method x backend relative to a plain PyTorch training step.

Same model (a LeNet-style shared CNN with two 10-class heads on 28x28 greyscale), same batch
(256), ``torch.set_num_threads(2)``; every configuration has its own identically initialised
copy of the model and optimiser. Repetitions are interleaved (one step of every configuration
per round, in an order shuffled afresh each round, see ``_timing.py``) so that drift in
machine load hits all configurations alike and no configuration always follows the same one;
the reported number is the median over rounds of ``step time / plain step time of the same
round``. A second plain step is timed as a control (its ratio must be near 1.00), and every
configuration is checked to give every encoder parameter a finite, non-zero gradient before
it is timed.

Usage::

    python benchmarks/weighting_cost.py [--out benchmarks/results/weighting_cost.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import interleaved_times, median_ratios
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


def assert_encoder_gradient(params: Iterable[Tensor], what: str) -> None:
    """Raise unless every shared (encoder) parameter holds a finite, non-zero ``.grad``.

    A backend that skipped the backbone would look cheaper than a plain step; this is the
    check that no timed variant does so.
    """
    for i, p in enumerate(params):
        if p.grad is None:
            raise AssertionError(f"{what}: encoder parameter {i} {tuple(p.shape)} got no gradient")
        if not bool(torch.isfinite(p.grad).all()) or not bool(p.grad.ne(0).any()):
            raise AssertionError(
                f"{what}: encoder parameter {i} {tuple(p.shape)} expected a finite, non-zero "
                f"gradient, found norm {float(p.grad.norm())}"
            )


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
    models = [copy.deepcopy(base), copy.deepcopy(base)]  # plain, plain control
    steps: list[Step] = [make_plain_step(m, x, ys) for m in models]
    for method in args.methods or list_weightings():
        cls = get_weighting_class(method)
        for backend in cls.backends if cls.level == "gradient" else ("-",):
            w = create_weighting(method, 2)
            passes = backward_passes(w, backend if backend != "-" else "full")
            variants = [(backend, True)]
            if args.loop and backend == "full":
                variants.append(("full (loop)", False))
            for label, vmapped in variants:
                configs.append((method, cls.level, label, passes if vmapped else "T"))
                models.append(copy.deepcopy(base))
                steps.append(make_mtl_step(
                    models[-1], x, ys, method, "full" if backend == "-" else backend, vmapped
                ))  # fmt: skip

    for i, (step, model) in enumerate(zip(steps, models, strict=True)):
        step()  # probe: the backbone must really receive a gradient
        what = "plain" if i < 2 else " / ".join(configs[i - 2][::2])
        assert_encoder_gradient(model.shared_parameters(), what)
    times = interleaved_times(steps, args.rounds, args.warmup, sync=sync)
    ratios = median_ratios(times)
    plain_ms = statistics.median(times[0]) * 1e3
    rows = [
        (*cfg, ratio, statistics.median(ts) * 1e3)
        for cfg, ratio, ts in zip(configs, ratios[2:], times[2:], strict=True)
    ]

    lines = [
        "# Weighting cost: step time relative to a plain PyTorch step",
        "",
        f"LeNet-style shared CNN, 2 classification heads, 28x28x1, batch {args.batch_size}, "
        f"SGD; torch {torch.__version__}, device {_describe(device)}, "
        f"{args.threads} intra-op threads"
        f"; {args.rounds} interleaved rounds (order shuffled each round) after {args.warmup} "
        f"warm-up rounds; median of per-round ratios. Plain step (`loss = sum(losses); "
        f"loss.backward(); opt.step()`): {plain_ms:.1f} ms; a second plain step timed as a "
        f"control: {ratios[1]:.2f}x.",
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
