"""clean stage: validate the labels table and every image; lose nothing.

Every raw row ends up exactly once either in the manifest (usable) or in the rejects table with a
reason and a detail a user can act on. Raw files are only read, never written.

Before any row is looked at, the labels table is validated as a whole (``validate_schema``):
missing columns, task columns whose values mostly do not parse (a wrong type, usually a wrong
column), and declared feature columns of the wrong type are all reported in one ``DataError``.

Reject reasons (first one that applies wins, in this order; an id belongs to the first row with
that id that ends in the manifest, so a rejected row never claims its id and a ``duplicate_id``
always names a manifest row; see ``_settle_ids``):

``missing_id``, ``duplicate_id``, ``missing_path``, ``invalid_path``, ``path_outside_dataset``,
``bad_split``, ``no_labels``, ``missing_file``, ``unreadable_file``, ``not_a_file``,
``empty_file``, ``not_an_image``, ``truncated_image``, ``unreadable_image``, ``too_many_pixels``,
``too_small``, ``unsupported_mode``, ``duplicate_image``, ``conflicting_duplicate``,
``hierarchy_violation``.

A label that cannot be used for one task (see ``mtl.data.labels``) becomes missing for that task
only and is recorded in ``label_issues``; the row stays if another task still has a label.
Label-issue reasons: ``not_a_number``, ``not_finite``, ``not_binary``, ``undeclared_class``,
``conflicting_duplicate``, ``hierarchy_violation`` (parent set missing), ``hierarchy_relabelled``
(parent replaced by the child's majority parent; a tie has no majority and is only reported).

Dropped exact duplicates hand the labels the kept copy lacks to it. Feature cells that are empty
or one of ``dataset.missing_values`` are missing (``None``) in the manifest.

Near duplicates (pHash Hamming distance <= ``clean.near_duplicate_distance``) are kept but
grouped: the manifest's ``group`` column (smallest ``row`` of the group) lets the select stage
keep each group inside one split; ``near_duplicates`` lists every group of two or more.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mtl.config import CleanConfig, DatasetConfig
from mtl.data.dedup import hamming, near_duplicate_groups, parse_hashes
from mtl.data.features import FEATURE_PREFIX
from mtl.data.images import ImageCheck, inspect_image
from mtl.data.io import DataError, read_labels_table
from mtl.data.labels import LabelNormaliser
from mtl.data.paths import resolve_image_path
from mtl.schema import TaskKind

__all__ = [
    "LABEL_ISSUE_REASONS", "REJECT_REASONS", "CleanResult", "clean", "feature_sources",
    "normalise_split", "validate_schema",
]

REJECT_REASONS = (
    "missing_id", "duplicate_id", "missing_path", "invalid_path", "path_outside_dataset",
    "bad_split", "no_labels", "missing_file", "unreadable_file", "not_a_file", "empty_file",
    "not_an_image", "truncated_image", "unreadable_image", "too_many_pixels", "too_small",
    "unsupported_mode", "duplicate_image", "conflicting_duplicate", "hierarchy_violation",
)
LABEL_ISSUE_REASONS = (
    "not_a_number", "not_finite", "not_binary", "undeclared_class", "conflicting_duplicate",
    "hierarchy_violation", "hierarchy_relabelled",
)

_SPLIT_SYNONYMS = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}


@dataclass(frozen=True)
class CleanResult:
    """Output of the clean stage.

    ``manifest``: one row per usable image: ``row`` (position in the labels table, 0 = first
    data row), ``id``, ``image`` (path relative to ``dataset.dir``), ``split`` (when the data
    has one), one column per task (string label, float for regression, ``None`` when missing),
    ``width``, ``height``, ``source_mode``, ``content_hash``, ``phash``, ``group`` (near-duplicate
    group: smallest ``row`` of the group), ``user_group`` (when ``dataset.group_column`` is set)
    and ``src__<column>`` (raw cell of each feature column offered to the select stage).
    ``rejects``: ``row``, ``id``, ``reason``, ``detail``.
    ``label_issues``: ``row``, ``id``, ``task``, ``value``, ``reason``, ``detail``.
    ``near_duplicates``: ``group``, ``row``, ``id``, ``image``, ``distance`` (to the group's
    first image), for every group of two or more images.
    """

    manifest: pd.DataFrame
    rejects: pd.DataFrame
    label_issues: pd.DataFrame
    report: dict[str, Any]
    near_duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["group", "row", "id", "image", "distance"]))


def normalise_split(value: str | None) -> str | None:
    """Map a split spelling (``Train``, ``validation``, ``dev`` …) to train/val/test, else None."""
    if value is None:
        return None
    return _SPLIT_SYNONYMS.get(value.strip().lower())


def feature_sources(table_columns: list[str], dataset: DatasetConfig) -> dict[str, str]:
    """Feature columns offered to the select stage: column -> declared kind (or ``auto``)."""
    out = dict(dataset.feature_columns)
    if dataset.detect_features:
        reserved = {dataset.id_column, dataset.image_column, dataset.split_column,
                    dataset.group_column} | {t.column for t in dataset.tasks}
        for col in table_columns:
            if col not in reserved and col not in out:
                out[col] = "auto"
    return out


def _rows_text(rows: list[int], values: list[Any], limit: int = 5) -> str:
    shown = ", ".join(f"{r} ({v!r})" for r, v in zip(rows[:limit], values[:limit], strict=False))
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"rows {shown}{more}"


def validate_schema(table: pd.DataFrame, dataset: DatasetConfig, cfg: CleanConfig,
                    source: Path,
                    raw_cells: Mapping[str, list[str | None]] | None = None) -> None:
    """Check the labels table against the dataset contract; one ``DataError`` lists every problem.

    Problems: missing columns; a regression/binary task column or a declared numeric feature
    column where more than ``clean.max_bad_label_fraction`` of the non-empty values (and at
    least 2) do not parse, which means a wrong type or a wrong column; a classification task
    with declared classes where that many values are undeclared; an empty table.
    ``raw_cells`` (from ``read_labels_table``) gives the cells as written of the columns the
    whole-number rule rewrote: the message quotes those.
    """
    problems: list[str] = []
    wanted = {"dataset.id_column": dataset.id_column}
    if dataset.image_column is not None:
        wanted["dataset.image_column"] = dataset.image_column
    if dataset.split_column is not None:
        wanted["dataset.split_column"] = dataset.split_column
    if dataset.group_column is not None:
        wanted["dataset.group_column"] = dataset.group_column
    for t in dataset.tasks:
        wanted[f"task {t.name!r}"] = t.column
    for col in dataset.feature_columns:
        wanted["dataset.feature_columns"] = col
        if col not in table.columns:
            problems.append(f"missing column {col!r} (dataset.feature_columns)")
    missing = [f"{col!r} ({role})" for role, col in wanted.items()
               if col not in table.columns and role != "dataset.feature_columns"]
    if missing:
        problems.insert(0, f"missing column(s) {', '.join(missing)}")
    if problems:
        problems.append(f"the table has columns {list(table.columns)}")
    if len(table) == 0:
        problems.append("the table has a header but no data rows")
    missing_tokens = {m.strip().casefold() for m in dataset.missing_values}
    written = raw_cells or {}
    for t in dataset.tasks:
        if t.column not in table.columns or (
                TaskKind(t.kind) is TaskKind.MULTICLASS and t.classes is None):
            continue
        norm = LabelNormaliser.fit(t, table[t.column], missing_tokens)
        bad_rows: list[int] = []
        bad_values: list[Any] = []
        n_present = 0
        for row, raw in enumerate(table[t.column]):
            value, issue = norm(raw)
            n_present += value is not None or issue is not None
            if issue is not None:
                bad_rows.append(row)
                # Quote the cell as written, before the reader's whole-number rule.
                bad_values.append(written[t.column][row] if t.column in written else raw)
        if len(bad_rows) >= 2 and len(bad_rows) > cfg.max_bad_label_fraction * n_present:
            what = {TaskKind.REGRESSION: "numbers", TaskKind.BINARY: "binary values"}.get(
                TaskKind(t.kind), f"declared classes {list(t.classes or ())}")
            problems.append(
                f"column {t.column!r} (task {t.name!r}, {t.kind}): {len(bad_rows)} of "
                f"{n_present} non-empty values are not {what} "
                f"(clean.max_bad_label_fraction={cfg.max_bad_label_fraction}): "
                f"{_rows_text(bad_rows, bad_values)}")
    for col, kind in dataset.feature_columns.items():
        if kind != "numeric" or col not in table.columns:
            continue
        bad_rows, bad_values, n_present = [], [], 0
        for row, raw in enumerate(table[col]):
            if _feature_cell(raw, missing_tokens) is None:
                continue
            n_present += 1
            try:
                float(raw)
            except ValueError:
                bad_rows.append(row)
                bad_values.append(raw)
        if len(bad_rows) >= 2 and len(bad_rows) > cfg.max_bad_label_fraction * n_present:
            problems.append(f"column {col!r} (dataset.feature_columns: numeric): "
                            f"{len(bad_rows)} of {n_present} non-empty values are not numbers: "
                            f"{_rows_text(bad_rows, bad_values)}")
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{source}: {len(problems)} problem(s) in the labels table:\n{body}")


def _decode_all(paths: list[Path], cfg: CleanConfig) -> Iterator[ImageCheck]:
    """Decode images in worker processes, streaming results in input order.

    ``imap`` hands back results as they complete (in order), so only a bounded window of
    ``ImageCheck`` records (no pixels) is ever in memory, whatever the dataset size.
    """
    fn = partial(inspect_image, mode=cfg.mode, min_size=cfg.min_size,
                 max_pixels=cfg.max_pixels, reject_modes=tuple(cfg.reject_modes))
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < 256:
        yield from map(fn, paths)
        return
    # forkserver: workers start from a small server process, not from this one, so they do
    # not inherit (and, through reference counting, copy) the table and the growing manifest.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(fn, paths, chunksize=64)


class _Collector:
    """Rejects and label issues as the stage finds them (each row rejected at most once)."""

    def __init__(self) -> None:
        self.rejects: dict[int, tuple[str, str]] = {}
        self.issues: list[dict[str, Any]] = []

    def reject(self, row: int, reason: str, detail: str) -> None:
        assert row not in self.rejects, f"row {row} rejected twice"
        self.rejects[row] = (reason, detail)

    def issue(self, out: dict[str, Any], task: str, value: Any, reason: str,
              detail: str = "") -> None:
        self.issues.append({"row": out["row"], "id": out["id"], "task": task, "value": value,
                            "reason": reason, "detail": detail})


def clean(dataset: DatasetConfig, cfg: CleanConfig) -> CleanResult:
    """Validate ``dataset`` (labels table and images) and split its rows into manifest/rejects."""
    root = Path(dataset.dir)
    if not root.is_dir():
        raise DataError(f"dataset.dir: expected a folder, found nothing at {root}")
    source = root / dataset.labels
    # Cells as written of the columns the whole-number rule rewrote: quoted in messages,
    # issues and rejects, so a user finds them in the table.
    raw_cells: dict[str, list[str | None]] = {}
    table = read_labels_table(source, {t.column: t.separator for t in dataset.tasks
                                       if TaskKind(t.kind) is TaskKind.MULTILABEL},
                              dataset.missing_values, raw_cells)
    validate_schema(table, dataset, cfg, source, raw_cells)

    def written(column: str, row: int, cell: Any) -> Any:
        """``cell`` (row ``row`` of ``column``) as the table holds it."""
        return raw_cells[column][row] if column in raw_cells else cell

    features = feature_sources(list(table.columns), dataset)
    normalisers = {t.name: LabelNormaliser.fit(t, table[t.column], dataset.missing_values)
                   for t in dataset.tasks}

    missing_tokens = {m.strip().casefold() for m in dataset.missing_values}
    col = _Collector()
    # Row checks that fail are held back (``pending``) until the ids are settled: a row that
    # is rejected does not claim its id, so a later valid row with the same id is kept.
    pending: dict[int, tuple[str, str]] = {}
    row_ids: dict[int, str] = {}
    to_decode: list[tuple[dict[str, Any], Path]] = []
    labelled: list[tuple[dict[str, Any], list[tuple[str, Any, str]]]] = []

    for row, rec in enumerate(table.to_dict("records")):
        raw_id = rec.get(dataset.id_column)
        sample_id = raw_id.strip() if isinstance(raw_id, str) else None
        if not sample_id:
            col.reject(row, "missing_id", f"column {dataset.id_column!r} is empty")
            continue
        row_ids[row] = sample_id
        if dataset.image_template is not None:
            rel: str | None = dataset.image_template.format(id=sample_id)
        else:
            cell = rec.get(dataset.image_column or "")
            rel = cell.strip() if isinstance(cell, str) and cell.strip() else None
        if rel is None:
            pending[row] = ("missing_path", f"column {dataset.image_column!r} is empty")
            continue
        try:
            path = resolve_image_path(root, rel)
        except (OSError, RuntimeError, ValueError) as exc:
            pending[row] = ("invalid_path", f"{rel!r} cannot be resolved: {exc}")
            continue
        if path is None:
            pending[row] = ("path_outside_dataset",
                            f"{rel!r} resolves outside dataset.dir {str(root)!r}")
            continue
        out: dict[str, Any] = {"row": row, "id": sample_id, "image": rel}
        if dataset.split_column is not None:
            split = normalise_split(rec.get(dataset.split_column))
            if split is None:
                pending[row] = ("bad_split", f"column {dataset.split_column!r} has "
                                             f"{rec.get(dataset.split_column)!r}; expected "
                                             "train, val or test")
                continue
            out["split"] = split
        n_labels = 0
        row_issues: list[tuple[str, Any, str]] = []
        for t in dataset.tasks:
            value, issue = normalisers[t.name](rec.get(t.column))
            if issue is not None:
                row_issues.append((t.name, written(t.column, row, rec.get(t.column)), issue))
            out[t.name] = value
            n_labels += value is not None
        labelled.append((out, row_issues))
        if n_labels == 0:
            pending[row] = ("no_labels", "no task has a usable label: " + ", ".join(
                f"{t.column}={written(t.column, row, rec.get(t.column))!r}"
                for t in dataset.tasks))
            continue
        if dataset.group_column is not None:
            g = rec.get(dataset.group_column)
            out["user_group"] = g.strip() if isinstance(g, str) and g.strip() else None
        for c in features:
            out[FEATURE_PREFIX + c] = _feature_cell(rec.get(c), missing_tokens)
        to_decode.append((out, path))

    passed: list[dict[str, Any]] = []
    checks = _decode_all([p for _, p in to_decode], cfg)
    for (out, _), check in tqdm(zip(to_decode, checks, strict=True), total=len(to_decode),
                                desc="clean: decoding images", unit="img", mininterval=1.0):
        if check.reason is not None:
            pending[out["row"]] = (check.reason, check.detail)
            continue
        out.update(width=check.width, height=check.height, source_mode=check.source_mode,
                   content_hash=check.content_hash, phash=check.phash)
        passed.append(out)
    del to_decode

    kept, dup_report, hier_report, dataset_issues = _settle_ids(passed, pending, row_ids,
                                                                 dataset, cfg, col)
    for out, issues in labelled:  # label issues of every row read, except duplicate ids
        if col.rejects.get(out["row"], ("",))[0] != "duplicate_id":
            for task, value, issue in issues:
                col.issue(out, task, value, issue, f"column {_task_column(dataset, task)!r}")
    col.issues += dataset_issues
    manifest = _manifest_frame(kept, dataset, features)
    near, near_report = _near_duplicates(manifest, cfg)
    manifest["group"] = near
    near_df = _near_duplicate_table(manifest, cfg)

    rejects_df = pd.DataFrame(
        [{"row": r, "id": written(dataset.id_column, r, table.iloc[r][dataset.id_column]),
          "reason": reason, "detail": detail}
         for r, (reason, detail) in sorted(col.rejects.items())],
        columns=["row", "id", "reason", "detail"],
    )
    issues_df = pd.DataFrame(col.issues,
                             columns=["row", "id", "task", "value", "reason", "detail"])
    accounted = sorted(list(manifest["row"]) + list(rejects_df["row"]))
    if accounted != list(range(len(table))):  # the invariant the whole stage exists for
        raise AssertionError("clean: manifest + rejects do not account for every raw row")
    report = _report(table, manifest, rejects_df, issues_df, dataset, source)
    report["label_normalisation"] = {
        name: dict(n.changes) for name, n in normalisers.items() if n.changes}
    report["duplicates"] = {**dup_report, **near_report}
    report["hierarchy"] = hier_report
    report["feature_columns"] = features
    return CleanResult(manifest, rejects_df, issues_df, report, near_df)


def _settle_ids(passed: list[dict[str, Any]], pending: dict[int, tuple[str, str]],
                row_ids: dict[int, str], dataset: DatasetConfig, cfg: CleanConfig,
                col: _Collector) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any],
                                          list[dict[str, Any]]]:
    """Give each id to the first of its rows that ends in the manifest; run the whole-dataset
    checks (exact duplicates, hierarchy) on the id owners; record every reject in ``col``.

    ``passed``: rows that passed every row and file check (in table order); ``pending``: row ->
    (reason, detail) of those that failed one. Returns the manifest rows, the duplicate and
    hierarchy reports and the label issues of the whole-dataset checks.

    The owner of an id is its first passed row; when a whole-dataset check rejects an owner
    and the id has another passed row, that owner is settled as rejected and the checks run
    again with the next row as owner (each round settles at least one row for good, so this
    ends). A settled row still takes part in the exact-duplicate check as a copy of its image
    (never the kept one), so its labels still count: identical images with conflicting labels
    stay a conflict. Its reason is the one of the last round that rejected it.

    A row with an id that a manifest row owns is a ``duplicate_id`` naming that row (the first
    reason in the documented order; its own reason, if any, follows in the detail); a row
    whose id no manifest row owns keeps its own reason, so a ``duplicate_id`` never points at
    a rejected row.
    """
    settled: dict[int, tuple[str, str]] = {}  # owners rejected by a whole-dataset check
    settled_issues: list[dict[str, Any]] = []
    while True:
        owner: dict[str, int] = {}
        for out in passed:
            if out["row"] not in settled:
                owner.setdefault(out["id"], out["row"])
        # Fresh copies: the checks write into the rows (donated labels, relabelled parents).
        # Settled rows stay in the exact-duplicate check as evidence: their labels still say
        # what their image shows (a conflict does not vanish because one copy lost its id).
        decoded = [dict(out) for out in passed
                   if out["row"] in settled or owner.get(out["id"]) == out["row"]]
        trial = _Collector()
        kept, dup_report = _exact_duplicates(decoded, dataset, cfg, trial, frozenset(settled))
        kept, hier_report = _hierarchy(kept, dataset, cfg, trial)
        waiting = Counter(out["id"] for out in passed
                          if out["row"] not in settled and owner[out["id"]] != out["row"])
        # Owners that lost their place while a later row with their id is still untried.
        lost = {row: why for row, why in trial.rejects.items()
                if row not in settled and waiting[row_ids[row]]}
        if not lost:
            break
        settled.update(lost)
        settled_issues += [i for i in trial.issues if i["row"] in lost]
    in_manifest = {out["id"]: out["row"] for out in kept}
    rejects = {**pending, **settled, **trial.rejects}
    rejects.update({out["row"]: ("duplicate_id", "") for out in passed
                    if out["row"] not in settled and owner[out["id"]] != out["row"]})
    for row, (reason, detail) in sorted(rejects.items()):
        first = in_manifest.get(row_ids[row])
        if first is not None and first != row:
            own = f"; this row itself: {reason} ({detail})" if reason != "duplicate_id" else ""
            reason, detail = "duplicate_id", (
                f"id {row_ids[row]!r} belongs to row {first} (the first row with this id that "
                f"ends in the manifest){own}")
        col.reject(row, reason, detail)
    return kept, dup_report, hier_report, settled_issues + trial.issues


def _task_column(dataset: DatasetConfig, task: str) -> str:
    return next(t.column for t in dataset.tasks if t.name == task)


def _feature_cell(raw: str | None, missing_tokens: set[str]) -> str | None:
    """A feature cell as offered to select: empty cells and ``dataset.missing_values`` are
    missing (``None``), anything else stays exactly as written."""
    if raw is None or not raw.strip() or raw.strip().casefold() in missing_tokens:
        return None
    return raw


def _label_conflicts(members: list[dict[str, Any]], dataset: DatasetConfig) -> dict[str, list[Any]]:
    """Tasks on which the members carry two or more different (non-missing) labels."""
    out: dict[str, list[Any]] = {}
    for t in dataset.tasks:
        values = sorted({str(m[t.name]) for m in members if m[t.name] is not None})
        if len(values) > 1:
            out[t.name] = values
    return out


def _exact_duplicates(decoded: list[dict[str, Any]], dataset: DatasetConfig, cfg: CleanConfig,
                      col: _Collector, evidence_only: frozenset[int] = frozenset(),
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One image per identical pixel content; conflicts handled per clean.conflicting_duplicates.

    Rows in ``evidence_only`` (already rejected, see ``_settle_ids``) still count as copies of
    their image, with their labels, but are never the kept copy and never in the result.
    """
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for out in decoded:
        by_hash[out["content_hash"]].append(out)
    drop: set[int] = set(evidence_only)
    n_groups = n_conflicting = n_merged = 0
    for group in by_hash.values():
        if len(group) < 2:
            continue
        first = next((m for m in group if m["row"] not in evidence_only), None)
        if first is None:
            continue
        n_groups += 1
        members = [first, *(m for m in group if m is not first)]  # the kept copy first
        conflicts = _label_conflicts(members, dataset)
        what = "; ".join(f"{k}: {' vs '.join(map(repr, v))}" for k, v in conflicts.items())
        if conflicts:
            n_conflicting += 1
        if conflicts and cfg.conflicting_duplicates == "reject":
            for m in members:
                others = [f"{o['id']!r} (row {o['row']})" for o in members if o is not m]
                col.reject(m["row"], "conflicting_duplicate",
                           f"same pixels as {', '.join(others)} but labels differ ({what})")
                drop.add(m["row"])
            continue
        if conflicts and cfg.conflicting_duplicates == "missing":
            for task in conflicts:
                col.issue(first, task, first[task], "conflicting_duplicate",
                          f"identical images disagree ({what})")
                first[task] = None
        # Labels the kept copy lacks are taken from the dropped copies (tasks without a
        # conflict only), so dropping an identical image never loses a label.
        donated: dict[int, list[str]] = defaultdict(list)
        for t in dataset.tasks:
            if first[t.name] is not None or t.name in conflicts:
                continue
            donor = next((m for m in members[1:] if m[t.name] is not None), None)
            if donor is not None:
                first[t.name] = donor[t.name]
                donated[donor["row"]].append(f"{t.name}={donor[t.name]!r}")
                n_merged += 1
        for m in members[1:]:
            moved = (f"; its label(s) {', '.join(donated[m['row']])} moved to the kept copy"
                     if m["row"] in donated else "")
            col.reject(m["row"], "duplicate_image",
                       f"same pixels as id {first['id']!r} (row {first['row']}); labels "
                       + (f"conflict ({what})" if conflicts else "agree") + moved)
            drop.add(m["row"])
        if all(first[t.name] is None for t in dataset.tasks):
            col.reject(first["row"], "conflicting_duplicate",
                       f"every label conflicts with an identical image ({what})")
            drop.add(first["row"])
    kept = [o for o in decoded if o["row"] not in drop]
    return kept, {"exact_duplicate_groups": n_groups,
                  "exact_duplicate_groups_with_conflicting_labels": n_conflicting,
                  "conflicting_duplicates_action": cfg.conflicting_duplicates,
                  "labels_merged_from_dropped_duplicates": n_merged}


def _hierarchy(kept: list[dict[str, Any]], dataset: DatasetConfig, cfg: CleanConfig,
               col: _Collector) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Check that each declared parent level is a function of its child level."""
    report: dict[str, Any] = {}
    drop: set[int] = set()
    for chain in dataset.hierarchy:
        for child, parent in itertools.pairwise(chain):
            parents: dict[Any, Counter[Any]] = defaultdict(Counter)
            for o in kept:
                if o["row"] not in drop and o[child] is not None and o[parent] is not None:
                    parents[o[child]][o[parent]] += 1
            # Majority parent per child value. A tie has no majority: nothing says which parent
            # is right, so the rows are reported (``tied``) and left as they are.
            major: dict[Any, Any] = {}
            tied: dict[Any, dict[Any, int]] = {}
            for c, cnt in parents.items():
                top = cnt.most_common()
                if len(top) > 1 and top[0][1] == top[1][1]:
                    tied[c] = dict(cnt)
                else:
                    major[c] = top[0][0]
            bad = {c: dict(cnt) for c, cnt in parents.items() if len(cnt) > 1}
            n_rows = n_tied = 0
            for o in kept:
                c, p = o[child], o[parent]
                if o["row"] in drop or c is None or p is None or c not in bad:
                    continue
                if c in tied:
                    n_tied += 1
                    continue
                if p == major[c]:
                    continue
                n_rows += 1
                detail = (f"{child}={c!r} belongs to {parent}={major[c]!r} in "
                          f"{parents[c][major[c]]} rows, here {parent}={p!r}")
                if cfg.hierarchy_action == "reject":
                    col.reject(o["row"], "hierarchy_violation", detail)
                    drop.add(o["row"])
                elif cfg.hierarchy_action == "missing":
                    col.issue(o, parent, p, "hierarchy_violation", detail)
                    o[parent] = None
                elif cfg.hierarchy_action == "majority":
                    col.issue(o, parent, p, "hierarchy_relabelled", detail)
                    o[parent] = major[c]
            report[f"{child} -> {parent}"] = {
                "child_values": len(parents),
                "violating_child_values": len(bad),
                "violating_rows": n_rows,
                "tied_child_values": len(tied),
                "rows_with_tied_child_values": n_tied,
                "action": cfg.hierarchy_action,
                "violations": {str(c): {str(k): v for k, v in cnt.items()}
                               for c, cnt in sorted(bad.items(), key=lambda kv: str(kv[0]))},
                "ties": sorted(str(c) for c in tied),
            }
    return [o for o in kept if o["row"] not in drop], report


def _near_duplicates(manifest: pd.DataFrame, cfg: CleanConfig,
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    if manifest.empty:
        return np.zeros(0, dtype=np.int64), {"near_duplicate_distance":
                                             cfg.near_duplicate_distance}
    idx_group = near_duplicate_groups(parse_hashes(list(manifest["phash"])),
                                      cfg.near_duplicate_distance)
    rows = manifest["row"].to_numpy()
    group = rows[idx_group]  # group id = the row of its first member (stable across runs)
    sizes = pd.Series(group).value_counts()
    multi = sizes[sizes > 1]
    return group.astype(np.int64), {
        "near_duplicate_distance": cfg.near_duplicate_distance,
        "near_duplicate_groups": len(multi),
        "rows_in_near_duplicate_groups": int(multi.sum()),
        "largest_near_duplicate_group": int(multi.max()) if len(multi) else 1,
    }


def _near_duplicate_table(manifest: pd.DataFrame, cfg: CleanConfig) -> pd.DataFrame:
    cols = ["group", "row", "id", "image", "distance"]
    if manifest.empty:
        return pd.DataFrame(columns=cols)
    sizes = manifest["group"].map(manifest["group"].value_counts())
    sub = manifest.loc[sizes > 1, ["group", "row", "id", "image", "phash"]]
    if sub.empty:
        return pd.DataFrame(columns=cols)
    first = sub.groupby("group")["phash"].transform("first")
    dist = hamming(parse_hashes(list(sub["phash"])), parse_hashes(list(first)))
    out = sub.drop(columns="phash").assign(distance=dist)
    return out.sort_values(["group", "row"]).reset_index(drop=True)[cols]


def _manifest_frame(kept: list[dict[str, Any]], dataset: DatasetConfig,
                    features: dict[str, str]) -> pd.DataFrame:
    cols = ["row", "id", "image"] + (["split"] if dataset.split_column else [])
    cols += [t.name for t in dataset.tasks]
    cols += ["width", "height", "source_mode", "content_hash", "phash"]
    cols += ["user_group"] if dataset.group_column else []
    cols += [FEATURE_PREFIX + c for c in features]
    # Label and feature columns are built as object columns of str/None directly: letting
    # pandas infer them (pandas 3: a string dtype) would turn a missing cell into NaN.
    as_text = {t.name for t in dataset.tasks if TaskKind(t.kind) is not TaskKind.REGRESSION}
    as_text |= {FEATURE_PREFIX + c for c in features}
    data: dict[str, Any] = {}
    for c in cols:
        values = [o.get(c) for o in kept]
        data[c] = pd.Series(values, dtype=object) if c in as_text else pd.Series(values)
    frame = pd.DataFrame(data, columns=cols, index=pd.RangeIndex(len(kept)))
    for t in dataset.tasks:
        if TaskKind(t.kind) is TaskKind.REGRESSION:
            frame[t.name] = pd.to_numeric(frame[t.name], errors="coerce").astype("float64")
    return frame


def _report(table: pd.DataFrame, manifest: pd.DataFrame, rejects: pd.DataFrame,
            issues: pd.DataFrame, dataset: DatasetConfig, source: Path) -> dict[str, Any]:
    n = len(table)
    coverage = {t.name: float(manifest[t.name].notna().mean()) if len(manifest) else 0.0
                for t in dataset.tasks}
    return {
        "source": str(source),
        "raw_rows": n,
        "clean_rows": len(manifest),
        "rejected_rows": len(rejects),
        "rejects_by_reason": dict(Counter(rejects["reason"]).most_common()),
        "label_issues_by_task": {
            task: dict(Counter(g["reason"])) for task, g in issues.groupby("task")
        } if len(issues) else {},
        "label_coverage": coverage,
        "source_modes": dict(Counter(manifest["source_mode"])) if len(manifest) else {},
    }
