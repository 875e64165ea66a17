"""Pure functions behind ``python -m flows.sweep``: the ``-S key=v1,v2`` grid, one record per run
read from ``dvc exp show --json``, the per-method summary over seeds, the promotion decision, and
the markdown table and picture of ``reports/sweep.md``.

Nothing here runs DVC or Prefect; ``flows/sweep.py`` does, and hands the parsed results to these
functions, so every decision of the report is unit-tested on plain dictionaries.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import rankdata

__all__ = [
    "LOWER_IS_BETTER",
    "SEED_KEYS",
    "GridError",
    "MethodSummary",
    "Promotion",
    "RunRecord",
    "compare_groups",
    "dataset_dir_problems",
    "expand_grid",
    "group_keys",
    "headline",
    "parse_grid",
    "plot_sweep",
    "promotion_decision",
    "record_from_exp",
    "render_markdown",
    "run_names",
    "set_param_args",
    "split_values",
    "summarize",
]

#: Metrics where a smaller value is better (everything else: larger is better).
LOWER_IS_BETTER = frozenset({"mae", "rmse", "ece", "loss", "mse"})
#: Swept keys that are repetitions of one method, not a different method: runs that differ only
#: in these are grouped together and give the seed spread.
SEED_KEYS = frozenset({"train.seed"})
#: Headline metric per task when ``metrics/eval.json`` does not name one (``delta_metric``).
_HEADLINE_ORDER = ("accuracy", "micro_f1", "mae", "macro_f1", "rmse", "r2")


class GridError(ValueError):
    """A ``-S key=v1,v2`` specification that cannot be expanded into a grid."""


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,[a,b]`` on the commas outside brackets and quotes (YAML lists stay whole)."""
    parts: list[str] = []
    depth, quote = 0, ""
    current: list[str] = []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


PARAMS_FILE = "params.yaml"
_FUNCTION = re.compile(r"^\s*(range|choice|interval)\s*\((.*)\)\s*$", re.DOTALL)


def _number(text: str, spec: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise GridError(f"-S {spec!r}: expected numbers in range(start, stop[, step]), "
                        f"found {text.strip()!r}") from exc
    if not value.is_finite():
        raise GridError(f"-S {spec!r}: expected finite numbers in range(), found {text!r}")
    return value


def _range_values(args: str, spec: str) -> list[str]:
    """Hydra's / DVC's ``range(start, stop[, step])``: like Python's, ``stop`` excluded, floats
    allowed; decimal arithmetic, so ``range(0.1, 0.4, 0.1)`` gives ``0.1, 0.2, 0.3`` exactly."""
    parts = args.split(",")
    if not 2 <= len(parts) <= 3:
        raise GridError(f"-S {spec!r}: expected range(start, stop[, step]), found "
                        f"{len(parts)} argument(s)")
    start, stop = _number(parts[0], spec), _number(parts[1], spec)
    step = _number(parts[2], spec) if len(parts) == 3 else Decimal(1)
    if step == 0:
        raise GridError(f"-S {spec!r}: expected a non-zero range() step, found 0")
    count = max(0, math.ceil((stop - start) / step))
    if count == 0:
        raise GridError(f"-S {spec!r}: range() gives no values (start {start}, stop {stop}, "
                        f"step {step})")
    if count > 10_000:
        raise GridError(f"-S {spec!r}: range() gives {count} values; expected at most 10000")
    return [str(start + i * step) for i in range(count)]


def _axis_values(raw: str, spec: str) -> list[str]:
    """The raw values of one ``-S`` axis: ``v1,v2``, ``choice(v1, v2)`` or ``range(...)``."""
    call = _FUNCTION.match(raw)
    if call is None:
        return split_values(raw)
    function, args = call.groups()
    if function == "interval":
        raise GridError(f"-S {spec!r}: interval() needs a sampler (Hydra's Optuna sweeper); "
                        "a grid takes v1,v2, choice(v1, v2) or range(start, stop[, step])")
    return split_values(args) if function == "choice" else _range_values(args, spec)


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["train.weighting=equal,famo", "train.seed=0,1"]`` → ordered axes ``(key, values)``.

    The syntax is ``dvc exp run``'s ``-S [<file>:]<key>=<values>``, where ``<values>`` is
    ``v1,v2``, ``choice(v1, v2)`` or ``range(start, stop[, step])`` (``stop`` excluded). The
    only parameter file is ``params.yaml``, so a ``params.yaml:`` prefix is accepted and dropped
    and any other file is refused. The values stay the raw strings DVC receives (DVC parses them
    as YAML); :func:`yaml.safe_load` gives the typed value recorded in the report.
    """
    axes: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if ":" in key:
            file, _, key = key.rpartition(":")
            if file.strip() != PARAMS_FILE:
                raise GridError(f"-S {spec!r}: expected a key of {PARAMS_FILE} (mtl reads no "
                                f"other parameter file), found file {file.strip()!r}")
            key = key.strip()
        if not sep or not key:
            raise GridError(f"expected -S key=value[,value...], found {spec!r}")
        values = _axis_values(raw, spec)
        if any(v == "" for v in values):
            raise GridError(f"empty value in -S {spec!r}; expected comma-separated values")
        if key in seen:
            raise GridError(f"-S {key} given twice; put all its values in one -S {key}=v1,v2")
        seen.add(key)
        axes.append((key, values))
    return axes


def dataset_dir_problems(root: Path, params_dir: str,
                         axes: Sequence[tuple[str, Sequence[str]]] = ()) -> list[str]:
    """Why ``dvc exp run --temp`` could not read the dataset: one line per ``dataset.dir`` (the
    one in ``params.yaml`` and any swept value) that is relative and leaves the project.

    Each sweep run reproduces the pipeline in a copy of the project under
    ``.dvc/tmp/exps/standalone/``, where the stages resolve a relative path from the copy:
    ``../shared/data`` then names ``.dvc/tmp/exps/standalone/shared/data`` (DVC reports the
    ``${dataset.dir}`` dependency missing and every run fails). A path inside the project is
    in the copy too, and an absolute path is the same everywhere.
    """
    # -S values are YAML (DVC parses them so): a quoted path is the string inside the quotes
    swept = [str(yaml.safe_load(v)) for k, values in axes if k == "dataset.dir" for v in values]
    problems = []
    base = os.path.normpath(root.absolute())
    for value in [params_dir, *swept]:
        path = Path(value)
        if path.is_absolute():
            continue
        target = os.path.normpath(os.path.join(base, path))  # lexically, as DVC resolves it
        if os.path.commonpath([base, target]) != base:
            problems.append(
                f"dataset.dir {value!r} is relative and outside the project: every sweep "
                "run is a `dvc exp run --temp` in a copy under .dvc/tmp/exps/, where it names "
                f"another folder, so every run would fail; set dataset.dir: {target} (the "
                "absolute path) in params.yaml")
    return problems


_MISSING = object()


def _lookup(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """The entry ``dotted`` (``train.seed``) of nested mappings, or ``default`` when absent."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _has_key(tree: Mapping[str, Any], dotted: str) -> bool:
    """Whether ``dotted`` (``train.seed``) names an entry of ``tree``, even one set to null."""
    return _lookup(tree, dotted, _MISSING) is not _MISSING


def set_param_args(params: Mapping[str, Any], point: Mapping[str, str]) -> list[str]:
    """``dvc exp run``'s ``-S`` arguments for one grid point, given ``params.yaml``'s content.

    DVC applies ``-S`` with Hydra's override grammar: ``key=value`` replaces an entry and fails
    ("Key ... is not in struct") when ``params.yaml`` does not list the key, e.g.
    ``augment.online`` in ``configs/fashion-product.yaml``, which leaves it at its default. Such
    a key gets Hydra's ``+key=value`` (add), which fails on a present key, so the choice is made
    per key. A key that is no parameter at all is then refused by the stages' own validation.
    """
    args: list[str] = []
    for key, value in point.items():
        args += ["-S", f"{'' if _has_key(params, key) else '+'}{key}={value}"]
    return args


def expand_grid(axes: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, str]]:
    """Every combination of the axes' values (the last axis varies fastest), as raw strings."""
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(values for _, values in axes))]


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", value)[:16] or "x"


def run_names(prefix: str, axes: Sequence[tuple[str, Sequence[str]]],
              points: Sequence[Mapping[str, str]]) -> list[str]:
    """One valid, unique DVC experiment name per grid point: ``<prefix>-<index>-<values>``.

    Only the axes with more than one value appear in the name (the rest is the same for all).
    """
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", prefix).strip("-") or "sweep"
    varying = [k for k, values in axes if len(values) > 1]
    return [f"{prefix}-{i:02d}" + "".join(f"-{_slug(p[k])}" for k in varying)
            for i, p in enumerate(points)]


def _typed(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _finite(x: Any) -> float | None:
    """A JSON number that is finite, as float; anything else (None, NaN, text) → None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


@dataclass
class RunRecord:
    """One grid point's outcome: what ``reports/sweep.json`` holds per run.

    ``test`` maps task → numeric test metrics (``metrics/eval.json``); ``stl`` the same for the
    single-task baseline when evaluation wrote one; ``delta_m`` is the top-level Δm in percent
    (positive: better than single-task models; ``None`` when not computed); ``val_score`` the
    best validation score of the trained model (its checkpoint's ``val_score``).
    """

    name: str
    params: dict[str, Any]
    status: str = "success"                     # success | failed
    error: str | None = None
    rev: str | None = None
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    stl: dict[str, dict[str, float]] = field(default_factory=dict)
    delta_metric: dict[str, str] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    delta_m: float | None = None
    val_score: float | None = None
    images_per_second: float | None = None
    step_time_s: float | None = None
    wall_time_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _params_yaml(data: Mapping[str, Any]) -> dict[str, Any]:
    params = data.get("params") or {}
    entry = params.get("params.yaml") or {}
    return dict(entry.get("data") or {})


def _metric_file(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    entry = (data.get("metrics") or {}).get(path) or {}
    return dict(entry.get("data") or {})




def record_from_exp(name: str, point: Mapping[str, str], data: Mapping[str, Any],
                    val_score: float | None = None) -> RunRecord:
    """A successful run's record from its ``dvc exp show --json`` entry (``revs[0]["data"]``).

    ``metrics/eval.json``: per task ``{metric: value, "stl": {...}, "delta_metric": name,
    "higher_is_better": bool}`` and a top-level ``delta_m``; ``dvclive/metrics.json``: the last
    epoch's ``train.images_per_second``.
    """
    evaluation = _metric_file(data, "metrics/eval.json")
    live = _metric_file(data, "dvclive/metrics.json")
    rec = RunRecord(name=name, params={k: _typed(v) for k, v in point.items()},
                    rev=data.get("rev"), val_score=_finite(val_score))
    for task, metrics in evaluation.items():
        if not isinstance(metrics, Mapping):
            continue
        rec.test[task] = {k: float(v) for k, v in metrics.items() if _finite(v) is not None
                          and k not in ("n", "delta_pct")}
        stl = metrics.get("stl")
        if isinstance(stl, Mapping):
            rec.stl[task] = {k: float(v) for k, v in stl.items()
                             if _finite(v) is not None and k != "n"}
        if isinstance(metrics.get("delta_metric"), str):
            rec.delta_metric[task] = metrics["delta_metric"]
        if isinstance(metrics.get("higher_is_better"), bool):
            rec.higher_is_better[task] = metrics["higher_is_better"]
    rec.delta_m = _finite(evaluation.get("delta_m"))
    rec.images_per_second = _finite(_lookup(live, "train.images_per_second"))
    batch = _finite(_lookup(_params_yaml(data), "train.batch_size"))
    if rec.images_per_second and batch:
        # dvclive logs throughput, not step time: one optimiser step sees ``batch_size`` images.
        rec.step_time_s = batch / rec.images_per_second
    if not rec.test:
        rec.status, rec.error = "failed", "the experiment has no metrics/eval.json"
    return rec


def headline(record: RunRecord, task: str) -> tuple[str, bool] | None:
    """The metric a task is compared on and whether higher is better.

    Evaluation's own choice (``delta_metric``) wins; otherwise accuracy, micro-F1, MAE, ...
    """
    metrics = record.test.get(task, {})
    name = record.delta_metric.get(task)
    if name is None or name not in metrics:
        name = next((m for m in _HEADLINE_ORDER if m in metrics), None)
    if name is None:
        return None
    higher = record.higher_is_better.get(task, name not in LOWER_IS_BETTER)
    return name, higher


def group_keys(params: Sequence[str]) -> list[str]:
    """Swept keys that define a method (all but the seed keys)."""
    return [k for k in params if k not in SEED_KEYS]


def _label(values: Mapping[str, Any]) -> str:
    if not values:
        return "all runs"
    if len(values) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``None`` with fewer than two values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


@dataclass
class MethodSummary:
    """Runs that differ only in their seed, summarised: ``(mean, std)`` pairs, std over seeds."""

    label: str
    params: dict[str, Any]
    runs: list[str]
    n_ok: int
    metrics: dict[str, tuple[str, bool, float | None, float | None]]  # task → name, higher, m, s
    delta_m: tuple[float | None, float | None]
    val_score: tuple[float | None, float | None]
    images_per_second: float | None
    mean_rank: float | None = None
    cost_vs_equal: float | None = None


def summarize(records: Sequence[RunRecord], swept: Sequence[str]) -> list[MethodSummary]:
    """Group runs by every swept key except the seed; mean ± std, mean rank and relative cost.

    Mean rank: per task, methods are ranked on the mean headline metric (1 = best, ties share
    the average rank), then the ranks are averaged over tasks. Cost: the time per image relative
    to equal weighting with the same other settings (``images_per_second`` of equal / of the
    method; 2.0 = twice as slow).
    """
    keys = group_keys(swept)
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for rec in records:
        groups.setdefault(tuple(repr(rec.params.get(k)) for k in keys), []).append(rec)
    tasks: list[str] = []
    for rec in records:
        tasks += [t for t in rec.test if t not in tasks]
    out: list[MethodSummary] = []
    for recs in groups.values():
        params = {k: recs[0].params.get(k) for k in keys}
        ok = [r for r in recs if r.ok]
        metrics: dict[str, tuple[str, bool, float | None, float | None]] = {}
        for task in tasks:
            head = next((h for r in ok if (h := headline(r, task)) is not None), None)
            if head is None:
                continue
            vals = [r.test[task][head[0]] for r in ok if head[0] in r.test.get(task, {})]
            metrics[task] = (head[0], head[1], *_mean_std(vals))
        ips = [r.images_per_second for r in ok if r.images_per_second]
        out.append(MethodSummary(
            label=_label(params), params=params, runs=[r.name for r in recs], n_ok=len(ok),
            metrics=metrics,
            delta_m=_mean_std([r.delta_m for r in ok if r.delta_m is not None]),
            val_score=_mean_std([r.val_score for r in ok if r.val_score is not None]),
            images_per_second=float(np.mean(ips)) if ips else None))
    _rank(out, tasks)
    _cost(out)
    return out


def _rank(summaries: Sequence[MethodSummary], tasks: Sequence[str]) -> None:
    per_method: dict[int, list[float]] = {}
    for task in tasks:
        scored = [(i, s.metrics[task]) for i, s in enumerate(summaries)
                  if task in s.metrics and s.metrics[task][2] is not None]
        if not scored:
            continue
        # rankdata ranks ascending: negate "higher is better" metrics so 1 is the best.
        keys = [-m[2] if m[1] else m[2] for _, m in scored]  # type: ignore[operator]
        for (i, _), r in zip(scored, rankdata(keys, method="average"), strict=True):
            per_method.setdefault(i, []).append(float(r))
    for i, ranks in per_method.items():
        summaries[i].mean_rank = float(np.mean(ranks))


def _cost(summaries: Sequence[MethodSummary]) -> None:
    def others(s: MethodSummary) -> dict[str, Any]:
        return {k: v for k, v in s.params.items() if k != "train.weighting"}

    for s in summaries:
        ref = next((e for e in summaries if e.params.get("train.weighting") == "equal"
                    and others(e) == others(s) and e.images_per_second), None)
        if ref is not None and s.images_per_second:
            s.cost_vs_equal = ref.images_per_second / s.images_per_second  # type: ignore[operator]


def compare_groups(summaries: Sequence[MethodSummary], column: str,
                   values: Mapping[str, tuple[float | None, float | None]],
                   higher_is_better: bool = True) -> str:
    """One sentence on which method leads ``column``, honest about the seed spread.

    ``values``: label → (mean, std over seeds). The leader is called best only when its lead
    over the runner-up is larger than the seed spread (the larger of the two stds); with one run
    per method the spread is unknown and no winner is claimed.
    """
    scored = [(label, m, s) for label, (m, s) in values.items() if m is not None]
    if len(scored) < 2:
        return f"{column}: fewer than two methods with a value, nothing to compare."
    scored.sort(key=lambda x: x[1], reverse=higher_is_better)  # type: ignore[arg-type,return-value]
    (best, m1, s1), (second, m2, s2) = scored[0], scored[1]
    diff = abs(m1 - m2)  # type: ignore[operator]
    if s1 is None or s2 is None:
        return (f"{column}: {best} leads {second} by {diff:.4g}, but with one run per method "
                "the seed spread is unknown: no winner claimed.")
    spread = max(s1, s2)
    if diff <= spread:
        return (f"{column}: {best} and {second} differ by {diff:.4g}, within the seed spread "
                f"({spread:.4g}): no winner.")
    return (f"{column}: {best} is best, {diff:.4g} ahead of {second} "
            f"(more than the seed spread {spread:.4g}).")


def _fmt(mean: float | None, std: float | None, digits: int = 4, signed: bool = False) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


@dataclass
class Promotion:
    """What ``--promote`` decided: which run (if any) is applied to the workspace, and why."""

    promote: bool
    run: str | None
    reason: str


def promotion_decision(records: Sequence[RunRecord], current: float | None,
                       margin: float) -> Promotion:
    """Best successful run by validation score, promoted only if ``best - current >= margin``.

    ``current``: the workspace model's validation score (``None``: no trained model there, so
    the best run is promoted). Test metrics play no part: they would leak the test split into
    model selection.
    """
    scored = [r for r in records if r.ok and r.val_score is not None]
    if not scored:
        return Promotion(False, None, "no successful run has a validation score; nothing applied")
    best = max(scored, key=lambda r: r.val_score)  # type: ignore[arg-type,return-value]
    score = best.val_score
    assert score is not None
    if current is None:
        return Promotion(True, best.name, f"{best.name} (val score {score:.4f}) promoted: "
                         "the workspace has no trained model to compare with")
    gain = score - current
    if gain >= margin:
        return Promotion(True, best.name, f"{best.name} promoted: val score {score:.4f} beats "
                         f"the workspace model's {current:.4f} by {gain:+.4f} "
                         f"(sweep.promote_margin {margin:g})")
    return Promotion(False, best.name, f"nothing applied: the best run {best.name} has val score "
                     f"{score:.4f}, {gain:+.4f} over the workspace model's {current:.4f}, less "
                     f"than sweep.promote_margin {margin:g}")


def render_markdown(records: Sequence[RunRecord], summaries: Sequence[MethodSummary],
                    swept: Sequence[str], picture: str | None = None,
                    promotion: Promotion | None = None) -> str:
    """``reports/sweep.md``: per-method table over seeds, verdicts, failures, every run."""
    tasks = [t for s in summaries for t in s.metrics]
    tasks = list(dict.fromkeys(tasks))
    failed = [r for r in records if not r.ok]
    lines = [
        "# mtl sweep",
        "",
        f"{len(records)} run(s) over {', '.join(swept) or 'no key'}: "
        f"{len(records) - len(failed)} succeeded, {len(failed)} failed. "
        "Test metrics are mean ± standard deviation over the runs that differ only in "
        f"{', '.join(sorted(SEED_KEYS))}. Δm (%, positive = better than the single-task models) "
        "is n/a when evaluation did not compute it. Mean rank: 1 = best on every task. "
        "Cost: time per image relative to equal weighting.",
        "",
    ]
    head_cols = []
    for t in tasks:
        name = next((s.metrics[t][0] for s in summaries if t in s.metrics), "")
        arrow = next(("↑" if s.metrics[t][1] else "↓" for s in summaries if t in s.metrics), "")
        head_cols.append(f"{t} {name} {arrow}")
    lines.append("| method | runs ok | " + " | ".join(head_cols)
                 + " | Δm % | val score | mean rank | cost vs equal |")
    lines.append("|" + "---|" * (len(tasks) + 6))
    for s in summaries:
        cells = [_fmt(*s.metrics[t][2:]) if t in s.metrics else "n/a" for t in tasks]
        lines.append(
            f"| {s.label} | {s.n_ok}/{len(s.runs)} | " + " | ".join(cells)
            + f" | {_fmt(*s.delta_m, digits=2, signed=True)} | {_fmt(*s.val_score)}"
            + f" | {'n/a' if s.mean_rank is None else f'{s.mean_rank:.2f}'}"
            + f" | {'n/a' if s.cost_vs_equal is None else f'{s.cost_vs_equal:.2f}×'} |")
    lines += ["", "## Differences against the seed spread", ""]
    for t in tasks:
        higher = next(s.metrics[t][1] for s in summaries if t in s.metrics)
        name = next(s.metrics[t][0] for s in summaries if t in s.metrics)
        values = {s.label: (s.metrics[t][2], s.metrics[t][3])
                  for s in summaries if t in s.metrics}
        lines.append("- " + compare_groups(summaries, f"{t} {name}", values, higher))
    if any(s.delta_m[0] is not None for s in summaries):
        lines.append("- " + compare_groups(summaries, "Δm", {s.label: s.delta_m
                                                           for s in summaries}))
        for s in summaries:
            m, sd = s.delta_m
            if m is not None and sd is not None and abs(m) <= sd:
                lines.append(f"- {s.label}: Δm {m:+.2f} % is within its seed spread ({sd:.2f}) "
                             "of 0: not shown to differ from the single-task models.")
    else:
        lines.append("- Δm: n/a (metrics/eval.json has no delta_m: no single-task baselines).")
    if promotion is not None:
        lines += ["", "## Promotion", "", promotion.reason]
    if picture:
        lines += ["", f"![sweep]({picture})"]
    if failed:
        lines += ["", "## Failed runs", "", "| run | params | error |", "|---|---|---|"]
        for r in failed:
            error = (r.error or "").strip().splitlines()
            last = (error[-1] if error else "").replace("|", "\\|")
            lines.append(f"| {r.name} | {_params_text(r.params)} | {last} |")
    lines += ["", "## Runs", "",
              "| run | params | status | " + " | ".join(tasks)
              + " | Δm % | val score | img/s | step s |",
              "|" + "---|" * (len(tasks) + 7)]
    for r in records:
        cells = []
        for t in tasks:
            head = headline(r, t)
            cells.append(f"{r.test[t][head[0]]:.4f}" if head else "n/a")
        lines.append(
            f"| {r.name} | {_params_text(r.params)} | {r.status} | " + " | ".join(cells)
            + f" | {_fmt(r.delta_m, None, 2, True)} | {_fmt(r.val_score, None)}"
            + f" | {_fmt(r.images_per_second, None, 0)} | {_fmt(r.step_time_s, None, 4)} |")
    return "\n".join(lines) + "\n"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()).replace("|", "\\|")


def plot_sweep(records: Sequence[RunRecord], summaries: Sequence[MethodSummary],
               swept: Sequence[str], path: Path) -> Path | None:
    """The sweep's picture as PNG: the per-task metric plane for two tasks (every run, each
    method's mean ± std, the single-task point when evaluation has one); otherwise Δm per method
    with seed error bars (or, without Δm, each task's headline metric per method).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    tasks = list(dict.fromkeys(t for s in summaries for t in s.metrics))
    if not ok or not tasks:
        return None
    keys = group_keys(swept)
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    colors = plt.get_cmap("tab10")
    if len(tasks) == 2:
        tx, ty = tasks
        for i, s in enumerate(summaries):
            if tx not in s.metrics or ty not in s.metrics:
                continue
            (nx, _, mx, sx), (ny, _, my, sy) = s.metrics[tx], s.metrics[ty]
            if mx is None or my is None:
                continue
            runs = [r for r in ok if r.name in s.runs
                    and nx in r.test.get(tx, {}) and ny in r.test.get(ty, {})]
            # Every run faint, the method's mean ± std over seeds solid.
            ax.scatter([r.test[tx][nx] for r in runs], [r.test[ty][ny] for r in runs],
                       color=colors(i % 10), alpha=0.35, s=18)
            ax.errorbar(mx, my, xerr=sx or 0.0, yerr=sy or 0.0, fmt="o", color=colors(i % 10),
                        capsize=3, label=s.label)
        stl = [(r.stl[tx][nx], r.stl[ty][ny]) for r in ok
               if nx in r.stl.get(tx, {}) and ny in r.stl.get(ty, {})]
        if stl:
            sx_, sy_ = np.mean(np.asarray(stl), axis=0)
            ax.scatter([sx_], [sy_], marker="*", s=200, color="black", label="single-task")
        ax.set_xlabel(f"{tx} {nx}")
        ax.set_ylabel(f"{ty} {ny}")
        ax.set_title("Test metric per task (mean ± std over seeds)")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  markerscale=0.7, scatterpoints=1)
    elif any(s.delta_m[0] is not None for s in summaries):
        shown = [s for s in summaries if s.delta_m[0] is not None]
        ax.bar([s.label for s in shown], [float(s.delta_m[0] or 0.0) for s in shown],
               yerr=[s.delta_m[1] or 0.0 for s in shown], capsize=4,
               color=[colors(i % 10) for i in range(len(shown))])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("Δm (%) vs single-task (positive = better)")
        ax.set_title("Δm per method (error bars: std over seeds)")
        ax.tick_params(axis="x", rotation=30)
    else:
        width = 0.8 / len(tasks)
        x = np.arange(len(summaries))
        for j, t in enumerate(tasks):
            means = [np.nan if t not in s.metrics or s.metrics[t][2] is None
                     else float(s.metrics[t][2] or 0.0) for s in summaries]
            stds = [s.metrics[t][3] or 0.0 if t in s.metrics else 0.0 for s in summaries]
            name = next(s.metrics[t][0] for s in summaries if t in s.metrics)
            ax.bar(x + j * width, means, width, yerr=stds, capsize=3, label=f"{t} {name}")
        ax.set_xticks(x + 0.4 - width / 2, [s.label for s in summaries], rotation=30)
        ax.set_title("Test metric per task and method (error bars: std over seeds)")
        ax.legend(fontsize="small")
    if keys:
        ax.annotate(f"methods: {', '.join(keys)}", (0.01, 0.01), xycoords="figure fraction",
                    fontsize="x-small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
