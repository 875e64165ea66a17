"""Prefect flow that runs the mtl pipeline stage by stage through DVC.

DVC owns the stage graph and the cache: the flow reads the graph from ``dvc dag --dot``, runs one
Prefect task per stage as ``python -m dvc repro --single-item <stage>`` in dependency order (a
cached stage is a no-op for DVC), streams each stage's output into the Prefect run log, retries
a stage when DVC reports its lock busy, and publishes the evaluation metrics and the report as
artifacts. Prefect's own result caching is off: DVC decides what is up to date.

Run it: ``python -m flows.pipeline`` (all stages), ``python -m flows.pipeline train evaluate
--force``; deploy it on a schedule with ``prefect deploy`` (see ``prefect.yaml``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

__all__ = ["DvcLockBusy", "StageFailed", "mtl_pipeline", "run_stage", "stage_order"]

LOCK_MESSAGES = ("unable to acquire lock", "lock is already held", "is busy", "lockerror")


class DvcLockBusy(RuntimeError):
    """DVC could not take its repository lock (another ``dvc`` command is running)."""


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries the end of its output."""


def _env() -> dict[str, str]:
    """The subprocess environment: this interpreter's bin folder first, so ``mtl`` resolves."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def parse_dot(dot: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Nodes (in file order) and edges of ``dvc dag --dot`` output."""
    nodes, edges = [], []
    for line in dot.splitlines():
        edge = re.match(r'\s*"([^"]+)"\s*->\s*"([^"]+)"', line)
        if edge:
            edges.append((edge.group(1), edge.group(2)))
            continue
        node = re.match(r'\s*"([^"]+)"\s*;?\s*$', line)
        if node:
            nodes.append(node.group(1))
    return nodes, edges


def topological(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm, ties broken by DVC's node order (stable)."""
    indeg = {n: 0 for n in nodes}
    for _, b in edges:
        indeg[b] += 1
    order: list[str] = []
    ready = [n for n in nodes if indeg[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for a, b in edges:
            if a == n:
                indeg[b] -= 1
                if indeg[b] == 0:
                    ready.append(b)
    if len(order) != len(nodes):
        raise ValueError("the DVC stage graph has a cycle")
    return order


def stage_order(project_dir: Path, stages: Sequence[str] | None = None) -> list[str]:
    """Stages to run, in dependency order, taken from DVC's own graph.

    ``stages=None`` runs the ancestors of every final stage (so a user dataset that does not
    depend on ``ingest`` skips it); named stages run in graph order (``--single-item``: their
    ancestors are not rerun).
    """
    def dag(target: str | None) -> tuple[list[str], list[tuple[str, str]]]:
        cmd = [sys.executable, "-m", "dvc", "dag", "--dot"] + ([target] if target else [])
        out = subprocess.run(cmd, cwd=project_dir, capture_output=True, text=True, env=_env())
        if out.returncode != 0:
            raise StageFailed(f"`dvc dag` failed: {out.stderr.strip() or out.stdout.strip()}")
        return parse_dot(out.stdout)

    nodes, edges = dag(None)
    full = topological(nodes, edges)
    if stages:
        unknown = [s for s in stages if s not in full]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the pipeline has {full}")
        return [s for s in full if s in stages]
    # Final stages; a stage with no edge at all (``ingest`` when params point at a user
    # dataset) feeds nothing and is left out.
    linked = {n for e in edges for n in e}
    sinks = [n for n in full if not any(a == n for a, _ in edges)
             and (n in linked or len(full) == 1)]
    wanted: set[str] = set()
    for sink in sinks:
        wanted.update(dag(sink)[0])
    return [s for s in full if s in wanted]


def _lock_busy(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the failure was DVC's lock being held by another command."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, DvcLockBusy)


@task(name="dvc-stage", cache_policy=NO_CACHE, retries=5, retry_delay_seconds=[2, 5, 10, 20, 30],
      retry_condition_fn=_lock_busy, task_run_name="dvc repro {stage}")
def run_stage(stage: str, project_dir: str, force: bool = False) -> str:
    """``dvc repro --single-item <stage>``: output streamed into the Prefect log."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (
        ["--force"] if force else [])
    logger.info("running %s", " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, cwd=project_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=_env())
    lines: list[str] = []
    assert proc.stdout is not None
    # Lines end at "\n" only: a progress bar redraws itself with "\r", and only the final
    # state of each bar reaches the log.
    stream = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="\n")
    for raw in stream:
        line = raw.rstrip("\n").split("\r")[-1]
        if line.strip():
            lines.append(line)
            logger.info("[%s] %s", stage, line)
    code = proc.wait()
    output = "\n".join(lines)
    if code != 0:
        tail = "\n".join(lines[-30:])
        if any(m in output.lower() for m in LOCK_MESSAGES):
            raise DvcLockBusy(f"stage {stage}: DVC lock busy:\n{tail}")
        raise StageFailed(f"stage {stage} failed (exit {code}):\n{tail}")
    return output


def publish_artifacts(project_dir: Path) -> None:
    """Evaluation metrics as a table artifact and the report as a markdown artifact."""
    metrics_path = project_dir / "metrics" / "eval.json"
    report_path = project_dir / "reports" / "report.md"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        rows = [{"task": task_name, "metric": k, "value": v}
                for task_name, m in metrics.items() for k, v in m.items()]
        create_table_artifact(rows, key="mtl-eval-metrics",
                              description="Test metrics per task (metrics/eval.json)")
    if report_path.is_file():
        create_markdown_artifact(report_path.read_text(), key="mtl-report",
                                 description="reports/report.md")


@flow(name="mtl-pipeline", log_prints=True)
def mtl_pipeline(stages: list[str] | None = None, force: bool = False,
                 project_dir: str = ".") -> dict[str, str]:
    """Run the DVC pipeline stage by stage (``stages``: default all; ``force``: ignore cache)."""
    root = Path(project_dir).resolve()
    order = stage_order(root, stages)
    get_run_logger().info("stages in dependency order: %s", order)
    outputs: dict[str, str] = {}
    for stage in order:
        outputs[stage] = run_stage(stage, str(root), force)
    publish_artifacts(root)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the mtl pipeline through Prefect and DVC.")
    parser.add_argument("stages", nargs="*", help="stages to run (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun even cached stages")
    parser.add_argument("--project-dir", default=".", help="DVC project root")
    args = parser.parse_args(argv)
    mtl_pipeline(stages=args.stages or None, force=args.force, project_dir=args.project_dir)
    root = Path(args.project_dir)
    print("\nOutputs:\n"
          f"  metrics: {root / 'metrics/eval.json'} (dvc metrics show)\n"
          f"  plots:   {root / 'plots'} and {root / 'dvclive/plots'} (dvc plots show)\n"
          f"  model:   {root / 'models/model.pt'}\n"
          f"  report:  {root / 'reports/report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
