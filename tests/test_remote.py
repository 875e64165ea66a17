"""A DVC remote carries data and models between machines (issue 11, "Past one machine").

A tiny project runs its first stages (`dvc repro select`), pushes to a local-directory remote
(the README's `dvc remote add -d`), and a fresh `git clone` elsewhere gets the very same bytes
back with `dvc pull --allow-missing`, with `dvc status` clean: what a second machine does.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, run_ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # real dvc repro: minutes on 2 cores

TINY = {"ingest": {"n_train": 200, "n_val": 40, "n_test": 40}}


def _dvc(args: list[str], cwd: Path) -> str:
    return run_ok([sys.executable, "-m", "dvc", *args], cwd)


def _locked_outputs(project: Path) -> list[str]:
    """Every output path dvc.lock records (files and directories)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sorted(o["path"] for stage in lock["stages"].values() for o in stage.get("outs", []))


def _digests(root: Path, rel_paths: list[str]) -> dict[str, str]:
    """sha256 of every file under the given outputs, keyed by path relative to ``root``."""
    out: dict[str, str] = {}
    for rel in rel_paths:
        path = root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_push_then_pull_in_a_clone_gives_identical_outputs(tmp_path: Path) -> None:
    project = make_project(tmp_path / "machine-a", TINY)
    _dvc(["repro", "select"], project)
    outputs = _locked_outputs(project)
    assert {"data/raw/multimnist", "data/clean/manifest.parquet"} <= set(outputs), outputs
    before = _digests(project, outputs)
    assert len(before) > 10, before  # the images, the manifest, the selected splits...

    remote = tmp_path / "remote"
    _dvc(["remote", "add", "-d", "store", str(remote)], project)
    run_ok(["git", "add", "-A"], project)
    run_ok(["git", "commit", "-q", "-m", "pipeline up to select, DVC remote"], project)
    pushed = _dvc(["push"], project)
    assert "pushed" in pushed, pushed
    assert any(p.is_file() for p in remote.rglob("*")), "nothing reached the remote"

    clone = tmp_path / "machine-b"
    run_ok(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not any((clone / rel).exists() for rel in outputs), "outputs came through git"
    # Only the stages up to select ran: dvc.lock has no hashes for the later stages' outputs,
    # so a plain `dvc pull` fails on them; --allow-missing pulls what the lock records.
    _dvc(["pull", "--allow-missing"], clone)

    assert _digests(clone, outputs) == before
    # Clean up to select (the later stages never ran, so they are stale everywhere).
    assert json.loads(_dvc(["status", "--with-deps", "select", "--json"], clone)) == {}
    assert json.loads(_dvc(["status", "--cloud", "--with-deps", "select", "--json"], clone)) \
        == {}
