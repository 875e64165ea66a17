"""The Kubernetes work pool for GPU machines (issue 11): deploy/k8s-gpu-base-job-template.json.

No Kubernetes cluster here: the template is checked with Prefect's own code (the server's
base-job-template validator, the templating a worker applies to build the Job manifest, the
variables' JSON schema) and, in the slow test, created as a work pool on a real Prefect server
with the CLI command the README gives, with deploy/prefect-gpu.yaml deployed to it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / "deploy" / "k8s-gpu-base-job-template.json"
GPU_PREFECT_FILE = REPO_ROOT / "deploy" / "prefect-gpu.yaml"
POOL = "mtl-gpu"


def _template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


def _prefect_default_kubernetes_template() -> dict[str, Any]:
    """The default Kubernetes base job template that the installed Prefect ships (its server
    serves it when prefect-kubernetes is not installed)."""
    import prefect.server.api.collections as collections

    path = (Path(collections.__file__).parent / "collections_data" / "views"
            / "aggregate-worker-metadata.json")
    meta = json.loads(path.read_text())
    return meta["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]


def _render(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """What a worker does with a flow run's job variables: variable defaults, overridden by
    the deployment's values, substituted into job_configuration (Prefect's templating)."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if v.get("default") is not None}
    values.update(job_variables)
    return apply_values(copy.deepcopy(template["job_configuration"]), values)


def _container(job_configuration: dict[str, Any]) -> dict[str, Any]:
    containers = job_configuration["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def _gpu_job_variables() -> dict[str, Any]:
    deployments = yaml.safe_load(GPU_PREFECT_FILE.read_text())["deployments"]
    (dep,) = deployments
    return dep["work_pool"]["job_variables"]


def test_template_passes_prefect_server_validation() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    template = _template()
    assert set(template) == {"job_configuration", "variables"}
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    broken = _template()
    del broken["variables"]["properties"]["gpu_count"]
    with pytest.raises(ValueError, match="gpu_count"):  # the check itself can fail
        validate_base_job_template(broken)


def test_template_keeps_everything_of_prefects_default() -> None:
    default, ours = _prefect_default_kubernetes_template(), _template()
    assert set(default["job_configuration"]) <= set(ours["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    for key in ("apiVersion", "kind"):
        assert ours["job_configuration"]["job_manifest"][key] == \
            default["job_configuration"]["job_manifest"][key]
    default_c, our_c = (_container(t["job_configuration"]) for t in (default, ours))
    for key, value in default_c.items():
        if key == "resources":
            for kind, quantities in value.items():
                assert quantities.items() <= our_c["resources"][kind].items(), kind
        else:
            assert our_c[key] == value, key


def test_rendered_job_requests_gpus_in_container_limits() -> None:
    template = _template()
    default_gpus = template["variables"]["properties"]["gpu_count"]["default"]
    assert default_gpus == 1
    limits = _container(_render(template, {}))["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1  # an int, as Kubernetes quantities accept

    dep_vars = _gpu_job_variables()
    rendered = _render(template, {**dep_vars, "gpu_count": 4})
    container = _container(rendered)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == dep_vars["image"]
    spec = rendered["job_manifest"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]
    # DataLoader workers share batches through /dev/shm: a memory-backed volume, not 64 MB.
    shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm and {"name": shm[0]["name"], "emptyDir": {"medium": "Memory"}} in spec["volumes"]


def test_gpu_deployment_targets_the_pool_with_valid_job_variables() -> None:
    from prefect.utilities.schema_tools.validation import validate

    config = yaml.safe_load(GPU_PREFECT_FILE.read_text())
    (dep,) = config["deployments"]
    assert dep["work_pool"]["name"] == POOL
    assert (REPO_ROOT / dep["entrypoint"].split(":")[0]).is_file()
    schema = _template()["variables"]
    validate(dep["work_pool"]["job_variables"], schema, raise_on_error=True)
    with pytest.raises(Exception, match="gpu_count"):  # the schema refuses zero GPUs
        validate({"gpu_count": 0}, schema, raise_on_error=True)
    # The project's own prefect.yaml (process pool, tests/flows/test_deployment.py) still loads
    # and does not need this pool.
    main = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    assert POOL not in {d["work_pool"]["name"] for d in main["deployments"]}


def _prefect(args: list[str], cwd: Path, api_url: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PREFECT_API_URL"] = api_url
    out = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{text[-4000:]}"
    return text


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pool_and_deployment_on_a_real_server(tmp_path: Path, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client

    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "deploy").mkdir()
    for name in ("__init__.py", "pipeline.py"):
        (project / "flows" / name).write_bytes((REPO_ROOT / "flows" / name).read_bytes())
    for path in (TEMPLATE, GPU_PREFECT_FILE):
        (project / "deploy" / path.name).write_bytes(path.read_bytes())

    # The README's commands, from the project root.
    _prefect(["work-pool", "create", POOL, "--type", "kubernetes",
              "--base-job-template", "deploy/k8s-gpu-base-job-template.json"], project,
             prefect_server)
    _prefect(["--no-prompt", "deploy", "--prefect-file", "deploy/prefect-gpu.yaml", "--all"],
             project, prefect_server)

    async def read() -> tuple[Any, Any]:
        async with get_client() as client:
            pool = await client.read_work_pool(POOL)
            dep = await client.read_deployment_by_name("mtl-pipeline/gpu-retrain")
        return pool, dep

    pool, dep = asyncio.run(read())
    assert pool.type == "kubernetes"
    assert pool.base_job_template == _template()
    assert dep.work_pool_name == POOL
    assert dep.job_variables == _gpu_job_variables()
    assert dep.parameters["project_dir"] == "/opt/mtl"
