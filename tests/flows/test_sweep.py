"""The sweep flow against a real (temporary) Prefect server, driving real DVC experiments."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_project, run_ok

pytestmark = pytest.mark.slow(seconds=450)  # its share of `make test` (tests/conftest.py)

DVC = [sys.executable, "-m", "dvc"]
# Small enough for two cores: 1 epoch on 600 training images.
TINY = {"ingest": {"n_train": 300, "n_val": 60, "n_test": 100},
        "train": {"epochs": 1, "batch_size": 64},
        "sweep": {"promote_margin": 2.0}}  # a val score is at most 1: impossible to beat by 2
WATCHED = ("params.yaml", "dvc.lock", "models/model.pt", "metrics/eval.json")


def _hashes(project: Path) -> dict[str, str]:
    return {p: hashlib.sha256((project / p).read_bytes()).hexdigest() for p in WATCHED}


def _exp_show(project: Path) -> dict[str, dict[str, Any]]:
    text = run_ok([*DVC, "exp", "show", "--json"], project)
    shown, _ = json.JSONDecoder().raw_decode(text[text.index("["):])
    return {e["name"]: e["revs"][0]["data"] for b in shown for e in b.get("experiments") or []}


async def _task_runs() -> list[Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return list(await client.read_task_runs())


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


# Several minutes on two idle cores; far more on a loaded machine (the default limit is 900 s).
@pytest.mark.timeout(2400)
def test_sweep_runs_parallel_dvc_experiments_and_promotes_only_past_the_margin(
        tmp_path: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import TRAIN_TAG, run_sweep

    project = make_project(tmp_path / "proj", TINY)
    run_ok([*DVC, "repro"], project)
    run_ok(["git", "add", "-A"], project)
    run_ok(["git", "commit", "-qm", "trained workspace"], project)
    before = _hashes(project)

    with prefect_test_harness(server_startup_timeout=300):
        # 2 methods × 2 seeds, two at a time.
        result = run_sweep(["train.weighting=equal,uncertainty", "train.seed=0,1"], jobs=2,
                           name="t", project_dir=str(project))
        runs = [r for r in asyncio.run(_task_runs()) if r.name.startswith("dvc exp run t-")]
        hashes_after_sweep = _hashes(project)

        # --promote with an impossible margin, and a method that does not exist: its run fails
        # (not retried) while the other finishes (restored from DVC's run cache); nothing is
        # applied and the report says why.
        bad = run_sweep(["train.weighting=equal,nosuch", "train.seed=0"], jobs=2, promote=True,
                        name="p", project_dir=str(project))
        bad_runs = [r for r in asyncio.run(_task_runs()) if r.name.startswith("dvc exp run p-")]
        bad_md = (project / "reports/sweep.md").read_text()
        hashes_after_promote = _hashes(project)

        # A margin any run beats: the best run by validation score is applied to the workspace.
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["sweep"]["promote_margin"] = -1.0
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        good = run_sweep(["train.weighting=uncertainty", "train.seed=1"], jobs=1, promote=True,
                         name="q", project_dir=str(project))

    # One entry per grid point, in grid order.
    entries = result["runs"]
    assert [e["params"] for e in entries] == [
        {"train.weighting": w, "train.seed": s} for w in ("equal", "uncertainty") for s in (0, 1)]
    assert [e["status"] for e in entries] == ["success"] * 4, entries
    assert result["promotion"] is None
    # `dvc exp show` lists every run with its metrics (git-tracked, not `!`), and the sweep's
    # numbers are the experiments' numbers.
    shown = _exp_show(project)
    for e in entries:
        data = shown[e["name"]]
        evaluation = data["metrics"]["metrics/eval.json"]["data"]
        assert e["test"]["left"]["accuracy"] == evaluation["left"]["accuracy"]
        assert e["delta_m"] == evaluation.get("delta_m")  # null until baselines exist
        assert data["params"]["params.yaml"]["data"]["train"]["weighting"] == \
            e["params"]["train.weighting"]
        assert 0.0 <= e["val_score"] <= 1.0 and e["images_per_second"] > 0
    # Prefect ran them two at a time, each tagged for the GPU concurrency limit.
    assert len(runs) == 4 and all(TRAIN_TAG in r.tags for r in runs)
    assert _max_overlap([(r.start_time.timestamp(), r.end_time.timestamp()) for r in runs]) == 2
    # Without --promote nothing in the workspace changed.
    assert hashes_after_sweep == before

    # The failing run is in the table with its error; it was tried once.
    assert [e["status"] for e in bad["runs"]] == ["success", "failed"]
    assert "unknown weighting 'nosuch'" in bad["runs"][1]["error"]
    assert bad["runs"][1]["name"] not in shown  # `dvc exp show` after all three sweeps
    failed = [r for r in bad_runs if r.state and r.state.is_failed()]
    assert len(bad_runs) == 2 and len(failed) == 1 and failed[0].run_count == 1
    assert "## Failed runs" in bad_md and "| nosuch | 0/1 |" in bad_md
    assert bad["promotion"]["promote"] is False and "nothing applied" in bad_md
    assert "promote_margin 2" in bad["promotion"]["reason"]
    assert hashes_after_promote == before

    run = good["runs"][0]
    assert good["promotion"]["promote"] is True and good["promotion"]["run"] == run["name"]
    applied = yaml.safe_load((project / "params.yaml").read_text())["train"]
    assert (applied["weighting"], applied["seed"]) == ("uncertainty", 1)
    import torch

    promoted = torch.load(project / "models/model.pt", weights_only=True)["val_score"]
    assert promoted == pytest.approx(run["val_score"])
    assert (project / "reports/sweep.png").read_bytes()[:4] == b"\x89PNG"
