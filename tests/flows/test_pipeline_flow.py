"""The Prefect flow against a real (temporary) Prefect server, driving real DVC."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from flows.pipeline import parse_dot, stage_order, topological
from tests.conftest import make_project

LOCK_HOLDER = """
import sys, time
from dvc.repo import Repo
repo = Repo(sys.argv[1])
repo.lock.lock()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
repo.lock.unlock()
"""

DOT = """strict digraph {
"ingest";
"clean";
"train";
"ingest" -> "clean";
"clean" -> "train";
}
"""


def test_parse_and_order_dvc_dot() -> None:
    nodes, edges = parse_dot(DOT)
    assert nodes == ["ingest", "clean", "train"]
    assert topological(list(reversed(nodes)), edges) == ["ingest", "clean", "train"]


def test_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological(["a", "b"], [("a", "b"), ("b", "a")])


@pytest.mark.slow
def test_stage_order_comes_from_dvc(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    assert stage_order(project) == ["ingest", "clean", "select", "augment", "train", "evaluate"]
    assert stage_order(project, ["evaluate", "train"]) == ["train", "evaluate"]
    with pytest.raises(ValueError, match="unknown stage"):
        stage_order(project, ["nope"])


@pytest.mark.slow
def test_flow_runs_every_stage_on_a_real_server(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import mtl_pipeline

    project = make_project(tmp_path / "proj", {"train": {"epochs": 1, "batch_size": 64}})
    with prefect_test_harness(server_startup_timeout=120):
        state = mtl_pipeline(project_dir=str(project), return_state=True)
        assert state.is_completed(), state
        outputs = state.result()
        assert list(outputs) == ["ingest", "clean", "select", "augment", "train", "evaluate"]
        assert "Running stage 'evaluate'" in outputs["evaluate"]

        async def inspect() -> tuple[list[str], list[str]]:
            async with get_client() as client:
                runs = await client.read_task_runs()
                artifacts = await client.read_artifacts()
            return [r.state.type.value for r in runs if r.state], [a.key for a in artifacts]

        states, keys = asyncio.run(inspect())
        assert len(states) == 6 and set(states) == {"COMPLETED"}
        assert {"mtl-eval-metrics", "mtl-report"} <= set(keys)

        # Second run: DVC finds everything cached, every task still completes.
        again = mtl_pipeline(project_dir=str(project))
        assert all("Running stage" not in out for out in again.values())

        # Another DVC process holds the repository lock: the stage is retried, then runs.
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(project), "7"], stdout=subprocess.PIPE,
            text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        state = mtl_pipeline(stages=["select"], force=True, project_dir=str(project),
                             return_state=True)
        holder.wait()
        assert state.is_completed(), state

        async def select_runs() -> list[int]:
            async with get_client() as client:
                runs = await client.read_task_runs()
            return [r.run_count for r in runs if r.name == "dvc repro select"]

        assert max(asyncio.run(select_runs())) >= 2  # failed on the lock, retried, succeeded
    assert (project / "metrics" / "eval.json").is_file()
