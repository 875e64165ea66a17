"""The Prefect flow against a real (temporary) Prefect server, driving real DVC."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.pipeline import (
    final_stages,
    final_stages_of,
    make_plan,
    plan_stages,
    stage_order,
    topological,
    upstream_of,
)
from tests.conftest import REPO_ROOT, make_project

# Holds the DVC repository lock until a line (or end of file) arrives on its stdin: the test
# releases it as soon as the flow's own check has failed on it, instead of after a fixed time
# long enough for the slowest machine.
LOCK_HOLDER = """
import sys
from dvc.repo import Repo
repo = Repo(sys.argv[1])
repo.lock.lock()
print("locked", flush=True)
sys.stdin.readline()
repo.lock.unlock()
"""
# Prefect's task engine logs this when the `dvc status` task failed and will be retried.
FIRST_RETRY = "Task run 'dvc status' - Task run failed with exception: DvcLockBusy"

# Small enough for a loaded 2-core machine; every stage still does real work.
SMALL = {"ingest": {"n_train": 300, "n_val": 60, "n_test": 100},
         "train": {"epochs": 1, "batch_size": 64}}
STAGES = ["ingest", "clean", "select", "augment", "train", "evaluate"]
# The project's stages in dependency order (ties: dvc.yaml's order): the baseline matrix has one
# stage per task, and teach (train.distill) stands between the baselines and train.
PIPELINE = ["ingest", "clean", "select", "augment", "baseline@task0", "baseline@task1", "teach",
            "train", "evaluate"]
# The project's graph as DVC reports it: (upstream, downstream).
EDGES = [("ingest", "clean"), ("clean", "select"), ("ingest", "augment"), ("select", "augment"),
         ("select", "train"), ("augment", "train"), ("train", "evaluate"),
         ("augment", "evaluate"), ("clean", "evaluate"), ("select", "evaluate")]


def test_topological_order_and_cycle() -> None:
    assert topological(list(reversed(STAGES)), EDGES) == STAGES
    with pytest.raises(ValueError, match="cycle"):
        topological(["a", "b"], [("a", "b"), ("b", "a")])


def test_plan_propagates_staleness_downstream_only() -> None:
    plan = make_plan(STAGES, EDGES, {"train": "changed deps: params.yaml"})
    assert plan.stale == ["train", "evaluate"]
    assert plan.cached == ["ingest", "clean", "select", "augment"]
    assert plan.reasons["evaluate"] == "upstream stage train is stale"
    # augment feeds train and evaluate but not clean/select
    assert make_plan(STAGES, EDGES, {"augment": "x"}).stale == ["augment", "train", "evaluate"]
    assert make_plan(STAGES, EDGES, {}).stale == []
    assert make_plan(STAGES, EDGES, {}, force=True).stale == STAGES


def test_final_stages_leave_out_an_unlinked_ingest() -> None:
    assert final_stages(STAGES, EDGES) == ["evaluate"]
    user_edges = [e for e in EDGES if e[0] != "ingest"]
    assert final_stages(STAGES, user_edges) == ["evaluate"]  # not ingest, which feeds nothing
    assert final_stages(["ingest"], []) == ["ingest"]  # unless it is the whole pipeline
    assert final_stages(["a", "b@x", "b@y", "c"],
                        [("a", "b@x"), ("a", "b@y"), ("b@y", "c")]) == ["b@x", "c"]


def test_final_stages_of_the_project_with_the_fashion_config(tmp_path: Path) -> None:
    """What the sweep's experiments reproduce: evaluate and its ancestors, which include ingest
    on the default data and not on configs/fashion-product.yaml (it has no ingest section)."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "dvc.yaml").write_text((REPO_ROOT / "dvc.yaml").read_text())
    for params, has_ingest in (("params.yaml", True), ("configs/fashion-product.yaml", False)):
        (tmp_path / "params.yaml").write_text((REPO_ROOT / params).read_text())
        assert final_stages_of(tmp_path) == ["evaluate"]
        assert ("ingest" in upstream_of(tmp_path, "evaluate")) is has_ingest


def test_plan_named_stages_and_orphans() -> None:
    # Named stages only (single item): a stale ancestor that is not named does not run.
    plan = make_plan(STAGES, EDGES, {"clean": "x"}, stages=["evaluate", "train"])
    assert plan.order == ["train", "evaluate"] and plan.stale == []
    with pytest.raises(ValueError, match="unknown stage"):
        make_plan(STAGES, EDGES, {}, stages=["nope"])
    # A user dataset: ingest feeds nothing, it is left out even when stale.
    user_edges = [e for e in EDGES if e[0] != "ingest"]
    plan = make_plan(STAGES, user_edges, {"ingest": "deleted", "clean": "x"})
    assert plan.order == STAGES[1:] and plan.stale == STAGES[1:]
    # Matrix stage names (baseline@left) are ordinary nodes.
    plan = make_plan(["a", "b@x", "b@y", "c"], [("a", "b@x"), ("a", "b@y"), ("b@y", "c")],
                     {"b@y": "x"})
    assert plan.order == ["a", "b@x", "b@y", "c"] and plan.stale == ["b@y", "c"]


def test_stage_plan_round_trips_as_a_flow_parameter() -> None:
    from dataclasses import asdict

    from flows.pipeline import StagePlan

    plan = make_plan(STAGES, EDGES, {"train": "changed deps: params.yaml"})
    data = json.loads(json.dumps(asdict(plan)))  # as the child prints it / the API stores it
    assert StagePlan.from_dict(data) == plan
    with pytest.raises(ValueError, match="reasons only for stages of order"):
        StagePlan.from_dict({"order": ["train"], "reasons": {"evaluate": "x"}})
    with pytest.raises(ValueError, match="expected a stage plan"):
        StagePlan.from_dict({"reasons": {}})


def test_parameters_serialize_as_prefect_would_without_fastapi() -> None:
    # Prefect's own serializer (FastAPI's jsonable_encoder) is the reference; the flow's
    # replacement must store the same values for every parameter shape the flow takes.
    from fastapi.encoders import jsonable_encoder

    from flows.pipeline import mtl_pipeline

    plan = {"order": PIPELINE, "reasons": {"train": "changed deps: params.yaml"}}
    for params in ({"stages": None, "force": False, "project_dir": ".", "dvc_plan": None},
                   {"stages": ["train", "evaluate"], "force": True, "project_dir": "/p",
                    "dvc_plan": plan}):
        assert mtl_pipeline.serialize_parameters(params) == jsonable_encoder(params)


def test_report_inlined_as_mtl_figures_does(tmp_path: Path) -> None:
    from flows.pipeline import _inline_pngs
    from mtl.figures import inline_images

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "curves.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "b.png").write_bytes(b"\x89PNG other")
    markdown = ("# Report\n![curves](figures/curves.png) and ![b](b.png)\n"
                "![missing](figures/none.png) ![abs](/tmp/x.png) "
                "![remote](https://example.org/x.png) ![](data:image/png;base64,AAAA)\n")
    inlined = _inline_pngs(markdown, tmp_path)
    assert inlined == inline_images(markdown, tmp_path)
    assert "![curves](data:image/png;base64,iVBORyBmYWtl)" in inlined
    assert "figures/curves.png" not in inlined and "](figures/none.png)" in inlined


@pytest.mark.slow(seconds=20)  # DVC's status only, no stage runs
def test_plan_comes_from_dvc(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    assert stage_order(project) == PIPELINE
    plan = plan_stages(project)
    assert plan.stale == PIPELINE  # nothing has run: DVC reports every stage
    assert "ingest" in plan.reasons and plan.reasons["ingest"] != ""
    assert plan_stages(project, ["evaluate", "train"]).order == ["train", "evaluate"]


def _runs(flow_run_id: Any, expected: int) -> list[tuple[str, str, str, int]]:
    """(task run name, state type, state name, run count) of one flow run's task runs.

    Task-run states reach the server as events, recorded asynchronously: wait (bounded) until
    ``expected`` task runs are there in a final state.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[tuple[str, str, str, int]]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return [(r.name, r.state.type.value, r.state.name, r.run_count)
                for r in runs if r.state]

    deadline = time.monotonic() + 180
    while True:
        runs = asyncio.run(read())
        final = [r for r in runs if r[1] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}]
        if len(final) >= expected or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def _artifacts() -> dict[str, str]:
    """Key -> data of every keyed artifact on the server."""
    from prefect.client.orchestration import get_client

    async def read() -> dict[str, str]:
        async with get_client() as client:
            return {a.key: str(a.data) for a in await client.read_artifacts() if a.key}

    return asyncio.run(read())


def _artifact_keys() -> set[str]:
    return set(_artifacts())


def _plan(flow_run_id: Any) -> dict[str, str]:
    """Stage -> action (``ran``/``cached``) in one flow run's ``mtl-stage-plan`` artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["mtl-stage-plan"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    (artifact,) = asyncio.run(read())
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return {row["stage"]: row["action"] for row in rows}


def _latest_flow_run() -> Any:
    """The flow run that started last on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> Any:
        async with get_client() as client:
            (run,) = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        return run

    return asyncio.run(read())


def _cli_env(api_url: str) -> dict[str, str]:
    env = dict(os.environ, PREFECT_API_URL=api_url)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(args: list[str], api_url: str) -> str:
    """``python -m flows.pipeline ARGS`` in a fresh process against the test's server."""
    out = subprocess.run([sys.executable, "-m", "flows.pipeline", *args], cwd=REPO_ROOT,
                         env=_cli_env(api_url), capture_output=True, text=True, timeout=1200,
                         check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"flows.pipeline {args} failed:\n{text[-4000:]}"
    return text


def _cli_releasing_lock(args: list[str], api_url: str, holder: subprocess.Popen[str]) -> str:
    """:func:`_cli` while ``holder`` holds DVC's lock; released once the flow's `dvc status`
    task has failed on it (Prefect logs its retry), so the retry finds the lock free."""
    cli = subprocess.Popen([sys.executable, "-m", "flows.pipeline", *args], cwd=REPO_ROOT,
                           env=_cli_env(api_url), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert cli.stdout is not None and holder.stdin is not None
    try:
        for line in cli.stdout:
            lines.append(line)
            if FIRST_RETRY in line and not holder.stdin.closed:
                holder.stdin.close()  # the holder unlocks and exits
        code = cli.wait(timeout=1200)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    text = "".join(lines)
    assert code == 0, f"flows.pipeline {args} failed:\n{text[-4000:]}"
    assert holder.stdin.closed, f"the flow's dvc status never failed on the lock:\n{text[-4000:]}"
    return text


@pytest.mark.slow(seconds=320)
@pytest.mark.timeout(3600)  # four flow runs and a temporary server on a loaded machine
def test_flow_runs_stale_stages_on_a_real_server(tmp_path: Path, prefect_server: str) -> None:
    from flows.pipeline import mtl_pipeline

    project = make_project(tmp_path / "proj", SMALL)
    state = mtl_pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state
    outputs = state.result()
    assert list(outputs) == PIPELINE
    assert "Running stage 'evaluate'" in outputs["evaluate"]
    runs = _runs(state.state_details.flow_run_id, 1 + len(PIPELINE))
    repro = {name: (kind, sname) for name, kind, sname, _ in runs if name.startswith("dvc repro")}
    assert repro == {f"dvc repro {s}": ("COMPLETED", "Completed") for s in PIPELINE}
    assert {"mtl-stage-plan", "mtl-eval-metrics", "mtl-report"} <= _artifact_keys()
    assert (project / "metrics" / "eval.json").is_file()
    # The report artifact shows the report's figures inline (the PNGs next to reports/report.md).
    report = _artifacts()["mtl-report"]
    assert "](figures/" in (project / "reports" / "report.md").read_text()
    assert "data:image/png;base64," in report and "](figures/" not in report

    assert _plan(state.state_details.flow_run_id) == {s: "ran" for s in PIPELINE}

    # Second run: DVC finds everything cached; no stage runs, no task run but DVC's check;
    # the run's plan artifact marks every stage cached.
    state = mtl_pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state
    assert state.result() == {s: "" for s in PIPELINE}
    runs = _runs(state.state_details.flow_run_id, 1)
    assert [name for name, *_ in runs] == ["dvc status"]
    assert _plan(state.state_details.flow_run_id) == {s: "cached" for s in PIPELINE}

    # The command line: DVC's check runs in a child process while Prefect imports, and the
    # flow run receives its plan as a parameter instead of checking again in a task.
    text = _cli(["--project-dir", str(project)], prefect_server)
    assert "DVC checked the stages just before this run" in text
    assert "Task run" not in text  # the console log shows every task run's final state
    run = _latest_flow_run()
    assert run.state.is_completed(), run.state
    assert run.parameters["dvc_plan"] == {"order": PIPELINE, "reasons": {}}
    assert _plan(run.id) == {s: "cached" for s in PIPELINE}

    # A multi-task train.* change: train is stale, evaluate is downstream of it; the rest
    # (the single-task baselines included) is cached.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["weighting"] = "uncertainty"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = mtl_pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state
    outputs = state.result()
    assert "Running stage 'train'" in outputs["train"]
    assert "Running stage 'evaluate'" in outputs["evaluate"]
    # Only the two stale stages started DVC (a cached stage has no output and no task run):
    # wait for their task runs and `dvc status`, not for one per stage (which never come:
    # waiting for them only ran out _runs' 180 s deadline).
    assert {s for s, out in outputs.items() if out} == {"train", "evaluate"}
    runs = _runs(state.state_details.flow_run_id, 3)
    assert sorted(n for n, *_ in runs if n.startswith("dvc repro")) == [
        "dvc repro evaluate", "dvc repro train"]
    assert _plan(state.state_details.flow_run_id) == {
        s: "ran" if s in ("train", "evaluate") else "cached" for s in PIPELINE}

    # Another DVC process holds the repository lock: the command line's child process fails
    # on it, so the flow checks in its `dvc status` task, which is retried, then runs.
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(project)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        text = _cli_releasing_lock(["select", "--force", "--project-dir", str(project)],
                                   prefect_server, holder)
    finally:
        if holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=300)
    run = _latest_flow_run()
    assert run.state.is_completed(), run.state
    assert run.parameters["dvc_plan"] is None
    runs = _runs(run.id, 2)
    counts = {name: count for name, _, _, count in runs}
    assert counts["dvc status"] >= 2, counts  # failed on the lock, retried, succeeded
    assert sorted(counts) == ["dvc repro select", "dvc status"]
    assert "Running stage 'select'" in text
