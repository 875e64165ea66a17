"""prefect.yaml records the project root at deploy time (issue 7).

A real server, the project's own prefect.yaml deployed with `prefect deploy`, and a real
`prefect worker` started in another directory without PWD (as systemd starts it): the run must
execute `dvc repro` in the project root.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # server, CLI, worker: all slow

DVC_YAML = """stages:
  hello:
    cmd: echo ran > out.txt
    outs:
      - out.txt
"""


def _cli_env(api_url: str) -> dict[str, str]:
    """A worker-like environment: the venv on PATH, no PWD, no PYTHONPATH, this server."""
    env = {k: v for k, v in os.environ.items() if k not in {"PWD", "PYTHONPATH", "OLDPWD"}}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PREFECT_API_URL"] = api_url
    return env


def _prefect(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300,
             ) -> str:
    out = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{text[-4000:]}"
    return text


def test_worker_elsewhere_runs_dvc_in_the_recorded_project_root(
        tmp_path: Path, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client

    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    for name in ("__init__.py", "pipeline.py"):
        shutil.copy(REPO_ROOT / "flows" / name, project / "flows" / name)
    shutil.copy(REPO_ROOT / "prefect.yaml", project / "prefect.yaml")
    (project / "dvc.yaml").write_text(DVC_YAML)
    run_ok([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _cli_env(prefect_server)

    _prefect(["work-pool", "create", "mtl-process", "--type", "process"], elsewhere, env)
    _prefect(["--no-prompt", "deploy", "--all"], project, env)
    started = _prefect(["deployment", "run", "mtl-pipeline/nightly-retrain"], elsewhere, env)
    assert "Created flow run" in started, started

    async def deployment_and_runs() -> tuple[dict, list]:  # type: ignore[type-arg]
        async with get_client() as client:
            dep = await client.read_deployment_by_name("mtl-pipeline/nightly-retrain")
            runs = await client.read_flow_runs()
        return {"pull": dep.pull_steps, "params": dep.parameters}, runs

    recorded, _ = asyncio.run(deployment_and_runs())
    root = str(project.resolve())
    assert recorded["params"]["project_dir"] == root
    assert recorded["pull"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": root}}]

    # The worker polls once, runs the due flow run and exits.
    worker = _prefect(["worker", "start", "--pool", "mtl-process", "--run-once"], elsewhere,
                      env, timeout=600)
    _, runs = asyncio.run(deployment_and_runs())
    manual = [r for r in runs if r.state and not r.state.is_scheduled()]
    assert manual and all(r.state.is_completed() for r in manual), (
        [(r.name, r.state) for r in manual], worker[-3000:])
    assert (project / "out.txt").read_text().strip() == "ran"
    assert not (elsewhere / "out.txt").exists() and not (elsewhere / ".dvc").exists()
