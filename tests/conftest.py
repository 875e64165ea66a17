"""Shared fixtures: tiny generated datasets (no network, seeded)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtl.config import CleanConfig, DatasetConfig, TaskConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = REPO_ROOT.parent / "shared" / "datasets" / "fashion-product"

# Two cores in CI: keep torch from oversubscribing them. Under pytest-xdist (`make test` runs
# one worker per core) the cores are shared between the workers, so each gets its share.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, (os.cpu_count() or 1) // _WORKERS))))
# Prefect's temporary API server creates and migrates a fresh SQLite database for each
# prefect_test_harness; on a loaded 2-core machine that takes longer than Prefect's default 20 s
# start-up timeout. Set before anything imports prefect (its settings are read at import); the
# Makefile exports the same value for `make run` / `make test`.
PREFECT_STARTUP_TIMEOUT_S = "600"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", PREFECT_STARTUP_TIMEOUT_S)


# What a slow test without ``seconds`` counts for in the order below: about the shorter
# end-to-end tests (the longest take several times this; they say so with ``seconds``).
DEFAULT_SLOW_SECONDS = 60.0


def slow_seconds(item: pytest.Item) -> float:
    """A slow test's expected duration: ``pytest.mark.slow(seconds=...)``, else the default.

    Only the order of files depends on it (never a pass or a failure), so a rough figure is
    enough: what the test took in a recent `make test` run, its module-scoped fixture's share
    included.
    """
    marker = item.get_closest_marker("slow")
    if marker is None:
        return 0.0
    return float(marker.kwargs.get("seconds", DEFAULT_SLOW_SECONDS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow (end-to-end) tests first, the files expected to take longest first, then the rest.

    `make test` spreads test files over one worker per core, in this order; the longest files
    starting first keeps a worker from picking up a several-minute file when the others are
    nearly done. A file's expected length is the sum of its slow tests' :func:`slow_seconds`
    (a count of slow tests alone would rank a file holding one eight-minute test after every
    file with two one-minute ones). In one process the order changes only when the tests report.
    """
    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    seconds_per_file: defaultdict[str, float] = defaultdict(float)
    for item in items:
        seconds_per_file[file_of(item)] += slow_seconds(item)
    # A stable sort: within a file, and among the fast tests, the collected order stays.
    items.sort(key=lambda i: (i.get_closest_marker("slow") is None,
                              -seconds_per_file[file_of(i)]))


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def noise_images(root: Path, n: int) -> None:
    """``root/images/<i>.png`` for i < n: 16×16 grey noise, seeded by i (distinct images)."""
    for i in range(n):
        rng = np.random.default_rng(i)
        write_png(root / "images" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))


def _pattern(shape: tuple[int, int], label_a: int, label_b: int, rng: np.random.Generator,
             ) -> np.ndarray:
    """A 16×16 grey image whose left/right halves encode two labels (learnable), plus noise."""
    img = rng.integers(0, 40, size=shape, dtype=np.uint8)
    h, w = shape
    img[: h // 2, : w // 2] += np.uint8(60 * label_a)
    img[h // 2 :, w // 2 :] += np.uint8(60 * label_b)
    return img


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., tuple[DatasetConfig, Path]]:
    """Factory: a folder of ``n`` PNGs + labels.csv with tasks ``a`` (3 classes), ``b`` (binary)."""

    def make(n: int = 30, seed: int = 0, split: bool = False,
             name: str = "ds") -> tuple[DatasetConfig, Path]:
        rng = np.random.default_rng(seed)
        root = tmp_path / name
        rows = []
        for i in range(n):
            a, b = int(rng.integers(0, 3)), int(rng.integers(0, 2))
            rel = f"images/{i:04d}.png"
            write_png(root / rel, _pattern((16, 16), a, b, rng))
            row = {"id": f"s{i:04d}", "image": rel, "a": ["cat", "dog", "eel"][a],
                   "b": ["no", "yes"][b]}
            if split:
                row["split"] = ["train", "train", "train", "val", "test"][i % 5]
            rows.append(row)
        pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
        cfg = DatasetConfig(
            dir=str(root), labels="labels.csv", split_column="split" if split else None,
            tasks=(TaskConfig("a", "a", "multiclass"), TaskConfig("b", "b", "binary")),
        )
        return cfg, root

    return make


@pytest.fixture
def prefect_server() -> Iterator[str]:
    """A real temporary Prefect API server (fresh database) for one test; yields its API URL.

    Its start-up timeout is PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (set above), not
    a shorter hard-coded one, so a loaded machine delays the test instead of failing it.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def clean_cfg() -> CleanConfig:
    return CleanConfig(mode="L", min_size=4, max_pixels=10_000_000, workers=1)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import subprocess
    import sys

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("GIT_AUTHOR_NAME", "mtl-tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@mtl.local")
    env.setdefault("GIT_COMMITTER_NAME", "mtl-tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@mtl.local")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


DVC = [sys.executable, "-m", "dvc"]


def ran_stages(output: str) -> list[str]:
    """The stages whose command a `dvc repro` ran (not those restored from the run cache)."""
    return re.findall(r"Running stage '([^']+)'", output)


def run_ok(cmd: list[str], cwd: Path) -> str:
    """Run a command, failing the test with its output when it fails; return stdout+stderr."""
    out = _run(cmd, cwd)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{text[-4000:]}"
    return text


TINY_PARAMS = {
    "ingest": {"n_train": 1000, "n_val": 100, "n_test": 200},
    "augment": {"copies": 1},
    "train": {"epochs": 4, "batch_size": 64},
}


def make_project(dest: Path, overrides: dict | None = None) -> Path:  # type: ignore[type-arg]
    """A copy of this project's dvc.yaml, params.yaml and code in a fresh git + DVC repo."""
    import shutil

    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", dest / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "mtl", dest / "mtl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in {**TINY_PARAMS, **(overrides or {})}.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO_ROOT / ".gitignore", dest / ".gitignore")
    run_ok(["git", "init", "-q"], dest)
    run_ok([sys.executable, "-m", "dvc", "init", "-q"], dest)
    run_ok([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    return dest
