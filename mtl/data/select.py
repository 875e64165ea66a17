"""select stage: decide what can be learned, build label vocabularies and split the data.

* A task that cannot be learned (fewer than ``select.min_classes`` classes, a binary task without
  exactly two values, a constant regression target) is dropped, with the reason in the report.
* Each kept task gets a vocabulary (``schema.json``): the only mapping between label strings and
  class indices that training, evaluation and prediction use.
* Split: the data's own ``split`` column when present, else stratified and seeded.

Targets are written as one float32 column per task: class index, 0/1, or the standardised value
(statistics from the train split only), ``NaN`` when missing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mtl.config import DatasetConfig, SelectConfig
from mtl.data.io import DataError
from mtl.schema import TaskKind, TaskSchema

__all__ = ["SPLITS", "SelectResult", "assign_splits", "build_vocabulary", "select"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SelectResult:
    """``splits``: id, image, row and one target column per kept task; ``schema``: tasks."""

    splits: dict[str, pd.DataFrame]
    tasks: tuple[TaskSchema, ...]
    report: dict[str, Any]

    @property
    def schema(self) -> dict[str, Any]:
        return {"tasks": [t.to_dict() for t in self.tasks]}


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def build_vocabulary(values: pd.Series) -> tuple[str, ...]:
    """Sorted distinct labels (numerically when they are numbers, so '10' follows '9')."""
    return tuple(sorted({str(v) for v in values.dropna()}, key=_sort_key))


def assign_splits(frame: pd.DataFrame, cfg: SelectConfig, stratify: pd.Series | None) -> pd.Series:
    """Seeded split; within each stratum the fractions of ``cfg`` are honoured (rounded)."""
    rng = np.random.default_rng(cfg.seed)
    out = pd.Series("train", index=frame.index, dtype=object)
    strata = (stratify.fillna("\0missing") if stratify is not None
              else pd.Series("all", index=frame.index))
    for _, idx in sorted(strata.groupby(strata).groups.items(), key=lambda kv: str(kv[0])):
        idx = rng.permutation(np.asarray(idx))
        n_test = int(round(len(idx) * cfg.test_fraction))
        n_val = int(round(len(idx) * cfg.val_fraction))
        out.loc[idx[:n_test]] = "test"
        out.loc[idx[n_test:n_test + n_val]] = "val"
    return out


def select(manifest: pd.DataFrame, dataset: DatasetConfig, cfg: SelectConfig) -> SelectResult:
    """Choose learnable tasks, encode targets and split the clean manifest."""
    if manifest.empty:
        raise DataError("select: the clean manifest is empty; see data/clean/rejects.csv for why "
                        "every row was rejected")
    task_names = [t.name for t in dataset.tasks]
    if cfg.stratify is not None and cfg.stratify not in task_names:
        raise DataError(f"select.stratify: expected one of the tasks {task_names}, "
                        f"found {cfg.stratify!r}")

    frame = manifest.reset_index(drop=True)
    if "split" in frame.columns and frame["split"].notna().all():
        split = frame["split"].astype(str)
        split_source = "data"
    else:
        strat_task = cfg.stratify or next(
            (t.name for t in dataset.tasks if t.kind != "regression"), None)
        split = assign_splits(frame, cfg, frame[strat_task] if strat_task else None)
        split_source = f"stratified on {strat_task}" if strat_task else "random"
    is_train = (split == "train").to_numpy()

    kept: list[TaskSchema] = []
    decisions: dict[str, dict[str, Any]] = {}
    targets: dict[str, np.ndarray] = {}
    for t in dataset.tasks:
        kind = TaskKind(t.kind)
        col = frame[t.name]
        coverage = float(col.notna().mean())
        if kind is TaskKind.REGRESSION:
            values = col.astype("float64").to_numpy()
            train_vals = values[is_train & ~np.isnan(values)]
            std = float(train_vals.std()) if len(train_vals) > 1 else 0.0
            if std == 0.0:
                decisions[t.name] = {"kept": False, "coverage": coverage,
                                     "reason": "regression target is constant (or has fewer "
                                               "than 2 labelled training samples)"}
                continue
            mean = float(train_vals.mean())
            targets[t.name] = ((values - mean) / std).astype(np.float32)
            kept.append(TaskSchema(t.name, kind, t.column, mean=mean, std=std))
            decisions[t.name] = {"kept": True, "coverage": coverage, "mean": mean, "std": std}
            continue
        vocab = build_vocabulary(col)
        need = 2 if kind is TaskKind.BINARY else cfg.min_classes
        if len(vocab) < need or (kind is TaskKind.BINARY and len(vocab) != 2):
            decisions[t.name] = {
                "kept": False, "coverage": coverage, "classes": list(vocab),
                "reason": f"{len(vocab)} class(es) found, {'exactly 2' if kind is TaskKind.BINARY else f'at least {need}'} needed",
            }
            continue
        index = {c: i for i, c in enumerate(vocab)}
        enc = np.array([index[str(v)] if v is not None and v == v else np.nan for v in col],
                       dtype=np.float32)
        targets[t.name] = enc
        counts = Counter(int(v) for v in enc[is_train] if not np.isnan(v))
        kept.append(TaskSchema(t.name, kind, t.column, classes=vocab,
                               class_counts=tuple(counts.get(i, 0) for i in range(len(vocab)))))
        decisions[t.name] = {"kept": True, "coverage": coverage, "num_classes": len(vocab)}
    if not kept:
        raise DataError("select: no task can be learned: "
                        + "; ".join(f"{k}: {v['reason']}" for k, v in decisions.items()))

    base = frame[["id", "image", "row"]].copy()
    for t in kept:
        base[t.name] = targets[t.name]
    splits = {s: base[(split == s).to_numpy()].reset_index(drop=True) for s in SPLITS}
    empty = [s for s in ("train", "test") if splits[s].empty]
    if empty:
        raise DataError(f"select: split(s) {empty} are empty (split source: {split_source}); "
                        "check the split column or select.val_fraction/test_fraction")
    report = {
        "split_source": split_source,
        "split_sizes": {s: len(f) for s, f in splits.items()},
        "tasks": decisions,
        "class_counts": {
            t.name: {s: _class_counts(splits[s][t.name], t) for s in SPLITS}
            for t in kept if t.kind is not TaskKind.REGRESSION
        },
    }
    return SelectResult(splits, tuple(kept), report)


def _class_counts(col: pd.Series, task: TaskSchema) -> dict[str, int]:
    c = Counter(int(v) for v in col.dropna())
    return {task.classes[i]: c.get(i, 0) for i in range(len(task.classes))}
