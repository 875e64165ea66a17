"""What the Prefect flow costs on top of `dvc repro` on a fully cached pipeline (issue 10).

Side by side in one run, interleaved (each repetition in a freshly shuffled, seeded order, so
that no variant always follows the same one) so that machine load hits every variant alike:

* ``dvc repro``                  DVC alone: checks every stage, runs nothing;
* ``python -m flows.pipeline``   the flow against a running ``prefect server start``;
* optionally the flow of another git revision (``--old-rev``), for a before/after figure.

The project is a copy of this one with tiny params (or ``--project``), reproduced once so that
every stage is cached; the Prefect server runs on 127.0.0.1 with its own PREFECT_HOME.

    python benchmarks/flow_overhead.py --reps 5 [--old-rev main]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import make_project, run_ok  # noqa: E402  (after the path set-up)

SMALL = {"ingest": {"n_train": 300, "n_val": 60, "n_test": 100},
         "train": {"epochs": 1, "batch_size": 64}}


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    """`prefect server start` on 127.0.0.1 with its own, migrated database."""
    env = _env({"PREFECT_HOME": str(home)})
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                   env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
                if r.read().strip() == b"true":
                    return server
        except OSError:
            time.sleep(1)
    os.killpg(server.pid, signal.SIGKILL)
    raise RuntimeError(f"the Prefect server on port {port} did not answer within 600 s")


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one command, which must run no stage.

    CPU seconds count the command and its children; on a machine loaded by other jobs they
    move far less than wall-clock seconds.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = out.stdout + out.stderr
    if out.returncode != 0 or "Running stage" in text:
        raise RuntimeError(f"{' '.join(cmd)}: expected a no-op, got ({out.returncode}):\n"
                           f"{text[-3000:]}")
    return seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--port", type=int, default=4311)
    parser.add_argument("--project", type=Path, help="a DVC project (default: tiny copy)")
    parser.add_argument("--old-rev", help="also time flows/pipeline.py of this git revision")
    args = parser.parse_args()
    # A SIGTERM (timeout, kill) unwinds normally, so the server below is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="flow-overhead-"))
    project = args.project or make_project(work / "proj", SMALL)
    print(f"project {project}: reproducing once so that every stage is cached", flush=True)
    run_ok([sys.executable, "-m", "dvc", "repro"], project)
    variants: dict[str, list[str]] = {
        "dvc repro": [sys.executable, "-m", "dvc", "repro"],
        "python -m flows.pipeline": [sys.executable, "-m", "flows.pipeline",
                                     "--project-dir", str(project)],
    }
    if args.old_rev:
        old = work / "old_pipeline.py"
        old.write_text(subprocess.run(["git", "show", f"{args.old_rev}:flows/pipeline.py"],
                                      cwd=ROOT, check=True, capture_output=True,
                                      text=True).stdout)
        variants[f"flow at {args.old_rev}"] = [sys.executable, str(old), "--project-dir",
                                               str(project)]
    server = start_server(work / "prefect-home", args.port)
    env = _env({"PREFECT_HOME": str(work / "prefect-home"),
                "PREFECT_API_URL": f"http://127.0.0.1:{args.port}/api"})
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(0)
    load_before = Path("/proc/loadavg").read_text().strip()
    try:
        for cmd in variants.values():  # warm-up: file caches, first flow registration
            timed(cmd, project, env)
        for rep in range(args.reps):
            order = list(variants)
            rng.shuffle(order)
            for name in order:
                wall, cpu = timed(variants[name], project, env)
                times[name].append(wall)
                cpus[name].append(cpu)
            print(f"rep {rep + 1}: " + ", ".join(
                f"{n} {t[-1]:.2f} s ({cpus[n][-1]:.2f} s CPU)" for n, t in times.items()),
                flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    print(f"\n{args.reps} interleaved repetitions, fully cached pipeline, {os.cpu_count()} CPUs; "
          f"/proc/loadavg before: {load_before}, after: "
          f"{Path('/proc/loadavg').read_text().strip()}\n")
    print("| command | median wall s | min | max | median wall over `dvc repro` s | wall ratio "
          "| median CPU s | CPU over `dvc repro` s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base, base_cpu = times["dvc repro"], cpus["dvc repro"]
    for name, values in times.items():
        over = statistics.median(v - b for v, b in zip(values, base, strict=True))
        cpu_over = statistics.median(v - b for v, b in zip(cpus[name], base_cpu, strict=True))
        print(f"| `{name}` | {statistics.median(values):.2f} | {min(values):.2f} | "
              f"{max(values):.2f} | {over:+.2f} | "
              f"{statistics.median(values) / statistics.median(base):.2f} | "
              f"{statistics.median(cpus[name]):.2f} | {cpu_over:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
