"""Faults through real DVC (issue 7): `kill -9` mid-stage, and two `dvc repro` at once.

One uninterrupted run is the reference; it is reproduced stage by stage and the project is
copied after `ingest`, `select` and `train` (git, DVC cache and run cache included), so each
fault test starts from the state just before the stage it interrupts and reruns only what
follows. A kill test's copy also gets the reference's run-cache entries of the stages
*downstream* of the one it kills (never of that stage or those before it): the killed stage
really reruns, and the stages after it are restored from DVC's run cache only if its new
outputs are byte for byte the reference's (their run-cache key hashes those outputs), instead
of recomputing what no fault touched. Every output the pipeline declares is compared file by
file with the reference; only the measured throughput (images per second) may differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import make_project, run_ok

# Four pipelines' worth of stages; a loaded 2-core machine needs far more than the default.
# seconds: each test's share, the module's reference run included (tests/conftest.py).
pytestmark = [pytest.mark.slow(seconds=100), pytest.mark.timeout(3600)]

DVC = [sys.executable, "-m", "dvc"]
STAGES = ["ingest", "clean", "select", "augment", "train", "evaluate"]
# The `mtl <command>` of every stage in dependency order: each depends on the one before it
# (the baselines on augment, teach on the baselines, train on teach, evaluate on train), so a
# stage's downstream is what follows it.
COMMANDS = ["ingest", "clean", "select", "augment", "baseline", "teach", "train", "evaluate"]
# Tiny, but clean still decodes in a process pool (>= 256 images) and augment writes several
# shards, so both are interrupted while they work.
FAULT_PARAMS = {
    "ingest": {"n_train": 300, "n_val": 60, "n_test": 100},
    "augment": {"copies": 1, "shard_size": 32},
    "train": {"epochs": 1, "batch_size": 64},
}
TIMING_KEYS = {"images_per_second"}  # measured, not computed: differs between any two runs


def _declared_outputs(project: Path) -> list[Path]:
    """Every outs / metrics / plots path of every stage in the project's dvc.yaml."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    paths: list[Path] = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                rel = entry if isinstance(entry, str) else next(iter(entry))
                if "${" in rel:  # a matrix stage's templated output: every instance's file
                    paths += sorted(project.glob(re.sub(r"\$\{[^}]*\}", "*", rel)))
                else:
                    paths.append(project / rel)
    return paths


def _drop_timing(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


def output_hashes(project: Path) -> dict[str, str]:
    """sha256 of every file under every declared output (timing figures left out)."""
    hashes: dict[str, str] = {}
    for out in _declared_outputs(project):
        files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
        for path in files:
            rel = str(path.relative_to(project))
            if any(key in path.name for key in TIMING_KEYS):
                continue
            data = path.read_bytes()
            if path.name == "metrics.json" and "dvclive" in rel:
                data = json.dumps(_drop_timing(json.loads(data)), sort_keys=True).encode()
            hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def _locked_stages(project: Path) -> set[str]:
    lock = project / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.is_file() else set()


def _assert_up_to_date(project: Path) -> None:
    status = run_ok([*DVC, "status", "--json"], project).strip().splitlines()[-1]
    assert json.loads(status) == {}, status


class Snapshots:
    """The reference run's outputs and copies of the project part-way through it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        project = make_project(root / "reference", FAULT_PARAMS)
        run_ok(["git", "add", "-A"], project)
        run_ok(["git", "commit", "-q", "-m", "project"], project)
        for upto in ("ingest", "select", "train"):
            run_ok([*DVC, "repro", upto], project)
            shutil.copytree(project, root / f"after-{upto}", symlinks=True)
        run_ok([*DVC, "repro"], project)
        _assert_up_to_date(project)
        self.hashes = output_hashes(project)
        assert any(k.startswith("data/augmented/train/") for k in self.hashes), self.hashes
        self.cache = project / ".dvc" / "cache"
        # run-cache entry (relative to the cache) -> the `mtl` command of its stage
        self.entries = {entry.relative_to(self.cache): _command(entry)
                        for entry in (self.cache / "runs").rglob("*") if entry.is_file()}
        # DVC saves no run-cache entry for a stage with an uncached out that is neither a metric
        # nor a plot (evaluate's reports/report.md): evaluate reruns after every fault.
        assert set(self.entries.values()) == set(COMMANDS) - {"evaluate"}, self.entries

    def copy(self, upto: str, dest: Path, downstream_of: str | None = None) -> Path:
        """The project as it was after ``upto``; with ``downstream_of``, plus the reference's
        cached outputs and the run-cache entries of the stages after that one."""
        shutil.copytree(self.root / f"after-{upto}", dest, symlinks=True)
        if downstream_of is not None:
            after = COMMANDS[COMMANDS.index(downstream_of) + 1:]
            shutil.copytree(self.cache / "files", dest / ".dvc/cache/files", dirs_exist_ok=True)
            for entry, command in self.entries.items():
                if command in after:
                    (dest / ".dvc/cache" / entry).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.cache / entry, dest / ".dvc/cache" / entry)
        return dest


def _command(run_cache_entry: Path) -> str:
    """The `mtl` command (``clean``, ``baseline``, ...) a DVC run-cache entry ran."""
    return str(yaml.safe_load(run_cache_entry.read_text())["cmd"]).split()[1]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Snapshots:
    return Snapshots(tmp_path_factory.mktemp("faults"))


def _ran(output: str) -> list[str]:
    """The stages whose command `dvc repro` ran (not those restored from the run cache)."""
    return re.findall(r"Running stage '([^']+)'", output)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _stage_process(repro: subprocess.Popen[str], stage: str) -> psutil.Process | None:
    """The `mtl <stage>` process DVC started for the stage, if it runs now."""
    try:
        children = psutil.Process(repro.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmd = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if stage in cmd and any(Path(part).name == "mtl" for part in cmd):
            return child
    return None


def kill_mid_stage(project: Path, stage: str, working: Callable[[psutil.Process], bool],
                   timeout: float = 600) -> None:
    """Start `dvc repro`, `kill -9` DVC and the stage's processes while ``working`` holds."""
    repro = subprocess.Popen([*DVC, "repro"], cwd=project, env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # its own process group: kill them all
    lines: list[str] = []
    assert repro.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(repro.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline and repro.poll() is None:
            proc = _stage_process(repro, stage)
            try:
                if proc is not None and working(proc):
                    os.killpg(repro.pid, signal.SIGKILL)
                    killed = True
                    break
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
    finally:
        if repro.poll() is None and not killed:
            os.killpg(repro.pid, signal.SIGKILL)
        repro.wait()
        reader.join(timeout=10)
    assert killed, f"stage {stage} was never seen working:\n{''.join(lines)[-3000:]}"
    assert stage not in _locked_stages(project), "the stage finished before the kill"


def _has_pool(proc: psutil.Process) -> bool:
    """clean decodes in a process pool: its workers exist."""
    return len(proc.children(recursive=True)) >= 2


def _cpu_seconds(seconds: float) -> Callable[[psutil.Process], bool]:
    def working(proc: psutil.Process) -> bool:
        return proc.cpu_times().user >= seconds
    return working


def test_kill_9_in_clean_then_repro_equals_uninterrupted(snapshots: Snapshots,
                                                         tmp_path: Path) -> None:
    project = snapshots.copy("ingest", tmp_path / "proj", downstream_of="clean")
    kill_mid_stage(project, "clean", _has_pool)
    out = run_ok([*DVC, "repro"], project)
    # clean reruns; what follows is restored (evaluate has no run-cache entry and reruns), which
    # needs clean's new outputs to be the reference's
    assert _ran(out) == ["clean", "evaluate"], out
    _assert_up_to_date(project)
    assert output_hashes(project) == snapshots.hashes


def test_kill_9_in_augment_then_repro_equals_uninterrupted(snapshots: Snapshots,
                                                           tmp_path: Path) -> None:
    project = snapshots.copy("select", tmp_path / "proj", downstream_of="augment")
    shards = project / "data" / "augmented" / "train"

    def some_shards_written(proc: psutil.Process) -> bool:
        return shards.is_dir() and any(shards.glob("*.npy"))

    kill_mid_stage(project, "augment", some_shards_written)
    assert not (project / "data/augmented/labels.parquet").exists()  # partial output left
    out = run_ok([*DVC, "repro"], project)
    assert _ran(out) == ["augment", "evaluate"], out  # train and the baselines are restored
    _assert_up_to_date(project)
    assert output_hashes(project) == snapshots.hashes


def test_kill_9_in_evaluate_then_repro_equals_uninterrupted(snapshots: Snapshots,
                                                            tmp_path: Path) -> None:
    project = snapshots.copy("train", tmp_path / "proj")
    kill_mid_stage(project, "evaluate", _cpu_seconds(1.5))
    out = run_ok([*DVC, "repro"], project)
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    _assert_up_to_date(project)
    assert output_hashes(project) == snapshots.hashes


def test_two_repro_at_once_one_reports_the_lock(snapshots: Snapshots, tmp_path: Path) -> None:
    # augment runs (seconds: the other repro meets the lock), what follows is restored
    project = snapshots.copy("select", tmp_path / "proj", downstream_of="augment")
    procs = [subprocess.Popen([*DVC, "repro"], cwd=project, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outs
    for code, out in zip(codes, outs, strict=True):
        # the other one either waited for the lock and found nothing to do, or reported it
        assert code == 0 or "lock" in out.lower(), (code, out)
    assert sorted(s for out in outs for s in _ran(out)) == ["augment", "evaluate"], outs  # once
    _assert_up_to_date(project)
    assert output_hashes(project) == snapshots.hashes
