"""Did multi-task learning help? Δm against single-task baselines, and seed aggregation.

Δm (Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks"; LibMTL's
``count_improvement``) is the mean relative difference between the multi-task model and the
single-task models, in percent::

    Δm = (1/T) Σ_t (−1)^{l_t} (M_mtl,t − M_stl,t) / M_stl,t × 100

with ``l_t = 1`` when lower is better for task ``t``'s metric. **Sign convention: positive means
the multi-task model is better than the single-task models.** Nash-MTL (Navon et al. 2022) and
FAMO (Liu et al. 2023) report the same quantity negated, as a "Δm% drop" where lower is better;
negate our value to compare with their tables.

Each task kind is compared on one primary metric (:func:`primary_metric`): accuracy for
multiclass and binary tasks, micro-F1 for multilabel tasks, MAE (lower is better) for regression.

Seeds: :func:`mean_std` and :func:`aggregate_seeds` give mean ± sample standard deviation
(``ddof=1``) over seeds; :func:`verdict` calls a difference smaller than the seed spread
"within seed noise" rather than a win.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from mtl.schema import TaskKind

__all__ = [
    "SKIPPED_BASELINE_FORMAT",
    "Comparison",
    "MeanStd",
    "Verdict",
    "aggregate_seeds",
    "compare",
    "compare_to_baselines",
    "delta_m",
    "format_mean_std",
    "mean_std",
    "primary_metric",
    "relative_delta",
    "skipped_baseline",
    "verdict",
]

#: Format of the file a baseline stage writes instead of a checkpoint when it trains nothing
#: (``evaluate.baselines: false``, or a task the select stage dropped); evaluation reports the
#: reason instead of a Δm term. Kept here so evaluation recognises it without importing training.
SKIPPED_BASELINE_FORMAT = "mtl.baseline-skipped/1"


def skipped_baseline(task: str, reason: str) -> dict[str, str]:
    """The payload written in place of ``task``'s baseline checkpoint, saying why."""
    return {"format": SKIPPED_BASELINE_FORMAT, "task": task, "reason": reason}


def primary_metric(kind: TaskKind | str) -> tuple[str, bool]:
    """``(metric name, higher_is_better)`` used for Δm for a task of this kind (its
    :class:`mtl.tasks.KindSpec`'s ``delta_metric``)."""
    from mtl.tasks import KINDS  # function level: keeps this module free of torch on import

    return KINDS[TaskKind(kind)].delta_metric


def relative_delta(mtl: float | Sequence[float], stl: float | Sequence[float],
                   higher_is_better: bool | Sequence[bool]) -> float:
    """One task's signed relative difference in percent: ``(−1)^l (mtl − stl) / stl × 100``.

    Positive means the multi-task value is better. Several metrics of one task (sequences of
    equal length) are averaged, as LibMTL's ``count_improvement`` does. ``NaN`` when a
    single-task value is ``0`` or not finite, or a value is missing: the relative difference is
    undefined then, and is never replaced by a made-up number. The formula assumes positive
    metric values (accuracy, F1, MAE are).
    """
    m = np.atleast_1d(np.asarray(mtl, dtype=np.float64))
    s = np.atleast_1d(np.asarray(stl, dtype=np.float64))
    h = np.broadcast_to(np.atleast_1d(np.asarray(higher_is_better, dtype=bool)), s.shape)
    if m.shape != s.shape or m.ndim != 1 or len(m) == 0:
        raise ValueError(f"relative_delta: expected as many multi-task as single-task values, "
                         f"found {m.shape} and {s.shape}")
    if not (np.isfinite(s).all() and np.isfinite(m).all()) or (s == 0).any():
        return math.nan
    sign = np.where(h, 1.0, -1.0)  # (−1)^{l_t}: l_t = 1 (negative) when lower is better
    return float(np.mean(sign * (m - s) / s) * 100.0)


def delta_m(mtl: Mapping[str, float | Sequence[float]], stl: Mapping[str, float | Sequence[float]],
            higher_is_better: Mapping[str, bool | Sequence[bool]]) -> float:
    """Δm in percent over the tasks of ``stl`` (Maninis et al. 2019): positive = MTL better.

    ``mtl`` and ``stl`` map task name to the task's metric value (or several values, averaged
    within the task first). Nash-MTL and FAMO report ``-delta_m`` as a drop. ``NaN`` when any
    task's relative difference is undefined: averaging over the other tasks only would change
    what the number means.
    """
    if not stl:
        raise ValueError("delta_m: expected at least one task with a single-task baseline, "
                         "found none")
    missing = sorted(set(stl) - set(mtl)) + sorted(set(stl) - set(higher_is_better))
    if missing:
        raise ValueError(f"delta_m: expected a multi-task value and a direction for every "
                         f"baseline task, missing for {missing}")
    deltas = [relative_delta(mtl[t], stl[t], higher_is_better[t]) for t in stl]
    return float(np.mean(deltas))


@dataclass(frozen=True)
class Comparison:
    """The multi-task model against its single-task baselines, ready for ``metrics/eval.json``.

    ``per_task[t]`` holds ``stl`` (the baseline's metrics), ``delta_metric`` (the primary metric
    compared), ``higher_is_better`` and ``delta_pct`` (positive = multi-task better); ``delta_m``
    is their mean over ``tasks`` (the tasks that have a baseline).
    """

    per_task: dict[str, dict[str, object]]
    delta_m: float
    tasks: tuple[str, ...]


def compare_to_baselines(kinds: Mapping[str, TaskKind | str],
                         mtl: Mapping[str, Mapping[str, object]],
                         stl: Mapping[str, Mapping[str, object]]) -> Comparison:
    """Per task the relative difference of the primary metric, and Δm over the baseline tasks.

    ``kinds`` maps every task to its kind; ``mtl`` and ``stl`` map task name to that model's
    metrics (as :mod:`mtl.kind_metrics` computes them). A task without a baseline in ``stl`` is
    left out of Δm (``tasks`` says which were compared); a baseline for an unknown task is an
    error.
    """
    unknown = sorted(set(stl) - set(kinds))
    if unknown:
        raise ValueError(f"compare_to_baselines: expected baselines for tasks of the model "
                         f"{sorted(kinds)}, found baselines for unknown tasks {unknown}")
    per_task: dict[str, dict[str, object]] = {}
    mtl_values: dict[str, float] = {}
    stl_values: dict[str, float] = {}
    higher: dict[str, bool] = {}
    for task, kind in kinds.items():
        if task not in stl:
            continue
        metric, hib = primary_metric(kind)
        m, s = mtl[task].get(metric), stl[task].get(metric)
        if not isinstance(m, (int, float)) or not isinstance(s, (int, float)):
            raise ValueError(f"compare_to_baselines: task {task!r} ({TaskKind(kind).value}): "
                             f"expected a number for {metric!r} in both models' metrics, found "
                             f"{m!r} (multi-task) and {s!r} (single-task)")
        mtl_values[task], stl_values[task], higher[task] = float(m), float(s), hib
        per_task[task] = {"stl": dict(stl[task]), "delta_metric": metric,
                          "higher_is_better": hib,
                          "delta_pct": relative_delta(float(m), float(s), hib)}
    dm = delta_m(mtl_values, stl_values, higher) if stl_values else math.nan
    return Comparison(per_task, dm, tuple(per_task))


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (``ddof=1``) of one number over seeds.

    ``std`` is ``NaN`` with a single seed (the spread is unknown, not zero).
    """

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return format_mean_std(self)

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean ± sample std (``ddof=1``) of the finite values; ``NaN`` mean when there is none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return MeanStd(math.nan, math.nan, 0)
    return MeanStd(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def format_mean_std(ms: MeanStd, digits: int = 4) -> str:
    """``"0.9540 ± 0.0030"``; only the mean when the spread is unknown (one seed)."""
    if math.isnan(ms.mean):
        return "n/a"
    if math.isnan(ms.std):
        return f"{ms.mean:.{digits}f}"
    return f"{ms.mean:.{digits}f} ± {ms.std:.{digits}f}"


def _flatten(d: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def aggregate_seeds(runs: Sequence[Mapping[str, object]]) -> dict[str, MeanStd]:
    """Mean ± std over seeds of every number in ``runs`` (one nested dict per seed).

    Nested keys are joined with ``/`` (``{"left": {"accuracy": ..}}`` -> ``"left/accuracy"``);
    a key absent or ``NaN`` in some runs is aggregated over the runs that have it (``n`` says
    how many).
    """
    flat = [_flatten(r) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    return {k: mean_std(f[k] for f in flat if k in f) for k in keys}


class Verdict(str, Enum):
    """How a difference compares with the seed spread."""

    BETTER = "better"
    WORSE = "worse"
    NOISE = "within seed noise"
    UNKNOWN = "single seed: spread unknown"


def verdict(difference: float, spread: float) -> Verdict:
    """``BETTER``/``WORSE`` only when ``|difference|`` exceeds the seed ``spread``.

    ``difference`` is signed so that positive is better (a Δm, or a metric difference already
    multiplied by −1 for lower-is-better metrics); ``spread`` is a seed standard deviation. A
    difference not larger than the spread is ``NOISE``, not a win; a ``NaN`` spread (one seed)
    gives ``UNKNOWN``.
    """
    if math.isnan(difference):
        return Verdict.UNKNOWN
    if math.isnan(spread):
        return Verdict.UNKNOWN
    if abs(difference) <= spread:
        return Verdict.NOISE
    return Verdict.BETTER if difference > 0 else Verdict.WORSE


def compare(a: MeanStd, b: MeanStd, higher_is_better: bool = True) -> Verdict:
    """Is ``a`` better than ``b`` beyond the seed noise of both?

    The spread is the larger of the two seed standard deviations: a difference of means inside
    the noise of either run is not a win.
    """
    diff = (a.mean - b.mean) * (1.0 if higher_is_better else -1.0)
    spreads = [s for s in (a.std, b.std) if not math.isnan(s)]
    return verdict(diff, max(spreads) if spreads else math.nan)
