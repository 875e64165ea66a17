"""Prefect flow that runs the stale stages of the mtl DVC pipeline.

DVC owns the stage graph and the cache. The flow asks DVC once, in-process, for the stage graph
and for what is stale (``dvc.repo.Repo``: the same check ``dvc status`` makes), then runs one
Prefect task per stale stage as ``python -m dvc repro --single-item <stage>`` in dependency order
(a stage downstream of a stale one is stale too). Up-to-date stages start no process: each is
recorded as a task run in the Completed state named ``Cached``, and the plan (stage, action,
DVC's reason) is published as a table artifact. Each stage's output is streamed into the Prefect
run log, a stage is retried only when DVC reports its lock busy, and the evaluation metrics and
the report are published as artifacts. Prefect's own result caching is off: DVC decides.

Run it: ``python -m flows.pipeline`` (all stages), ``python -m flows.pipeline train evaluate
--force``; deploy it on a schedule with ``prefect deploy --all`` (see ``prefect.yaml``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

__all__ = ["DvcLockBusy", "StageFailed", "StagePlan", "make_plan", "mtl_pipeline", "plan_stages",
           "run_stage", "stage_order", "topological", "upstream_of"]

LOCK_MESSAGES = ("unable to acquire lock", "lock is already held", "is busy", "lockerror")
LOCK_RETRY_DELAYS: list[float] = [2, 5, 10, 20, 30]  # seconds before each retry


class DvcLockBusy(RuntimeError):
    """DVC could not take its repository lock (another ``dvc`` command is running)."""


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries the end of its output."""


@dataclass(frozen=True)
class StagePlan:
    """What one flow run does: every considered stage in dependency order, and the stale ones.

    ``reasons`` maps each stale stage to why it runs (DVC's status, an upstream stale stage, or
    ``--force``); a stage of ``order`` missing from it is up to date in DVC's cache.
    """

    order: list[str]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def stale(self) -> list[str]:
        """Stages to run, in dependency order."""
        return [s for s in self.order if s in self.reasons]

    @property
    def cached(self) -> list[str]:
        """Stages DVC finds up to date, in dependency order."""
        return [s for s in self.order if s not in self.reasons]


def _env() -> dict[str, str]:
    """The subprocess environment: this interpreter's bin folder first, so ``mtl`` resolves."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def topological(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm over ``(upstream, downstream)`` edges, ties broken by ``nodes`` order."""
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
        raise ValueError(f"the DVC stage graph has a cycle among {sorted(set(nodes) - set(order))}")
    return order


def _closure(start: set[str], edges: Sequence[tuple[str, str]], downstream: bool) -> set[str]:
    """``start`` and every stage reachable from it along (or against) the edges."""
    seen, todo = set(start), list(start)
    while todo:
        n = todo.pop()
        for a, b in edges:
            nxt = b if downstream and a == n else a if not downstream and b == n else None
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _describe(status: list[Any]) -> str:
    """One line from a ``dvc status`` entry, e.g. ``changed deps: params.yaml``."""
    parts: list[str] = []
    for item in status:
        if isinstance(item, dict):
            for kind, paths in item.items():
                names = ", ".join(paths) if isinstance(paths, dict) else str(paths)
                parts.append(f"{kind}: {names}")
        else:
            parts.append(str(item))
    return "; ".join(parts) or "changed"


def upstream_of(project_dir: Path, stage: str) -> list[str]:
    """The stages ``stage`` depends on, directly or not, in dependency order (DVC's graph)."""
    nodes, edges, _ = _read_dvc(project_dir, with_status=False)
    if stage not in nodes:
        raise ValueError(f"expected a stage named {stage!r} in the pipeline, found {nodes}")
    wanted = _closure({stage}, edges, downstream=False) - {stage}
    return [s for s in topological(nodes, edges) if s in wanted]


def _read_dvc(project_dir: Path, with_status: bool = True
              ) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """Stage names (dvc.yaml order), ``(upstream, downstream)`` edges and DVC's stale stages.

    One in-process ``dvc.repo.Repo``: the graph DVC builds from deps and outs, and the same
    check as ``dvc status`` (hashes of deps, params, outs) made once for all stages.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        repo = Repo(str(project_dir))
    except NotDvcRepoError as exc:
        raise StageFailed(f"expected a DVC project at {project_dir}, found none: {exc}") from exc
    try:
        # DVC's own addresses are relative to this process's working directory; name stages
        # as `dvc repro` run in the project root does (``train``, ``sub/dvc.yaml:train``).
        names = {s.addressing: _address(s.name, s.dvcfile.path, project_dir)
                 for s in repo.index.stages}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        edges = [(names[up.addressing], names[down.addressing]) for down, up in graph.edges]
        try:
            status = repo.status() if with_status else {}
        except LockError as exc:
            raise DvcLockBusy(f"DVC lock busy while checking status: {exc}") from exc
    finally:
        repo.close()
    return list(names.values()), edges, {names[k]: _describe(v) for k, v in status.items()}


def _address(name: str, dvcfile: str, project_dir: Path) -> str:
    """A stage's address relative to the project root, as ``dvc repro`` there accepts it."""
    rel = os.path.relpath(dvcfile, project_dir)
    return name if rel == "dvc.yaml" else f"{rel}:{name}"


def make_plan(nodes: Sequence[str], edges: Sequence[tuple[str, str]], status: dict[str, str],
              stages: Sequence[str] | None = None, force: bool = False) -> StagePlan:
    """The stages to consider and the stale ones, from DVC's graph and status.

    ``nodes`` in dvc.yaml order, ``edges`` as ``(upstream, downstream)``, ``status`` maps the
    stages DVC reports changed to why. ``stages=None`` considers the ancestors of every final
    stage (so a user dataset that does not depend on ``ingest`` skips it); named stages are
    considered alone (``--single-item``: their ancestors are not rerun). A considered stage
    downstream of a stale considered stage is stale too: its inputs are about to change,
    although DVC cannot know it yet.
    """
    full = topological(nodes, edges)
    if stages:
        unknown = [s for s in stages if s not in full]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the pipeline has {full}")
        wanted = set(stages)
    else:
        # Final stages; a stage with no edge at all (``ingest`` when params point at a user
        # dataset) feeds nothing and is left out, unless it is the whole pipeline.
        linked = {n for e in edges for n in e}
        sinks = {n for n in full if not any(a == n for a, _ in edges)
                 and (n in linked or len(full) == 1)}
        wanted = _closure(sinks, edges, downstream=False)
    order = [s for s in full if s in wanted]
    if force:
        return StagePlan(order, {s: "--force" for s in order})
    reasons = {s: status[s] for s in order if s in status}
    for stage in order:  # dependency order: every upstream stage is decided already
        if stage not in reasons:
            ups = [a for a, b in edges if b == stage and a in reasons]
            if ups:
                reasons[stage] = f"upstream stage {ups[0]} is stale"
    return StagePlan(order, reasons)


def plan_stages(project_dir: Path, stages: Sequence[str] | None = None,
                force: bool = False) -> StagePlan:
    """Which stages to consider and which of them are stale, from one look at DVC."""
    nodes, edges, status = _read_dvc(project_dir)
    return make_plan(nodes, edges, status, stages, force)


def stage_order(project_dir: Path, stages: Sequence[str] | None = None) -> list[str]:
    """Stages the flow considers, in dependency order (see :func:`plan_stages`)."""
    return plan_stages(project_dir, stages).order


def _lock_busy(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the failure was DVC's lock being held by another command."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, DvcLockBusy)


@task(name="dvc-status", cache_policy=NO_CACHE, retries=len(LOCK_RETRY_DELAYS),
      retry_delay_seconds=LOCK_RETRY_DELAYS, retry_condition_fn=_lock_busy,
      task_run_name="dvc status")
def check_stages(project_dir: str, stages: list[str] | None, force: bool) -> StagePlan:
    """Ask DVC once which stages are stale (retried while another DVC command holds the lock)."""
    return plan_stages(Path(project_dir), stages, force)


@task(name="dvc-cached", cache_policy=NO_CACHE, task_run_name="dvc cached {stage}")
def mark_cached(stage: str) -> State[str]:
    """Record an up-to-date stage in the run: Completed, named ``Cached``; no process starts."""
    return Completed(name="Cached", message=f"DVC: stage {stage} is up to date", data="")


@task(name="dvc-stage", cache_policy=NO_CACHE, retries=len(LOCK_RETRY_DELAYS),
      retry_delay_seconds=LOCK_RETRY_DELAYS, retry_condition_fn=_lock_busy,
      task_run_name="dvc repro {stage}")
def run_stage(stage: str, project_dir: str, force: bool = False) -> str:
    """``dvc repro --single-item <stage>``: output streamed into the Prefect log."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (
        ["--force"] if force else [])
    logger.info("running %s in %s", " ".join(cmd[1:]), project_dir)
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


def publish_artifacts(project_dir: Path, plan: StagePlan) -> None:
    """The plan, the evaluation metrics (table artifacts) and the report (markdown artifact)."""
    create_table_artifact(
        [{"stage": s, "action": "ran" if s in plan.reasons else "cached",
          "reason": plan.reasons.get(s, "up to date")} for s in plan.order],
        key="mtl-stage-plan", description="Stages of this run: ran (and why) or cached by DVC")
    metrics_path = project_dir / "metrics" / "eval.json"
    report_path = project_dir / "reports" / "report.md"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        rows = [{"task": name, "metric": k, "value": v}
                for name, m in metrics.items() if isinstance(m, dict) for k, v in m.items()]
        rows += [{"task": "", "metric": k, "value": v}
                 for k, v in metrics.items() if not isinstance(v, dict)]
        create_table_artifact(rows, key="mtl-eval-metrics",
                              description="Test metrics per task (metrics/eval.json)")
    if report_path.is_file():
        from mtl.figures import inline_images  # matplotlib: only when there is a report

        # The report's pictures are PNG files next to it; the artifact carries them inline.
        create_markdown_artifact(inline_images(report_path.read_text(), report_path.parent),
                                 key="mtl-report", description="reports/report.md")


@flow(name="mtl-pipeline", log_prints=True)
def mtl_pipeline(stages: list[str] | None = None, force: bool = False,
                 project_dir: str = ".") -> dict[str, str]:
    """Run the stale stages of the DVC pipeline (``stages``: default all; ``force``: all).

    ``project_dir`` is the DVC project root; a deployment records it as an absolute path when
    it is deployed (``prefect.yaml``), so a worker's own working directory does not matter.
    Returns each considered stage's DVC output (empty for a cached stage).
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    plan = check_stages(str(root), stages, force)
    logger.info("stale (run): %s; cached: %s", plan.stale or "none", plan.cached or "none")
    outputs: dict[str, str] = {}
    for stage in plan.order:
        if stage in plan.reasons:
            logger.info("stage %s runs: %s", stage, plan.reasons[stage])
            outputs[stage] = run_stage(stage, str(root), force)
        else:
            mark_cached(stage)
            outputs[stage] = ""
    publish_artifacts(root, plan)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.pipeline [stages...] [--force] [--project-dir DIR]``."""
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
