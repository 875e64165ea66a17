"""The markdown report (``reports/report.md``): data decisions and test metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl.schema import TaskSchema
from mtl.tasks import kind_spec

__all__ = ["decisions", "render_report"]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def decisions(clean_report: Mapping[str, Any], select_report: Mapping[str, Any]) -> list[str]:
    """Duplicate, hierarchy and feature (leakage) decisions of the clean and select stages."""
    lines: list[str] = []
    dup = clean_report.get("duplicates") or {}
    groups = select_report.get("groups") or {}
    if dup:
        lines += ["", "## Duplicates", "",
                  f"- exact-duplicate groups: {dup.get('exact_duplicate_groups', 0)}, of which "
                  f"{dup.get('exact_duplicate_groups_with_conflicting_labels', 0)} with "
                  f"conflicting labels (action: {dup.get('conflicting_duplicates_action')})",
                  f"- near-duplicate groups (pHash distance <= "
                  f"{dup.get('near_duplicate_distance')}): {dup.get('near_duplicate_groups', 0)}"
                  f" holding {dup.get('rows_in_near_duplicate_groups', 0)} rows; groups split "
                  f"across train/val/test: {groups.get('groups_across_splits', 'n/a')}"]
    hierarchy = clean_report.get("hierarchy") or {}
    if hierarchy:
        lines += ["", "## Label hierarchy", ""]
        for link, h in hierarchy.items():
            bad = ", ".join(f"{child} -> {dict(parents)}"
                            for child, parents in list(h.get("violations", {}).items())[:5])
            lines.append(f"- {link}: {h.get('violating_child_values', 0)} of "
                         f"{h.get('child_values', 0)} values map to more than one parent "
                         f"({h.get('violating_rows', 0)} rows, action: {h.get('action')})"
                         + (f": {bad}" if bad else ""))
    features = select_report.get("features") or {}
    if features.get("decisions"):
        lines += ["", "## Tabular features", "",
                  f"- kept: {', '.join(f'`{k}`' for k in features.get('kept', [])) or 'none'}"]
        for d in features["decisions"]:
            if not d.get("kept"):
                lines.append(f"- dropped `{d['feature']}`: {d.get('reason')}"
                             + (f" ({d['detail']})" if d.get("detail") else ""))
    return lines


def render_report(metrics: Mapping[str, Mapping[str, Any]], tasks: Sequence[TaskSchema],
                  clean_report: Mapping[str, Any], select_report: Mapping[str, Any]) -> str:
    """``reports/report.md``: data summary (clean/select reports) and the test metrics table.

    ``metrics`` is ``{task: {metric: value, "n": count}}`` (``metrics/eval.json``); the reports
    are the clean and select stages' ``report.json``.
    """
    lines = ["# mtl report", "", "## Data", ""]
    lines += [f"- raw rows: {clean_report.get('raw_rows')}, clean: {clean_report.get('clean_rows')}"
              f", rejected: {clean_report.get('rejected_rows')}"]
    for reason, n in clean_report.get("rejects_by_reason", {}).items():
        lines.append(f"  - {reason}: {n}")
    lines.append(f"- split ({select_report.get('split_source')}): "
                 + ", ".join(f"{k} {v}" for k, v in select_report.get("split_sizes", {}).items()))
    for name, d in select_report.get("tasks", {}).items():
        status = "kept" if d.get("kept") else f"dropped: {d.get('reason')}"
        lines.append(f"- task `{name}`: {status} (label coverage {d.get('coverage', 0):.1%})")
        rare = d.get("rare_classes")
        if rare:
            into = (f"merged into `{rare['merged_into']}`" if "merged_into" in rare
                    else "set missing")
            lines.append(f"  - {len(rare['classes'])} class(es) with fewer than "
                         f"{rare['min_class_count']} rows {into}")
    lines += decisions(clean_report, select_report)
    lines += ["", "## Test metrics", "", "| task | kind | metric | value | n |",
              "|---|---|---|---|---|"]
    for task in tasks:
        m = metrics[task.name]
        for key in kind_spec(task).metric_keys:
            if key in m:
                lines.append(f"| {task.name} | {task.kind.value} | {key} | {_fmt(m[key])} "
                             f"| {m['n']} |")
    lines.append("")
    return "\n".join(lines)
