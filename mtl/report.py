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
    # Keys the clean and select stages always write are read with [] so that a renamed key
    # fails loudly instead of rendering a plausible 0.
    dup = clean_report["duplicates"]
    groups = select_report["groups"]
    if dup:
        lines += ["", "## Duplicates", "",
                  f"- exact-duplicate groups: {dup['exact_duplicate_groups']}, of which "
                  f"{dup['exact_duplicate_groups_with_conflicting_labels']} with "
                  f"conflicting labels (action: {dup['conflicting_duplicates_action']})",
                  f"- near-duplicate groups (pHash distance <= "
                  f"{dup['near_duplicate_distance']}): {dup['near_duplicate_groups']}"
                  f" holding {dup['rows_in_near_duplicate_groups']} rows; groups split "
                  f"across train/val/test: {groups['groups_across_splits']}"]
    hierarchy = clean_report["hierarchy"]
    if hierarchy:
        lines += ["", "## Label hierarchy", ""]
        for link, h in hierarchy.items():
            bad = ", ".join(f"{child} -> {dict(parents)}"
                            for child, parents in list(h["violations"].items())[:5])
            lines.append(f"- {link}: {h['violating_child_values']} of "
                         f"{h['child_values']} values map to more than one parent "
                         f"({h['violating_rows']} rows, action: {h['action']})"
                         + (f": {bad}" if bad else ""))
    features = select_report["features"]
    if features["decisions"]:
        lines += ["", "## Tabular features", "",
                  f"- kept: {', '.join(f'`{k}`' for k in features['kept']) or 'none'}"]
        for d in features["decisions"]:
            if not d["kept"]:
                lines.append(f"- dropped `{d['feature']}`: {d['reason']}"
                             + (f" ({d['detail']})" if d.get("detail") else ""))
    return lines


def render_report(metrics: Mapping[str, Mapping[str, Any]], tasks: Sequence[TaskSchema],
                  clean_report: Mapping[str, Any], select_report: Mapping[str, Any]) -> str:
    """``reports/report.md``: data summary (clean/select reports) and the test metrics table.

    ``metrics`` is ``{task: {metric: value, "n": count}}`` (``metrics/eval.json``); the reports
    are the clean and select stages' ``report.json``.
    """
    lines = ["# mtl report", "", "## Data", ""]
    lines += [f"- raw rows: {clean_report['raw_rows']}, clean: {clean_report['clean_rows']}"
              f", rejected: {clean_report['rejected_rows']}"]
    for reason, n in clean_report["rejects_by_reason"].items():
        lines.append(f"  - {reason}: {n}")
    lines.append(f"- split ({select_report['split_source']}): "
                 + ", ".join(f"{k} {v}" for k, v in select_report["split_sizes"].items()))
    for name, d in select_report["tasks"].items():
        status = "kept" if d["kept"] else f"dropped: {d['reason']}"
        lines.append(f"- task `{name}`: {status} (label coverage {d['coverage']:.1%})")
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
