"""PNG figures for ``reports/report.md``: training curves, task weights, gradient cosine,
confusion heatmaps and the Δm bar against the single-task baselines.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
state), so they render headless and from several threads (Prefect tasks) at once. Every function
writes one PNG and returns its path; bad input raises ``ValueError`` (or ``FileNotFoundError``)
saying what was expected and what was found.

The per-epoch series come from the dvclive step files the train stage writes under
``<live>/plots/metrics/``: one TSV per metric key with the columns ``step`` and the key's last
component, e.g. ``train/loss/<task>.tsv``, ``train/weight/<task>.tsv``,
``conflict/cosine/<a>~<b>.tsv`` and ``val/<metric>/<task>.tsv``.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "MAX_CONFUSION_CLASSES",
    "inline_images",
    "plot_confusion",
    "plot_delta",
    "plot_gradient_cosine",
    "plot_task_weights",
    "plot_training_curves",
    "read_live_metrics",
]

#: Confusion heatmaps are drawn for classification tasks with at most this many classes.
MAX_CONFUSION_CLASSES = 30

_DPI = 100
# Validation metrics drawn next to the training loss, in order of preference.
_VAL_METRICS = ("accuracy", "micro_f1", "macro_f1", "r2", "mae", "rmse")


def read_live_metrics(live_dir: str | Path) -> pd.DataFrame:
    """Every per-epoch series dvclive wrote under ``<live_dir>/plots/metrics``.

    Returns a frame indexed by ``step`` (the epoch index) with one column per metric key
    (``"train/loss/left"``, ``"conflict/cosine/left~right"``, ...).
    """
    root = Path(live_dir) / "plots" / "metrics"
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"expected dvclive step files (*.tsv) under {root} (written by "
                                f"`mtl train --live {live_dir}`), found none")
    columns: dict[str, pd.Series] = {}
    for f in files:
        key = f.relative_to(root).with_suffix("").as_posix()
        table = pd.read_csv(f, sep="\t")
        if "step" not in table.columns or len(table.columns) < 2:
            raise ValueError(f"{f}: expected a dvclive step file with a 'step' column and a "
                             f"value column, found columns {list(table.columns)}")
        columns[key] = table.set_index("step")[table.columns[-1]].astype(np.float64)
    return pd.DataFrame(columns).sort_index()


def _live_frame(live: str | Path | pd.DataFrame) -> pd.DataFrame:
    return live if isinstance(live, pd.DataFrame) else read_live_metrics(live)


def _group(frame: pd.DataFrame, prefix: str) -> dict[str, pd.Series]:
    """Columns ``<prefix>/<name>`` as ``{name: series}`` without NaN steps."""
    p = prefix.rstrip("/") + "/"
    return {c[len(p):]: frame[c].dropna() for c in frame.columns
            if c.startswith(p) and "/" not in c[len(p):]}


def _save(fig: Figure, out: str | Path) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ValueError(f"expected an output path ending in .png, found {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot / global backend involved
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def _epochs(series: pd.Series) -> np.ndarray:
    """dvclive steps are 0-based epoch indices; axes show epochs from 1."""
    return series.index.to_numpy(dtype=np.float64) + 1


def plot_training_curves(live: str | Path | pd.DataFrame, out: str | Path) -> Path:
    """Per task: training loss (left axis) and its validation metrics (right axis) per epoch.

    ``live`` is the dvclive folder (or the frame :func:`read_live_metrics` returns).
    """
    frame = _live_frame(live)
    losses = _group(frame, "train/loss")
    if not losses:
        raise ValueError(f"expected train/loss/<task> series in the dvclive metrics, found "
                         f"{sorted(frame.columns)}")
    tasks = sorted(losses)
    cols = min(2, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(5.5 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        loss = losses[task]
        ax.plot(_epochs(loss), loss.to_numpy(), color="tab:blue", marker="o", label="train loss")
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("train loss", color="tab:blue")
        val = {m: frame[f"val/{m}/{task}"].dropna() for m in _VAL_METRICS
               if f"val/{m}/{task}" in frame.columns}
        if val:
            right = ax.twinx()
            for i, (metric, s) in enumerate(val.items()):
                right.plot(_epochs(s), s.to_numpy(), color=f"C{i + 1}", marker=".",
                           linestyle="--", label=f"val {metric}")
            right.set_ylabel("validation")
            right.legend(loc="center right", fontsize="small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("Training loss and validation metrics per task")
    return _save(fig, out)


def plot_task_weights(live: str | Path | pd.DataFrame, out: str | Path) -> Path:
    """The weighting method's task weights per epoch, one line per task."""
    frame = _live_frame(live)
    weights = _group(frame, "train/weight")
    if not weights:
        raise ValueError(f"expected train/weight/<task> series in the dvclive metrics, found "
                         f"{sorted(frame.columns)}")
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    for task in sorted(weights):
        s = weights[task]
        ax.plot(_epochs(s), s.to_numpy(), marker="o", label=task)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("task weight (epoch mean)")
    ax.set_title("Task weights per epoch")
    ax.legend(fontsize="small")
    return _save(fig, out)


def plot_gradient_cosine(live: str | Path | pd.DataFrame, out: str | Path) -> Path:
    """Cosine similarity between task gradients per epoch, one line per task pair.

    Below 0 the tasks pull the shared parameters in conflicting directions.
    """
    frame = _live_frame(live)
    pairs = _group(frame, "conflict/cosine")
    if not pairs:
        raise ValueError("expected conflict/cosine/<a>~<b> series in the dvclive metrics "
                         "(train.log_conflict_every > 0 and at least two tasks), found "
                         f"{sorted(frame.columns)}")
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    for pair in sorted(pairs):
        s = pairs[pair]
        ax.plot(_epochs(s), s.to_numpy(), marker="o", label=pair.replace("~", " / "))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cosine(task gradients)")
    ax.set_title("Task-gradient cosine on the shared parameters")
    ax.legend(fontsize="small")
    return _save(fig, out)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], out: str | Path,
                   title: str = "") -> Path:
    """Heatmap of a confusion matrix ``[K, K]`` (rows: actual, columns: predicted).

    Cells are coloured by the share of the actual class (row-normalised, so rare classes stay
    visible) and annotated with counts when ``K <= 15``. Refuses more than
    :data:`MAX_CONFUSION_CLASSES` classes (unreadable).
    """
    cm = np.asarray(matrix)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix [K, K], found shape {cm.shape}")
    k = cm.shape[0]
    if len(classes) != k:
        raise ValueError(f"expected {k} class names for a {k}×{k} confusion matrix, found "
                         f"{len(classes)}")
    if k > MAX_CONFUSION_CLASSES:
        raise ValueError(f"expected at most {MAX_CONFUSION_CLASSES} classes for a confusion "
                         f"heatmap, found {k}")
    if k == 0 or (cm < 0).any():
        raise ValueError(f"expected non-negative counts for at least one class, found {cm!r}")
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)  # [K, K] row shares
    side = min(12.0, 2.5 + 0.35 * k)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of actual class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if k > 6 else 0,
                  fontsize="small")
    ax.set_yticks(ticks, [str(c) for c in classes], fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize="x-small",
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title or "Confusion matrix")
    return _save(fig, out)


def plot_delta(deltas: Mapping[str, float], delta_m: float, out: str | Path,
               errors: Mapping[str, float] | None = None,
               delta_m_error: float | None = None,
               metrics: Mapping[str, str] | None = None) -> Path:
    """Horizontal bars: each task's relative difference to its single-task baseline and Δm (%).

    Positive (green) means the multi-task model is better. ``errors`` / ``delta_m_error`` add
    seed standard deviations as error bars; ``metrics`` names the metric of each task in its
    label. A ``NaN`` value is drawn as an empty bar labelled "n/a".
    """
    if not deltas:
        raise ValueError("expected at least one task's delta against its baseline, found none")
    names = list(deltas)
    labels = [f"{t} ({metrics[t]})" if metrics and t in metrics else t for t in names]
    values = [float(deltas[t]) for t in names] + [float(delta_m)]
    labels.append("Δm")
    errs = [float((errors or {}).get(t, math.nan)) for t in names]
    errs.append(math.nan if delta_m_error is None else float(delta_m_error))
    y = np.arange(len(values))[::-1]  # first task on top, Δm at the bottom
    shown = np.nan_to_num(np.asarray(values), nan=0.0)
    colours = ["tab:green" if v > 0 else "tab:red" for v in shown]
    fig = Figure(figsize=(6.4, 1.2 + 0.5 * len(values)), layout="constrained")
    ax = fig.subplots()
    err = np.asarray(errs)
    ax.barh(y, shown, color=colours)
    has_err = ~np.isnan(err)
    if has_err.any():  # seed standard deviations, only where several seeds exist
        ax.errorbar(shown[has_err], y[has_err], xerr=err[has_err], fmt="none", ecolor="black",
                    capsize=3)
    reach = np.abs(shown) + np.nan_to_num(err, nan=0.0)  # bar end plus its error bar
    ax.axvline(0.0, color="black", linewidth=0.8)
    for yi, v, r in zip(y, values, reach, strict=True):
        right = math.isnan(v) or v >= 0
        ax.annotate("n/a" if math.isnan(v) else f"{v:+.2f}%", (r if right else -r, yi),
                    xytext=(4 if right else -4, 0), textcoords="offset points", va="center",
                    ha="left" if right else "right", fontsize="small")
    ax.set_yticks(y, labels)
    ax.set_xlabel("relative difference to single-task (%), positive = multi-task better")
    ax.set_title("Multi-task vs single-task baselines")
    lim = max(1.0, float(reach.max()) * 1.5)
    ax.set_xlim(-lim, lim)
    return _save(fig, out)


_IMAGE_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+\.png)\)")


def inline_images(markdown: str, base_dir: str | Path) -> str:
    """The markdown with every relative ``![alt](path.png)`` link replaced by a data URI.

    For places that cannot follow links to files next to the report (a Prefect markdown
    artifact): the same text and pictures as ``reports/report.md``. Links that are absolute,
    remote or point at a missing file are left as they are.
    """
    base = Path(base_dir)

    def embed(match: re.Match[str]) -> str:
        src = match.group("src")
        if "://" in src or src.startswith(("/", "data:")):
            return match.group(0)
        path = base / src
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group('alt')}](data:image/png;base64,{data})"

    return _IMAGE_LINK.sub(embed, markdown)
