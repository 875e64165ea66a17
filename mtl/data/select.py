"""select stage: decide what can be learned, build label vocabularies, split, select features.

* Rare classes (fewer than ``select.min_class_count`` rows) are merged into
  ``select.other_label`` or set missing (``select.rare_classes``).
* A task that cannot be learned (label coverage under ``select.min_coverage``, fewer than
  ``select.min_classes`` classes, a binary task without exactly two values, a constant
  regression target) is dropped, with the reason in the report.
* Each kept task gets a vocabulary (``schema.json``): the only mapping between label strings and
  class indices that training, evaluation and prediction use.
* Split: the data's own ``split`` column when present, else seeded, stratified (on one task or
  on all classification tasks jointly) and group-aware: a near-duplicate group (clean stage) or
  a ``dataset.group_column`` group never spans two splits.
* Tabular metadata features are selected on the train split (``mtl.data.features``) and written
  as ``f__<feature>`` float32 columns; their encoders go into ``schema.json["features"]``.

Targets are written as one float32 column per task: class index, 0/1, or the standardised value
(statistics from the train split only), ``NaN`` when missing.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtl.config import DatasetConfig, SelectConfig
from mtl.data.dedup import join_groups
from mtl.data.features import (
    FEATURE_PREFIX,
    TaskTarget,
    apply_feature_encoders,
    select_features,
)
from mtl.data.io import DataError
from mtl.schema import SPLITS, TaskKind, TaskSchema

__all__ = ["SPLITS", "SelectResult", "assign_splits", "build_vocabulary", "select"]



@dataclass(frozen=True)
class SelectResult:
    """``splits``: id, image, row, one target column per kept task and ``f__*`` features.

    ``schema``: ``tasks`` and ``features`` (encoders for ``apply_feature_encoders``).
    """

    splits: dict[str, pd.DataFrame]
    tasks: tuple[TaskSchema, ...]
    report: dict[str, Any]
    features: tuple[dict[str, Any], ...] = field(default=())

    @property
    def schema(self) -> dict[str, Any]:
        return {"tasks": [t.to_dict() for t in self.tasks], "features": list(self.features)}


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def build_vocabulary(values: pd.Series) -> tuple[str, ...]:
    """Sorted distinct labels (numerically when they are numbers, so '10' follows '9')."""
    return tuple(sorted({str(v) for v in values.dropna()}, key=_sort_key))


def assign_splits(frame: pd.DataFrame, cfg: SelectConfig,
                  stratify: pd.Series | pd.DataFrame | None,
                  groups: pd.Series | np.ndarray | None = None) -> pd.Series:
    """Seeded, group-aware, stratified split into train/val/test (fractions of ``cfg``).

    ``stratify``: one or several label columns (missing labels are ignored); ``groups``: a group
    key per row (rows sharing a key always land in the same split). Groups are placed greedily,
    largest (then rarest-labelled) first, each into the split that most needs its labels
    (desired minus current count of each of its labels, relative to the label's total) plus,
    with a small weight, its rows (desired minus current split size, relative to the data
    size) — iterative stratification over groups.
    """
    n = len(frame)
    fractions = np.array([1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction,
                          cfg.test_fraction])
    gid = (pd.factorize(pd.Series(np.asarray(groups)))[0] if groups is not None
           else np.arange(n))
    if stratify is None:
        strat = pd.DataFrame(index=range(n))
    elif isinstance(stratify, pd.Series):
        strat = stratify.reset_index(drop=True).to_frame()
    else:
        strat = stratify.reset_index(drop=True)
    key_ids: list[np.ndarray] = []
    n_keys = 0
    for j, c in enumerate(strat.columns):
        col = strat[c]
        codes, uniq = pd.factorize(col.astype(object).where(col.notna(), None))
        key_ids.append(np.where(codes >= 0, codes + n_keys, -1))
        n_keys += len(uniq)
        del j
    keys = np.stack(key_ids, axis=1) if key_ids else np.full((n, 0), -1)
    total = np.bincount(keys[keys >= 0], minlength=n_keys).astype(np.float64)
    desired = fractions[:, None] * total[None, :]
    have = np.zeros((3, n_keys))
    size_desired = fractions * n
    size_have = np.zeros(3)

    rng = np.random.default_rng(cfg.seed)
    order = np.argsort(gid, kind="stable")
    bounds = np.flatnonzero(np.r_[True, gid[order][1:] != gid[order][:-1], True])
    members = [order[a:b] for a, b in itertools.pairwise(bounds)]
    shuffled = rng.permutation(len(members))
    rarity = [min((total[k] for k in keys[m].ravel() if k >= 0), default=np.inf)
              for m in members]
    sequence = sorted(shuffled.tolist(), key=lambda g: (-len(members[g]), rarity[g]))
    out = np.empty(n, dtype=object)
    names = np.array(SPLITS, dtype=object)
    placed: dict[int, int] = {}  # group -> split index
    for g in sequence:
        rows = members[g]
        k = keys[rows].ravel()
        k = k[k >= 0]
        if len(k):
            need = (desired[:, k] - have[:, k]) / total[k]  # [split, key]
            rare = int(np.argmin(total[k]))
            # The group's rarest label decides (as in iterative stratification); the others
            # only tip the balance between near-equal choices.
            label_need = need[:, rare] + 0.1 * need.sum(axis=1)
        else:
            label_need = np.zeros(3)
        # The size term mostly breaks ties (and places rows without stratification labels);
        # weighted like the labels it would pull whole classes into the largest split.
        size_need = 0.1 * (size_desired - size_have) / max(n, 1) * len(rows)
        score = label_need + size_need
        s = int(np.argmax(score + 1e-9 * fractions))  # ties: the larger split
        out[rows] = names[s]
        placed[g] = s
        np.add.at(have[s], k, 1)
        size_have[s] += len(rows)
    # Stratification puts a group that holds all of a class into the split that needs the
    # class most (train), so a few such groups can leave test (or train) empty although there
    # are enough groups: then the smallest group of the split with the most rows (and at
    # least two groups) moves there.
    for target in (2, 0):
        if any(s == target for s in placed.values()):
            continue
        donors = [d for d in range(3) if sum(s == d for s in placed.values()) >= 2]
        if not donors:
            continue
        donor = max(donors, key=lambda d: (size_have[d], -d))
        g = min((g for g, s in placed.items() if s == donor),
                key=lambda g: (len(members[g]), g))
        out[members[g]] = names[target]
        placed[g] = target
        size_have[donor] -= len(members[g])
        size_have[target] += len(members[g])
    return pd.Series(out, index=frame.index, dtype=object)


def _merge_rare(col: pd.Series, cfg: SelectConfig) -> tuple[pd.Series, dict[str, int]]:
    """Merge (or blank) classes with fewer than ``select.min_class_count`` rows."""
    counts = col.dropna().map(str).value_counts()
    rare = {str(c): int(n) for c, n in counts.items() if n < cfg.min_class_count}
    if not rare:
        return col, {}
    replacement = _free_label(cfg.other_label, set(counts.index)) \
        if cfg.rare_classes == "other" else None
    mapped = [replacement if not pd.isna(v) and str(v) in rare else v for v in col]
    return pd.Series(mapped, index=col.index, dtype=object), rare


def _free_label(wanted: str, classes: set[str]) -> str:
    """``wanted``, or when a genuine class already has that name, the first of ``wanted_rare``,
    ``wanted_rare2``, … that is free: rare classes never fold into a real class."""
    if wanted not in classes:
        return wanted
    name, k = f"{wanted}_rare", 2
    while name in classes:
        name, k = f"{wanted}_rare{k}", k + 1
    return name


def _groups(frame: pd.DataFrame, cfg: SelectConfig) -> tuple[np.ndarray | None, str]:
    if not cfg.respect_groups:
        return None, "none"
    labelings: list[list[object]] = []
    used = []
    if "group" in frame.columns:
        labelings.append(list(frame["group"]))
        used.append("near-duplicate groups")
    if "user_group" in frame.columns:
        labelings.append([None if v is None or v != v else v for v in frame["user_group"]])
        used.append("dataset.group_column")
    if not labelings:
        return None, "none"
    return join_groups(*labelings), " + ".join(used)


def select(manifest: pd.DataFrame, dataset: DatasetConfig, cfg: SelectConfig) -> SelectResult:
    """Choose learnable tasks, encode targets, split the clean manifest and select features."""
    if manifest.empty:
        raise DataError("select: the clean manifest is empty; see data/clean/rejects.csv for why "
                        "every row was rejected")
    task_names = [t.name for t in dataset.tasks]
    if cfg.stratify is not None and cfg.stratify not in [*task_names, "all"]:
        raise DataError(f"select.stratify: expected one of the tasks {task_names} or 'all', "
                        f"found {cfg.stratify!r}")
    strat_kind = next((TaskKind(t.kind) for t in dataset.tasks if t.name == cfg.stratify), None)
    if strat_kind is TaskKind.REGRESSION:
        classif = [t.name for t in dataset.tasks if TaskKind(t.kind) is not TaskKind.REGRESSION]
        raise DataError(f"select.stratify: {cfg.stratify!r} is a regression task, and a "
                        "split can only be stratified on class labels; expected a "
                        f"classification task {classif}, 'all' or null")
    missing_cols = [t for t in task_names if t not in manifest.columns]
    if missing_cols:
        raise DataError(f"select: the manifest has no column for task(s) {missing_cols}; rerun "
                        "`mtl clean` after changing dataset.tasks")

    frame = manifest.reset_index(drop=True)
    decisions: dict[str, dict[str, Any]] = {}
    labels: dict[str, pd.Series] = {}
    vocabs: dict[str, tuple[str, ...]] = {}
    for t in dataset.tasks:
        kind = TaskKind(t.kind)
        col = frame[t.name]
        coverage = float(col.notna().mean())
        info: dict[str, Any] = {"coverage": coverage}
        if coverage < cfg.min_coverage:
            decisions[t.name] = {"kept": False, **info,
                                 "reason": f"label coverage {coverage:.1%} < "
                                           f"select.min_coverage={cfg.min_coverage}"}
            continue
        if kind is TaskKind.REGRESSION:
            labels[t.name] = col
            decisions[t.name] = {"kept": True, **info}
            continue
        col = col.astype(object).where(col.notna(), None)
        if kind is TaskKind.MULTICLASS and cfg.min_class_count > 0:
            before = set(col.dropna().map(str))
            col, rare = _merge_rare(col, cfg)
            if rare:
                info["rare_classes"] = {"action": cfg.rare_classes, "min_class_count":
                                        cfg.min_class_count, "classes": rare}
                if cfg.rare_classes == "other":
                    into = _free_label(cfg.other_label, before)
                    info["rare_classes"]["merged_into"] = into
                    if into != cfg.other_label:
                        info["rare_classes"]["detail"] = (
                            f"{cfg.other_label!r} is a real class of this task, so the rare "
                            f"classes are merged into {into!r} instead")
        vocab = (build_vocabulary(_split_tags(col, t.separator))
                 if kind is TaskKind.MULTILABEL else build_vocabulary(col))
        need = 2 if kind is TaskKind.BINARY else cfg.min_classes
        if len(vocab) < need or (kind is TaskKind.BINARY and len(vocab) != 2):
            wanted = "exactly 2" if kind is TaskKind.BINARY else f"at least {need}"
            decisions[t.name] = {"kept": False, **info, "classes": list(vocab),
                                 "reason": f"{len(vocab)} class(es) found, {wanted} needed"}
            continue
        labels[t.name] = col
        vocabs[t.name] = vocab
        decisions[t.name] = {"kept": True, **info, "num_classes": len(vocab)}

    groups, group_source = _groups(frame, cfg)
    if "split" in frame.columns and frame["split"].notna().all():
        split = frame["split"].astype(str)
        split_source = "data"
    else:
        classif = [t.name for t in dataset.tasks
                   if TaskKind(t.kind) is not TaskKind.REGRESSION and t.name in vocabs]
        if cfg.stratify == "all":
            strat_tasks = classif
        elif cfg.stratify is not None:
            strat_tasks = [cfg.stratify] if cfg.stratify in labels else []
        else:
            strat_tasks = classif[:1]
        strat = pd.DataFrame({k: labels[k] for k in strat_tasks}) if strat_tasks else None
        split = assign_splits(frame, cfg, strat, groups)
        split_source = (f"stratified on {', '.join(strat_tasks)}" if strat_tasks
                        else "random") + f", grouped by {group_source}"
    is_train = (split == "train").to_numpy()

    kept: list[TaskSchema] = []
    targets: dict[str, np.ndarray] = {}
    for tc in dataset.tasks:
        if tc.name not in labels:
            continue
        kind = TaskKind(tc.kind)
        col = labels[tc.name]
        if kind is TaskKind.REGRESSION:
            values = col.astype("float64").to_numpy()
            train_vals = values[is_train & ~np.isnan(values)]
            std = float(train_vals.std()) if len(train_vals) > 1 else 0.0
            if std == 0.0:
                decisions[tc.name] = {**decisions[tc.name], "kept": False,
                                     "reason": "regression target is constant (or has fewer "
                                               "than 2 labelled training samples)"}
                continue
            mean = float(train_vals.mean())
            targets[tc.name] = ((values - mean) / std).astype(np.float32)
            kept.append(TaskSchema(tc.name, kind, tc.column, mean=mean, std=std))
            decisions[tc.name].update(mean=mean, std=std)
            continue
        vocab = vocabs[tc.name]
        index = {c: i for i, c in enumerate(vocab)}
        if kind is TaskKind.MULTILABEL:
            enc = _multi_hot(col, index, tc.separator)  # [N, K], NaN rows = missing
            targets[tc.name] = enc
            train_rows = enc[is_train]
            train_rows = train_rows[~np.isnan(train_rows[:, 0])]
            counts = Counter({i: int(c) for i, c in enumerate(train_rows.sum(0))})
            kept.append(TaskSchema(tc.name, kind, tc.column, classes=vocab,
                                   class_counts=tuple(counts.get(i, 0) for i in range(len(vocab)))))
            continue
        enc = np.array([np.nan if pd.isna(v) else index[str(v)] for v in col],
                       dtype=np.float32)
        targets[tc.name] = enc
        counts = Counter(int(v) for v in enc[is_train] if not np.isnan(v))
        # A binary label is "0"/"1" in the manifest: with two declared classes, "0" is the
        # first declared class (labels.py). schema.json names the classes as the user declared
        # them, in that order, so reports and predictions say "yes"/"no", never a reversed "0".
        names = (tuple(tc.classes) if kind is TaskKind.BINARY and tc.classes is not None
                 and len(tc.classes) == 2 else vocab)
        kept.append(TaskSchema(tc.name, kind, tc.column, classes=names,
                               class_counts=tuple(counts.get(i, 0) for i in range(len(vocab)))))
    if not kept:
        raise DataError("select: no task can be learned: "
                        + "; ".join(f"{k}: {v['reason']}" for k, v in decisions.items()))

    sources = {c[len(FEATURE_PREFIX):]: "auto" for c in frame.columns
               if c.startswith(FEATURE_PREFIX)}
    sources.update({c: k for c, k in dataset.feature_columns.items() if c in sources})
    # Every kept task takes part in feature scoring; a multilabel target is its [N, K]
    # multi-hot matrix (TaskTarget.parts scores its label sets and each label).
    train_targets = [TaskTarget(t.name, t.kind, targets[t.name][is_train]) for t in kept]
    selection = select_features(frame[is_train], sources, train_targets, cfg, seed=cfg.seed,
                                prefix=FEATURE_PREFIX)
    feature_matrix = apply_feature_encoders(frame, selection.features, prefix=FEATURE_PREFIX)

    base = frame[["id", "image", "row"]].copy()
    for ts in kept:
        t_enc = targets[ts.name]
        # A multilabel target is stored as a list column (None when missing).
        base[ts.name] = (t_enc if t_enc.ndim == 1 else
                         [None if np.isnan(r[0]) else r.tolist() for r in t_enc])
    for j, feat in enumerate(selection.features):
        base[feat["column"]] = feature_matrix[:, j]
    splits = {s: base[(split == s).to_numpy()].reset_index(drop=True) for s in SPLITS}
    empty = [s for s in ("train", "test") if splits[s].empty]
    if empty:
        raise DataError(f"select: split(s) {empty} are empty ({split_source}): "
                        + _empty_split_cause(split_source, groups, len(frame)))
    report = {
        "split_source": split_source,
        "split_sizes": {s: len(f) for s, f in splits.items()},
        "groups": _group_report(split, groups),
        "tasks": decisions,
        "class_counts": {
            t.name: {s: _class_counts(splits[s][t.name], t) for s in SPLITS}
            for t in kept if t.kind is not TaskKind.REGRESSION
        },
        "features": {
            "sources": sources,
            "kept": [f["name"] for f in selection.features],
            "dropped_by_reason": dict(Counter(d["reason"] for d in selection.decisions
                                              if not d["kept"])),
            "decisions": selection.decisions,
        },
    }
    return SelectResult(splits, tuple(kept), report, tuple(selection.features))


def _empty_split_cause(split_source: str, groups: np.ndarray | None, n: int) -> str:
    """Why a split is empty, in terms a user can act on."""
    if split_source == "data":
        return ("the data's split column assigns no rows to them; add rows for them or drop "
                "dataset.split_column to have select generate the split")
    n_groups = len(np.unique(groups)) if groups is not None else n
    if n_groups < 2:
        return (f"the {n} clean rows form {n_groups} group(s) that must stay in one split "
                "(near-duplicate images or dataset.group_column); add data from other groups "
                "or set select.respect_groups: false")
    return (f"{n} clean rows in {n_groups} group(s) are too few for select.val_fraction/"
            "test_fraction")


def _group_report(split: pd.Series, groups: np.ndarray | None) -> dict[str, Any]:
    if groups is None:
        return {"respected": False}
    g = pd.Series(groups)
    sizes = g.value_counts()
    per_group = pd.DataFrame({"g": groups, "s": split.to_numpy()}).groupby("g")["s"].nunique()
    return {
        "respected": True,
        "multi_row_groups": int((sizes > 1).sum()),
        "rows_in_multi_row_groups": int(sizes[sizes > 1].sum()),
        "groups_across_splits": int((per_group > 1).sum()),
    }


def _split_tags(col: pd.Series, separator: str) -> pd.Series:
    """A multilabel column's individual labels, one per entry."""
    return pd.Series([tag for v in col.dropna() for tag in str(v).split(separator)])


def _multi_hot(col: pd.Series, index: dict[str, int], separator: str) -> np.ndarray:
    """``"a|c"`` -> ``[1, 0, 1]``; a missing cell -> a row of NaN. ``[N, K]`` float32."""
    out = np.zeros((len(col), len(index)), dtype=np.float32)
    for i, v in enumerate(col):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out[i] = np.nan
        else:
            for tag in str(v).split(separator):
                out[i, index[tag]] = 1.0
    return out


def _class_counts(col: pd.Series, task: TaskSchema) -> dict[str, int]:
    if task.kind is TaskKind.MULTILABEL:
        rows = [r for r in col if r is not None]
        sums = np.sum(rows, axis=0) if rows else np.zeros(len(task.classes))
        return {c: int(sums[i]) for i, c in enumerate(task.classes)}
    c = Counter(int(v) for v in col.dropna())
    return {task.classes[i]: c.get(i, 0) for i in range(len(task.classes))}
