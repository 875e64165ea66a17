"""Prefect flow that runs a grid of DVC experiments in parallel, collects them and can promote one.

``python -m flows.sweep -S 'train.weighting=equal,uncertainty,pcgrad,famo' -S 'train.seed=0,1,2'
[-S train.epochs=4] [--jobs N] [--promote] [--name NAME]``

- The grid uses ``dvc exp run``'s ``-S key=v1,v2`` syntax; every combination is one experiment,
  run as ``dvc exp run --temp -n <name> -S key=value ...`` in its own temporary copy of the
  repository, so the workspace, ``params.yaml`` and ``dvc.lock`` are left alone.
- At most ``--jobs`` experiments run at once (the flow's thread-pool task runner). Every
  experiment task carries the tag ``mtl-train``: ``prefect concurrency-limit create mtl-train 1``
  caps training runs across all flows on one server (one GPU).
- Before the grid, the stages that do not depend on ``train`` are reproduced once in the
  workspace (a no-op when they are up to date), so every experiment checks them out of the DVC
  cache instead of recomputing them.
- A task is retried only when DVC's repository lock was busy (another ``dvc`` process, often a
  sibling experiment being set up or saved); a failing experiment is never retried, it is
  recorded with its error and the other runs go on.
- Results: ``reports/sweep.json`` (one entry per run), ``reports/sweep.md`` and
  ``reports/sweep.png``, also published as Prefect artifacts; ``dvc exp show`` lists every run.
- ``--promote``: the best run by validation score is applied (``dvc exp apply``) only if it beats
  the workspace model's validation score by ``sweep.promote_margin`` (params.yaml).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from mtl.config import load_params
from mtl.sweep import (
    GridError,
    Promotion,
    RunRecord,
    dataset_dir_problems,
    expand_grid,
    parse_grid,
    plot_sweep,
    promotion_decision,
    record_from_exp,
    render_markdown,
    run_names,
    set_param_args,
    summarize,
)

__all__ = ["TRAIN_TAG", "DvcLockBusy", "ExperimentFailed", "check_dataset_dir", "exp_run_command",
           "mtl_sweep", "run_experiment", "run_sweep"]

#: Tag on every experiment task: a Prefect tag concurrency limit on it caps training runs.
TRAIN_TAG = "mtl-train"
LOCK_MESSAGES = ("unable to acquire lock", "lock is already held", "lockerror")


class DvcLockBusy(RuntimeError):
    """DVC could not take its repository lock: an infrastructure failure, retried."""


class ExperimentFailed(RuntimeError):
    """The experiment itself failed (bad params, NaN loss, ...): recorded, never retried."""


def _env() -> dict[str, str]:
    """Subprocess environment: this interpreter's bin folder first, so ``mtl``/``dvc`` resolve."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _dvc(args: Sequence[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                          text=True, env=_env(), check=False)


def _lock_busy(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only when DVC's lock was busy; an experiment's own failure is final."""
    return isinstance(state.result(raise_on_failure=False), DvcLockBusy)


def exp_run_command(name: str, overrides: dict[str, str], root: Path,
                    targets: Sequence[str] = ()) -> list[str]:
    """``python -m dvc exp run --temp -n <name> -S ... [targets]``: ``+key=value`` for a key
    that the project's ``params.yaml`` does not list (:func:`mtl.sweep.set_param_args`).

    ``targets``: the pipeline's final stages (``flows.pipeline.final_stages_of``). Without
    them DVC reproduces every stage, ``ingest`` too when the params point at a user dataset
    and nothing depends on it, and fails when params.yaml has no ``ingest`` section (as
    ``configs/fashion-product.yaml``); ``dvc repro`` and the pipeline flow leave it out.
    """
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    return [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name,
            *set_param_args(params, overrides), *targets]


@task(name="dvc-exp-run", cache_policy=NO_CACHE, tags=[TRAIN_TAG], retries=6,
      retry_delay_seconds=[2, 4, 8, 15, 30, 60], retry_condition_fn=_lock_busy,
      task_run_name="dvc exp run {name}")
def run_experiment(name: str, overrides: dict[str, str], project_dir: str,
                   targets: Sequence[str] = ()) -> float:
    """``dvc exp run --temp -n <name> -S k=v ... [targets]``; returns its wall time in seconds.

    Output is streamed into the Prefect log. Raises :class:`DvcLockBusy` (retried) when DVC's
    lock was held, :class:`ExperimentFailed` (final) for any other non-zero exit.
    """
    logger = get_run_logger()
    cmd = exp_run_command(name, overrides, Path(project_dir), targets)
    logger.info("running %s", " ".join(cmd[1:]))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=_env())
    assert proc.stdout is not None
    lines: list[str] = []
    # Progress bars redraw with "\r": only the last state of each line reaches the log.
    for raw in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="\n"):
        line = raw.rstrip("\n").split("\r")[-1]
        if line.strip():
            lines.append(line)
            logger.info("[%s] %s", name, line)
    code = proc.wait()
    if code != 0:
        tail = "\n".join(lines[-30:])
        if any(m in tail.lower() for m in LOCK_MESSAGES):
            raise DvcLockBusy(f"{name}: DVC lock busy:\n{tail}")
        raise ExperimentFailed(f"{name} failed (exit {code}):\n{tail}")
    return time.perf_counter() - start


#: Stages ``train`` depends on that are models, not data: ``teach`` (``train.distill``) and the
#: single-task baselines it reads depend on the swept ``train.*`` keys, so they run per
#: experiment (as before ``teach`` existed), not once in the workspace.
MODEL_STAGES = ("teach", "baseline@")


def _upstream_stages(root: Path, stage: str = "train") -> list[str]:
    """The data stages ``train`` depends on (ingest ... augment), not the model stages
    (:data:`MODEL_STAGES`: ``teach`` and the baselines behind it), which run per experiment."""
    from flows.pipeline import upstream_of

    return [s for s in upstream_of(root, stage)
            if not any(s == m or (m.endswith("@") and s.startswith(m)) for m in MODEL_STAGES)]


def _final_stages(root: Path) -> list[str]:
    """The stages each experiment reproduces, with their ancestors (not an unlinked ``ingest``)."""
    from flows.pipeline import final_stages_of

    return final_stages_of(root)


@task(name="dvc-repro-upstream", cache_policy=NO_CACHE, retries=5,
      retry_delay_seconds=[2, 5, 10, 20, 30], retry_condition_fn=_lock_busy)
def reproduce_upstream(project_dir: str) -> list[str]:
    """``dvc repro`` of every stage independent of ``train``, once, before the experiments.

    A no-op when they are up to date; otherwise they run here once instead of in every
    experiment's temporary copy.
    """
    root = Path(project_dir)
    stages = _upstream_stages(root)
    if stages:
        out = _dvc(["repro", *stages], root)
        text = out.stdout + out.stderr
        get_run_logger().info("dvc repro %s:\n%s", " ".join(stages), text[-3000:])
        if out.returncode != 0:
            if any(m in text.lower() for m in LOCK_MESSAGES):
                raise DvcLockBusy(text[-2000:])
            raise RuntimeError(f"`dvc repro {' '.join(stages)}` failed:\n{text[-3000:]}")
    return stages


def _experiments(root: Path) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``: experiment name → its newest revision's ``data``."""
    out = _dvc(["exp", "show", "--json"], root)
    if out.returncode != 0:
        raise RuntimeError(f"`dvc exp show --json` failed: {out.stderr.strip()}")
    found: dict[str, dict[str, Any]] = {}
    for baseline in json.loads(out.stdout):
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or []
            if exp.get("name") and revs and revs[0].get("data"):
                found[exp["name"]] = revs[0]["data"]
    return found


def _checkpoint_score(root: Path, rev: str | None) -> float | None:
    """The trained model's best validation score (``val_score`` in ``models/model.pt``).

    ``rev=None`` reads the workspace's file; otherwise the experiment's, from the DVC cache.
    """
    import torch

    path = root / "models" / "model.pt"
    try:
        if rev is None:
            if not path.is_file():
                return None
            blob = path.read_bytes()
        else:
            import dvc.api

            with dvc.api.open("models/model.pt", repo=str(root), rev=rev, mode="rb") as f:
                blob = f.read()
    except FileNotFoundError:
        return None
    ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    score = ckpt.get("val_score")
    return float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None


def _promote_margin(root: Path) -> float:
    """``sweep.promote_margin`` from params.yaml (validated; the default when absent)."""
    return float(load_params(root / "params.yaml").sweep.promote_margin)


def _publish(markdown: str, picture: Path | None, records: Sequence[RunRecord]) -> None:
    """The report as a markdown artifact (picture inlined as base64) and the runs as a table."""
    text = markdown
    if picture is not None:
        data = base64.b64encode(picture.read_bytes()).decode()
        text = text.replace(f"![sweep]({picture.name})",
                            f"![sweep](data:image/png;base64,{data})")
    create_markdown_artifact(text, key="mtl-sweep", description="reports/sweep.md")
    rows = [{"run": r.name, "status": r.status, "val_score": r.val_score, "delta_m": r.delta_m,
             **{f"param {k}": str(v) for k, v in r.params.items()},
             **{f"{t} {m}": v for t, ms in r.test.items() for m, v in ms.items()},
             "error": ((r.error or "").strip().splitlines() or [""])[-1]} for r in records]
    create_table_artifact(rows, key="mtl-sweep-runs", description="reports/sweep.json runs")


def check_dataset_dir(root: Path, axes: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Refuse, before any experiment starts, a ``dataset.dir`` that the experiments' temporary
    copies cannot reach (a relative path out of the project, e.g. ``configs/fashion-product.yaml``'s
    ``../shared/...``): raises :class:`GridError` saying which absolute path to set."""
    problems = dataset_dir_problems(root, load_params(root / "params.yaml").dataset.dir, axes)
    if problems:
        raise GridError("; ".join(problems))


@flow(name="mtl-sweep", log_prints=True)
def mtl_sweep(sets: list[str], promote: bool = False, name: str | None = None,
              project_dir: str = ".") -> dict[str, Any]:
    """Run the ``-S`` grid as DVC experiments, write ``reports/sweep.*``, optionally promote.

    Concurrency is the task runner's (use :func:`run_sweep`, which sets it from ``jobs``).
    """
    root = Path(project_dir).resolve()
    axes = parse_grid(sets)
    check_dataset_dir(root, axes)  # before anything runs
    logger = get_run_logger()
    points = expand_grid(axes)
    swept = [k for k, _ in axes]
    prefix = name or "sweep-" + datetime.now(timezone.utc).strftime("%m%d-%H%M%S")
    names = run_names(prefix, axes, points)
    logger.info("%d experiment(s): %s", len(points), names)
    reproduce_upstream(str(root))
    targets = _final_stages(root)

    futures = [run_experiment.submit(n, p, str(root), targets)
               for n, p in zip(names, points, strict=True)]
    wait(futures)
    shown = _experiments(root)
    records: list[RunRecord] = []
    for n, p, fut in zip(names, points, futures, strict=True):
        state = fut.state
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            records.append(RunRecord(name=n, params={k: yaml.safe_load(v) for k, v in p.items()},
                                     status="failed", error=str(exc)))
            continue
        data = shown.get(n)
        if data is None:
            records.append(RunRecord(name=n, params={k: yaml.safe_load(v) for k, v in p.items()},
                                     status="failed",
                                     error="ran, but `dvc exp show` does not list it"))
            continue
        rec = record_from_exp(n, p, data, _checkpoint_score(root, data.get("rev")))
        rec.wall_time_s = fut.result()
        records.append(rec)

    promotion: Promotion | None = None
    if promote:
        current = _checkpoint_score(root, None)
        promotion = promotion_decision(records, current, _promote_margin(root))
        if promotion.promote and promotion.run:
            out = _dvc(["exp", "apply", promotion.run], root)
            if out.returncode != 0:
                promotion = Promotion(False, promotion.run, f"`dvc exp apply {promotion.run}` "
                                      f"failed: {(out.stderr or out.stdout).strip()[-500:]}")
        logger.info("promotion: %s", promotion.reason)

    summaries = summarize(records, swept)
    reports = root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    picture = plot_sweep(records, summaries, swept, reports / "sweep.png")
    markdown = render_markdown(records, summaries, swept,
                               picture.name if picture else None, promotion)
    (reports / "sweep.md").write_text(markdown)
    result = {"swept": swept, "runs": [asdict(r) for r in records],
              "promotion": asdict(promotion) if promotion else None}
    (reports / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    _publish(markdown, picture, records)
    if not any(r.ok for r in records):
        raise RuntimeError(f"every run of the sweep failed; see {reports / 'sweep.md'}")
    return result


def run_sweep(sets: Sequence[str], jobs: int = 1, promote: bool = False,
              name: str | None = None, project_dir: str = ".") -> dict[str, Any]:
    """:func:`mtl_sweep` with at most ``jobs`` experiments running at once."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, found {jobs}")
    runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=jobs)
    return mtl_sweep.with_options(task_runner=runner)(  # type: ignore[arg-type]
        sets=list(sets), promote=promote, name=name, project_dir=project_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a grid of DVC experiments in parallel through Prefect.")
    parser.add_argument("-S", "--set-param", dest="sets", action="append", default=[],
                        metavar="KEY=V1,V2", help="a grid axis, as in `dvc exp run -S`")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="experiments run at once")
    parser.add_argument("--promote", action="store_true",
                        help="apply the best run by validation score if it beats the workspace "
                             "model by sweep.promote_margin")
    parser.add_argument("--name", default=None, help="experiment name prefix")
    parser.add_argument("--project-dir", default=".", help="DVC project root")
    args = parser.parse_args(argv)
    if not args.sets:
        parser.error("give at least one -S key=v1,v2")
    result = run_sweep(args.sets, args.jobs, args.promote, args.name, args.project_dir)
    root = Path(args.project_dir)
    ok = sum(r["status"] == "success" for r in result["runs"])
    print(f"\n{ok}/{len(result['runs'])} run(s) succeeded.\n"
          f"  table:   {root / 'reports/sweep.md'} (picture reports/sweep.png)\n"
          f"  runs:    {root / 'reports/sweep.json'}\n"
          "  compare: dvc exp show")
    if result["promotion"]:
        print(f"  promote: {result['promotion']['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
