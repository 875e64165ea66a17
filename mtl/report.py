"""The markdown report (``reports/report.md``): data decisions, test metrics of the model and of
its single-task baselines (Δm), figures and per-class tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl.schema import TaskSchema

__all__ = ["comparison_lines", "decisions", "detail_lines", "figure_lines", "render_report",
           "table_lines"]


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


#: Headline test metrics shown per task, in this order (those the task's kind has).
_HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "f1", "auroc",
             "average_precision", "micro_f1", "map", "mae", "rmse", "r2", "ece")
#: Per-class tables are shown for tasks with at most this many classes.
_MAX_TABLE_CLASSES = 30


def comparison_lines(metrics: Mapping[str, Any], tasks: Sequence[TaskSchema],
                     skipped: Mapping[str, str]) -> list[str]:
    """"Did multi-task help?": per task the multi-task and single-task metric and Δ, and Δm."""
    lines = ["", "## Did multi-task help?", ""]
    if "delta_m" not in metrics:
        return [*lines, "Single-task baselines are off (`evaluate.baselines: false`): no "
                "comparison."]
    lines += ["| task | metric | multi-task | single-task | Δ (%) |", "|---|---|---|---|---|"]
    for task in tasks:
        m = metrics[task.name]
        if "stl" in m:
            metric = m["delta_metric"]
            arrow = "higher is better" if m["higher_is_better"] else "lower is better"
            lines.append(f"| {task.name} | {metric} ({arrow}) | {_fmt(m[metric])} | "
                         f"{_fmt(m['stl'][metric])} | {m['delta_pct']:+.2f} |")
        else:
            lines.append(f"| {task.name} | – | – | – | no baseline: "
                         f"{skipped.get(task.name, 'missing')} |")
    compared = [t.name for t in tasks if "stl" in metrics[t.name]]
    dm = metrics["delta_m"]
    lines += ["", f"**Δm = {dm:+.2f} %** over {len(compared)} task(s) "
              f"({', '.join(compared) or 'none'}): the mean relative difference of each task's "
              "metric to its single-task model (Maninis et al. 2019; LibMTL's "
              "`count_improvement`). Positive means the multi-task model is better; Nash-MTL "
              "and FAMO report the same number negated, as a drop.",
              "", "This is one seed (`train.seed`): a difference smaller than the spread over "
              "seeds is noise, not a win. Run the sweep over `train.seed` for mean ± std "
              "(README, \"Did multi-task help?\")."]
    return lines


def detail_lines(metrics: Mapping[str, Any], tasks: Sequence[TaskSchema]) -> list[str]:
    """The headline test metrics per task, one row per metric (multi-task and single-task)."""
    lines = ["", "## Test metrics", "", "| task | kind | metric | multi-task | single-task | n |",
             "|---|---|---|---|---|---|"]
    for task in tasks:
        m = metrics[task.name]
        stl = m.get("stl", {})
        for key in _HEADLINE:
            if key in m:
                lines.append(f"| {task.name} | {task.kind.value} | {key} | {_fmt(m[key])} | "
                             f"{_fmt(stl[key]) if key in stl else '–'} | {m['n']} |")
    return lines


def table_lines(tables: Mapping[str, Mapping[str, Any]], tasks: Sequence[TaskSchema]) -> list[str]:
    """Per-class precision / recall / F1 / support of classification tasks (≤ 30 classes) and
    per-label average precision of multilabel tasks."""
    lines: list[str] = []
    for task in tasks:
        t = tables.get(task.name, {})
        per_class, per_label = t.get("per_class"), t.get("per_label")
        if per_class and len(per_class) <= _MAX_TABLE_CLASSES:
            lines += ["", f"### {task.name}: per class (test)", "",
                      "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            lines += [f"| {c} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} "
                      f"| {v['support']} |" for c, v in per_class.items()]
        if per_label and len(per_label) <= _MAX_TABLE_CLASSES:
            lines += ["", f"### {task.name}: average precision per label (test)", "",
                      "| label | AP |", "|---|---|"]
            lines += [f"| {c} | {_fmt(v)} |" for c, v in per_label.items()]
    return ["", "## Per-class metrics", *lines] if lines else []


def figure_lines(figures: Mapping[str, str]) -> list[str]:
    """The report's pictures, linked relative to the report (PNG files next to it)."""
    lines: list[str] = []
    for title, link in figures.items():
        lines += ["", f"### {title}", "", f"![{title}]({link})"]
    return ["", "## Figures", *lines] if lines else []


def render_report(metrics: Mapping[str, Any], tasks: Sequence[TaskSchema],
                  clean_report: Mapping[str, Any], select_report: Mapping[str, Any],
                  tables: Mapping[str, Mapping[str, Any]] | None = None,
                  skipped: Mapping[str, str] | None = None,
                  figures: Mapping[str, str] | None = None) -> str:
    """``reports/report.md``: data summary (clean/select reports), "Did multi-task help?", the
    test metrics table, figures and per-class tables.

    ``metrics`` is ``metrics/eval.json``: ``{task: {metric: value, "n": count, ...}}`` plus, with
    baselines, per task ``stl`` / ``delta_metric`` / ``higher_is_better`` / ``delta_pct`` and the
    top-level ``delta_m``. The reports are the clean and select stages' ``report.json``;
    ``tables`` the per-class tables, ``skipped`` why a task has no baseline, ``figures``
    ``{title: link relative to the report}``.
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
    lines += comparison_lines(metrics, tasks, skipped or {})
    lines += detail_lines(metrics, tasks)
    lines += figure_lines(figures or {})
    lines += table_lines(tables or {}, tasks)
    lines.append("")
    return "\n".join(lines)
