"""Prefect flow that runs the stale stages of the mtl DVC pipeline.

DVC owns the stage graph and the cache. The flow asks DVC once for the stage graph and for what
is stale (``dvc.repo.Repo`` under one repository lock: the same check ``dvc status`` makes), then
runs one Prefect task per stale stage as ``python -m dvc repro --single-item <stage>`` in
dependency order (a stage downstream of a stale one is stale too). Up-to-date stages start no
process and no task run: the run's log names them and its plan artifact (stage, action
``ran``/``cached``, DVC's reason) marks each as cached. Each stage's output is streamed into the
Prefect run log, a stage is retried only when DVC reports its lock busy, and the
evaluation metrics and the report are published as artifacts. Prefect's own result caching is
off: DVC decides.

From the command line the DVC check runs in a child process started *before* this module imports
Prefect (importing Prefect costs about 2.5 s CPU, DVC's check about as much), so on two cores
both proceed at once; the flow receives the finished plan as its ``dvc_plan`` parameter. A
deployment (or a caller passing no plan) makes the check inside the run, as the ``dvc status``
task, retried while another DVC command holds the lock.

Run it: ``python -m flows.pipeline`` (all stages), ``python -m flows.pipeline train evaluate
--force``; deploy it on a schedule with ``prefect deploy --all`` (see ``prefect.yaml``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Everything up to the Prefect import below is standard library and DVC only: the command line
# runs it in a child process (``--dvc-plan``) that never pays for importing Prefect.

__all__ = ["DvcLockBusy", "StageFailed", "StagePlan", "final_stages", "final_stages_of",
           "make_plan", "mtl_pipeline", "plan_stages", "run_stage", "stage_order", "topological",
           "upstream_of"]

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        """A plan from its ``dataclasses.asdict`` form (a flow parameter, the child's JSON)."""
        order, reasons = data.get("order"), data.get("reasons", {})
        if not (isinstance(order, list) and all(isinstance(s, str) for s in order)
                and isinstance(reasons, dict) and set(reasons) <= set(order)):
            raise ValueError("expected a stage plan {'order': [stage, ...], 'reasons': "
                             f"{{stale stage: reason}}}} with reasons only for stages of order, "
                             f"found {data!r}")
        return cls(list(order), {str(k): str(v) for k, v in reasons.items()})


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


def final_stages(nodes: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """The stages no other stage depends on, in ``nodes`` order, less a stage linked to no
    other (``ingest`` when params point at a user dataset: it feeds nothing), unless it is the
    whole pipeline. Reproducing these and their ancestors is reproducing the pipeline."""
    linked = {n for e in edges for n in e}
    return [n for n in nodes if not any(a == n for a, _ in edges)
            and (n in linked or len(nodes) == 1)]


def final_stages_of(project_dir: Path) -> list[str]:
    """:func:`final_stages` of the project's DVC graph (nothing hashed, no lock taken)."""
    nodes, edges, _ = _read_dvc(project_dir, with_status=False)
    return final_stages(nodes, edges)


def _read_dvc(project_dir: Path, with_status: bool = True
              ) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """Stage names (dvc.yaml order), ``(upstream, downstream)`` edges and DVC's stale stages.

    One in-process ``dvc.repo.Repo``: the graph DVC builds from deps and outs, and the same
    check as ``dvc status`` (hashes of deps, params, outs) made once for all stages. Graph and
    status are read under one repository lock, so DVC parses dvc.yaml and dvc.lock once (each
    ``dvc status`` call otherwise resets and rebuilds the index) and both see the same state.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    try:
        repo = Repo(str(project_dir))
    except NotDvcRepoError as exc:
        raise StageFailed(f"expected a DVC project at {project_dir}, found none: {exc}") from exc
    try:
        # Without status (upstream_of) nothing is hashed: read the graph without the lock, as
        # `dvc dag` does, so a running `dvc exp run` does not make it fail.
        with lock_repo(repo) if with_status else nullcontext():
            # DVC's own addresses are relative to this process's working directory; name
            # stages as `dvc repro` run in the project root does (``train``, ``sub/dvc.yaml:x``).
            names = {s.addressing: _address(s.name, s.dvcfile.path, project_dir)
                     for s in repo.index.stages}
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            edges = [(names[up.addressing], names[down.addressing]) for down, up in graph.edges]
            status = repo.status() if with_status else {}  # same lock: reuses the index
    except LockError as exc:
        raise DvcLockBusy(f"DVC lock busy while reading the pipeline: {exc}") from exc
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
        wanted = _closure(set(final_stages(full, edges)), edges, downstream=False)
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


# A relative link to a PNG in the report, as mtl.figures writes them: ![alt](figures/x.png).
_IMAGE_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+\.png)\)")


def _inline_pngs(markdown: str, base_dir: Path) -> str:
    """The report with its relative PNG links replaced by data URIs (for the markdown artifact).

    The same rule as ``mtl.figures.inline_images`` (a test holds them equal), kept here because
    importing ``mtl.figures`` imports matplotlib and pandas: about 1.4 s CPU, on every run of
    a cached pipeline, for a regular expression. Absolute, remote and missing links stay.
    """

    def embed(match: re.Match[str]) -> str:
        src = match.group("src")
        path = base_dir / src
        if "://" in src or src.startswith(("/", "data:")) or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group('alt')}](data:image/png;base64,{data})"

    return _IMAGE_LINK.sub(embed, markdown)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``python -m flows.pipeline`` (see :func:`main`)."""
    parser = argparse.ArgumentParser(description="Run the mtl pipeline through Prefect and DVC.")
    parser.add_argument("stages", nargs="*", help="stages to run (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun even cached stages")
    parser.add_argument("--project-dir", default=".", help="DVC project root")
    parser.add_argument("--dvc-plan", action="store_true", help=argparse.SUPPRESS)  # the child
    return parser.parse_args(argv)


def _start_plan_process(args: argparse.Namespace) -> subprocess.Popen[str]:
    """This file with ``--dvc-plan`` in a child process: DVC's check, printed as JSON.

    Started before Prefect is imported, so that DVC's check and Prefect's import run at once.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--dvc-plan",
           "--project-dir", args.project_dir, *args.stages] + (["--force"] if args.force else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_plan_process(proc: subprocess.Popen[str]) -> dict[str, Any] | None:
    """The child's plan, or None when it failed (DVC lock busy, no project, unknown stage).

    On failure the flow makes the check itself, inside the run: a busy lock is then retried by
    the ``dvc status`` task and any other error fails the run with DVC's message, as it did
    before the check moved to a child process.
    """
    out, _ = proc.communicate()
    if proc.returncode != 0:
        return None
    return json.loads(out)


if __name__ == "__main__":
    _ARGS = _parse_args(sys.argv[1:])
    if _ARGS.dvc_plan:  # the child: print the plan and exit before importing Prefect
        print(json.dumps(asdict(plan_stages(Path(_ARGS.project_dir), _ARGS.stages or None,
                                            _ARGS.force))))
        sys.exit(0)
    _PLAN_PROCESS = _start_plan_process(_ARGS)

# Imported after the child process above is started: see the module docstring.
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from pydantic_core import to_jsonable_python  # noqa: E402


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
        # The report's pictures are PNG files next to it; the artifact carries them inline.
        create_markdown_artifact(_inline_pngs(report_path.read_text(), report_path.parent),
                                 key="mtl-report", description="reports/report.md")


@flow(name="mtl-pipeline", log_prints=True)
def mtl_pipeline(stages: list[str] | None = None, force: bool = False,
                 project_dir: str = ".", dvc_plan: dict[str, Any] | None = None
                 ) -> dict[str, str]:
    """Run the stale stages of the DVC pipeline (``stages``: default all; ``force``: all).

    ``project_dir`` is the DVC project root; a deployment records it as an absolute path when
    it is deployed (``prefect.yaml``), so a worker's own working directory does not matter.
    ``dvc_plan`` is a plan DVC made just before this run (``asdict(StagePlan)``, as the command
    line makes it while Prefect imports); without it the run asks DVC itself (``dvc status``
    task). Returns each considered stage's DVC output (empty for a cached stage).
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    if dvc_plan is None:
        plan = check_stages(str(root), stages, force)
    else:
        plan = StagePlan.from_dict(dvc_plan)
        logger.info("DVC checked the stages just before this run (in parallel with Prefect's "
                    "start-up)")
    # Cached stages get this line and a row in the plan artifact, not a task run each: eight
    # task runs that do nothing cost about 0.4 s CPU, a third of what the flow run itself costs.
    logger.info("stale (run): %s; cached: %s", plan.stale or "none", plan.cached or "none")
    outputs: dict[str, str] = {}
    for stage in plan.order:
        if stage in plan.reasons:
            logger.info("stage %s runs: %s", stage, plan.reasons[stage])
            outputs[stage] = run_stage(stage, str(root), force)
        else:  # in the plan artifact and the log line above: no task run, no process
            outputs[stage] = ""
    publish_artifacts(root, plan)
    return outputs


def _serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameters as JSON values for the API (pydantic's encoder, no FastAPI)."""
    return {name: to_jsonable_python(value) for name, value in parameters.items()}


# Prefect stores a flow run's parameters after encoding them with FastAPI's jsonable_encoder,
# imported on first use: about 1.4 s CPU per run, as much as DVC's whole status check. This
# flow's parameters are JSON types already (str, bool, lists and dicts of them), which
# pydantic's own encoder (imported with Prefect) turns into the same values.
mtl_pipeline.serialize_parameters = _serialize_parameters  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.pipeline [stages...] [--force] [--project-dir DIR]``.

    Run as ``__main__``, DVC's check is already under way in a child process (started before
    Prefect was imported); called otherwise, it starts here.
    """
    args = _parse_args(argv)
    proc = _PLAN_PROCESS if argv is None and __name__ == "__main__" else _start_plan_process(args)
    mtl_pipeline(stages=args.stages or None, force=args.force, project_dir=args.project_dir,
                 dvc_plan=_finish_plan_process(proc))
    root = Path(args.project_dir)
    print("\nOutputs:\n"
          f"  metrics: {root / 'metrics/eval.json'} (dvc metrics show)\n"
          f"  plots:   {root / 'plots'} and {root / 'dvclive/plots'} (dvc plots show)\n"
          f"  model:   {root / 'models/model.pt'}\n"
          f"  report:  {root / 'reports/report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
