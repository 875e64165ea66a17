"""Interleaved side-by-side timing shared by the benchmarks (ratios to a reference, one process).

Why a shuffled order: with a fixed (or merely rotated) cyclic order every variant is always
preceded by the same variant, so whatever one step leaves behind (freed allocator pages that
the next step faults in again, evicted caches, sleeping OpenMP workers) always lands on the
same successor. In the LibMTL/TorchJD comparison the plain reference step always followed
TorchJD's vmapped UPGrad step, and the representation backend came out at 0.88-0.92x a plain
step although it does strictly more work (1.00-1.13x with a shuffled order). Here every
round runs the variants in a freshly shuffled (seeded) order, and a second, identical copy of
the reference runs as a *control*: its median ratio must come out near 1.00, otherwise the
timing method itself is biased (or the machine too noisy) and the table says so.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence

__all__ = ["interleaved_times", "median_ratios"]


def interleaved_times(
    steps: Sequence[Callable[[], object]],
    rounds: int,
    warmup: int = 2,
    seed: int = 0,
    sync: Callable[[], object] | None = None,
    on_round: Callable[[int], object] | None = None,
) -> list[list[float]]:
    """Wall-clock seconds ``times[i][r]`` of ``steps[i]`` in round ``r``.

    Each round runs every step once, in an order shuffled afresh (``random.Random(seed)``), so
    that no step is systematically preceded by the same one; ``warmup`` untimed rounds come
    first. ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after each timed step so
    that asynchronous device work is charged to the step that queued it. The garbage collector
    is collected before and disabled during each round, so that a collection triggered by one
    step's allocations is not charged to another. ``on_round(r)`` runs (untimed) before each
    timed round ``r``.
    """
    rng = random.Random(seed)
    sync = sync or (lambda: None)
    order = list(range(len(steps)))
    for _ in range(warmup):
        rng.shuffle(order)
        for i in order:
            steps[i]()
    times: list[list[float]] = [[] for _ in steps]
    for r in range(rounds):
        if on_round is not None:
            on_round(r)
        rng.shuffle(order)
        gc.collect()
        gc.disable()
        try:
            for i in order:
                sync()
                t0 = time.perf_counter()
                steps[i]()
                sync()
                times[i].append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return times


def median_ratios(times: Sequence[Sequence[float]], ref: int = 0) -> list[float]:
    """Median over rounds of ``times[i][r] / times[ref][r]`` for every ``i`` (``ref`` gives 1)."""
    base = times[ref]
    return [
        statistics.median(t / b for t, b in zip(ts, base, strict=True)) for ts in times
    ]
