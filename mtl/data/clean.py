"""clean stage: validate the labels table and every image; lose nothing.

Every raw row ends up exactly once either in the manifest (usable) or in the rejects table with a
reason and a detail a user can act on. Raw files are only read, never written.

Reject reasons (first one that applies wins, in this order):

``missing_id``, ``duplicate_id``, ``missing_path``, ``path_outside_dataset``, ``bad_split``,
``no_labels``, ``missing_file``, ``unreadable_file``, ``empty_file``, ``not_an_image``,
``truncated_image``, ``unreadable_image``, ``too_many_pixels``, ``too_small``,
``duplicate_image``.

A label that cannot be used for one task (a regression value that is not a number, a binary value
that is not one of the accepted spellings) becomes missing for that task only and is recorded in
``label_issues``; the row stays if another task still has a label.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from mtl.config import CleanConfig, DatasetConfig
from mtl.data.images import ImageCheck, inspect_image
from mtl.data.io import DataError, read_labels_table

__all__ = ["REJECT_REASONS", "CleanResult", "clean", "normalise_split", "resolve_image_path"]

REJECT_REASONS = (
    "missing_id", "duplicate_id", "missing_path", "path_outside_dataset", "bad_split",
    "no_labels", "missing_file", "unreadable_file", "empty_file", "not_an_image",
    "truncated_image", "unreadable_image", "too_many_pixels", "too_small", "duplicate_image",
)

_SPLIT_SYNONYMS = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}
_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
_FALSE = {"0", "false", "no", "n", "f", "0.0"}


@dataclass(frozen=True)
class CleanResult:
    """Output of the clean stage.

    ``manifest``: one row per usable image: ``row`` (position in the labels table, 0 = first
    data row), ``id``, ``image`` (path relative to ``dataset.dir``), ``split`` (when the data
    has one), one column per task (string label, float for regression, ``None`` when missing),
    ``width``, ``height``, ``source_mode``, ``content_hash``, ``phash``.
    ``rejects``: ``row``, ``id``, ``reason``, ``detail``.
    ``label_issues``: ``row``, ``id``, ``task``, ``value``, ``reason`` (label set to missing).
    """

    manifest: pd.DataFrame
    rejects: pd.DataFrame
    label_issues: pd.DataFrame
    report: dict[str, Any]


def normalise_split(value: str | None) -> str | None:
    """Map a split spelling (``Train``, ``validation``, ``dev`` …) to train/val/test, else None."""
    if value is None:
        return None
    return _SPLIT_SYNONYMS.get(value.strip().lower())


def resolve_image_path(root: Path, rel: str) -> Path | None:
    """Absolute path of ``rel`` inside ``root``; ``None`` when it (or a symlink) escapes ``root``."""
    if os.path.isabs(rel):
        return None
    real_root = root.resolve()
    candidate = (root / rel).resolve()
    return candidate if candidate.is_relative_to(real_root) else None


def _check_columns(table: pd.DataFrame, dataset: DatasetConfig, source: Path) -> None:
    wanted = {"id_column": dataset.id_column}
    if dataset.image_column is not None:
        wanted["image_column"] = dataset.image_column
    if dataset.split_column is not None:
        wanted["split_column"] = dataset.split_column
    for t in dataset.tasks:
        wanted[f"task {t.name!r}"] = t.column
    missing = [f"{col!r} (dataset.{role})" if role.endswith("column") else f"{col!r} ({role})"
               for role, col in wanted.items() if col not in table.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"the table has columns {list(table.columns)}"
        )


def _parse_label(kind: str, value: str | None) -> tuple[Any, str | None]:
    """(normalised label or None, issue reason or None) for one raw cell."""
    if value is None or not value.strip():
        return None, None
    v = value.strip()
    if kind == "regression":
        try:
            x = float(v)
        except ValueError:
            return None, "not_a_number"
        return (x, None) if math.isfinite(x) else (None, "not_finite")
    if kind == "binary":
        low = v.lower()
        if low in _TRUE:
            return "1", None
        if low in _FALSE:
            return "0", None
        return None, "not_binary"
    return v, None


def _decode_all(paths: list[Path], cfg: CleanConfig) -> Iterator[ImageCheck]:
    """Decode images in worker processes, streaming results in input order."""
    fn = partial(inspect_image, mode=cfg.mode, min_size=cfg.min_size, max_pixels=cfg.max_pixels)
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < 256:
        yield from map(fn, paths)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(fn, paths, chunksize=64)


def clean(dataset: DatasetConfig, cfg: CleanConfig) -> CleanResult:
    """Validate ``dataset`` (labels table and images) and split its rows into manifest/rejects."""
    root = Path(dataset.dir)
    if not root.is_dir():
        raise DataError(f"dataset.dir: expected a folder, found nothing at {root}")
    source = root / dataset.labels
    table = read_labels_table(source)
    _check_columns(table, dataset, source)

    rejects: dict[int, tuple[str, str]] = {}
    label_issues: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}
    to_decode: list[tuple[dict[str, Any], Path]] = []

    for row, rec in enumerate(table.to_dict("records")):
        raw_id = rec.get(dataset.id_column)
        sample_id = raw_id.strip() if isinstance(raw_id, str) else None
        if not sample_id:
            rejects[row] = ("missing_id", f"column {dataset.id_column!r} is empty")
            continue
        if sample_id in seen_ids:
            rejects[row] = ("duplicate_id", f"id {sample_id!r} already used by row "
                                            f"{seen_ids[sample_id]}")
            continue
        seen_ids[sample_id] = row
        if dataset.image_template is not None:
            rel: str | None = dataset.image_template.format(id=sample_id)
        else:
            cell = rec.get(dataset.image_column or "")
            rel = cell.strip() if isinstance(cell, str) and cell.strip() else None
        if rel is None:
            rejects[row] = ("missing_path", f"column {dataset.image_column!r} is empty")
            continue
        path = resolve_image_path(root, rel)
        if path is None:
            rejects[row] = ("path_outside_dataset",
                            f"{rel!r} resolves outside dataset.dir {str(root)!r}")
            continue
        out: dict[str, Any] = {"row": row, "id": sample_id, "image": rel}
        if dataset.split_column is not None:
            split = normalise_split(rec.get(dataset.split_column))
            if split is None:
                rejects[row] = ("bad_split", f"column {dataset.split_column!r} has "
                                             f"{rec.get(dataset.split_column)!r}; expected "
                                             "train, val or test")
                continue
            out["split"] = split
        n_labels = 0
        for t in dataset.tasks:
            value, issue = _parse_label(t.kind, rec.get(t.column))
            if issue is not None:
                label_issues.append({"row": row, "id": sample_id, "task": t.name,
                                     "value": rec.get(t.column), "reason": issue})
            out[t.name] = value
            n_labels += value is not None
        if n_labels == 0:
            rejects[row] = ("no_labels", "no task has a usable label: "
                            + ", ".join(f"{t.column}={rec.get(t.column)!r}" for t in dataset.tasks))
            continue
        to_decode.append((out, path))

    checks = _decode_all([p for _, p in to_decode], cfg)
    first_by_hash: dict[str, dict[str, Any]] = {}
    for (out, _), check in tqdm(zip(to_decode, checks, strict=True), total=len(to_decode),
                                desc="clean: decoding images", unit="img", mininterval=1.0):
        if check.reason is not None:
            rejects[out["row"]] = (check.reason, check.detail)
            continue
        first = first_by_hash.get(check.content_hash)
        if first is not None:
            same = all(first[t.name] == out[t.name] for t in dataset.tasks)
            rejects[out["row"]] = (
                "duplicate_image",
                f"same pixels as id {first['id']!r} (row {first['row']}); labels "
                + ("agree" if same else "conflict"),
            )
            continue
        first_by_hash[check.content_hash] = out
        out.update(width=check.width, height=check.height, source_mode=check.source_mode,
                   content_hash=check.content_hash, phash=check.phash)
        kept.append(out)

    manifest = _manifest_frame(kept, dataset)
    rejects_df = pd.DataFrame(
        [{"row": r, "id": table.iloc[r][dataset.id_column], "reason": reason, "detail": detail}
         for r, (reason, detail) in sorted(rejects.items())],
        columns=["row", "id", "reason", "detail"],
    )
    issues_df = pd.DataFrame(label_issues, columns=["row", "id", "task", "value", "reason"])
    accounted = sorted(list(manifest["row"]) + list(rejects_df["row"]))
    if accounted != list(range(len(table))):  # the invariant the whole stage exists for
        raise AssertionError("clean: manifest + rejects do not account for every raw row")
    report = _report(table, manifest, rejects_df, issues_df, dataset, source)
    return CleanResult(manifest, rejects_df, issues_df, report)


def _manifest_frame(kept: list[dict[str, Any]], dataset: DatasetConfig) -> pd.DataFrame:
    cols = ["row", "id", "image"] + (["split"] if dataset.split_column else [])
    cols += [t.name for t in dataset.tasks]
    cols += ["width", "height", "source_mode", "content_hash", "phash"]
    frame = pd.DataFrame(kept, columns=cols)
    for t in dataset.tasks:
        if t.kind == "regression":
            frame[t.name] = pd.to_numeric(frame[t.name], errors="coerce").astype("float64")
        else:
            frame[t.name] = frame[t.name].astype(object)
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
