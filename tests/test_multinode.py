"""The train stage on two machines (issue 11, "Past one machine"), simulated on one.

Two torchrun agents with `--nnodes 2` meet through a c10d rendezvous on 127.0.0.1, each in its
own directory with its own copy of the data (separate disks, as on two machines), one process
each (gloo, CPU). Only global rank 0 writes the model and the resumable state, so after a
`kill -9` the state is on one machine only; the rerun must still resume every process from it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_train_cli import _params, _write_stage_inputs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

EPOCHS = 6  # the state exists from the end of epoch 1 to the end: a window to kill in


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def _train_args(node: Path, params: Path) -> list[str]:
    return ["train", "--params", str(params), "--selected", str(node / "selected"),
            "--augmented", str(node / "augmented"), "--out", str(node / "model.pt"),
            "--live", str(node / "live")]


def _launch(nodes: list[Path], params: list[Path], run_id: str) -> list[subprocess.Popen[str]]:
    """One torchrun agent per "machine", as the README's multi-node command. The c10d
    rendezvous numbers the nodes by sorted local address: node i gets 127.0.0.(i+1), so the
    first directory is global rank 0. On one machine every agent matches the endpoint's
    address, so `is_host` names the one that hosts the store: node 0, which exits last (it
    saves the model while the others are done), so no agent loses the store before it leaves."""
    port = _free_port()
    procs = []
    for i, (node, par) in enumerate(zip(nodes, params, strict=True)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
               "--rdzv-conf", f"is_host={int(i == 0)}", "--local-addr", f"127.0.0.{i + 1}",
               "-m", "mtl", *_train_args(node, par)]
        procs.append(subprocess.Popen(cmd, cwd=node, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))  # a process group to kill
        time.sleep(1.0)  # node 0's agent starts first
    return procs


def _wait(procs: list[subprocess.Popen[str]], timeout: float = 600) -> list[str]:
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:  # a node left waiting in a collective: do not hang the suite
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(
        f"--- node {i} (exit {p.returncode}):\n{out[-3000:]}"
        for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
    return outs


def test_two_nodes_resume_from_rank_0s_state_and_match_one_machine(tmp_path: Path) -> None:
    ref = tmp_path / "one-machine"
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for root in (ref, *nodes):
        _write_stage_inputs(root, 1280, 160)  # seeded: the same data on every "machine"

    # Reference: one machine, train.nproc=2 (mtl launches torchrun --standalone itself).
    ref_params = _params(ref, "ref", epochs=EPOCHS, nproc=2)
    out = subprocess.run([sys.executable, "-m", "mtl", *_train_args(ref, ref_params)], cwd=ref,
                         env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    # Two machines, killed after the first epoch's state was written.
    params = [_params(node, "run", epochs=EPOCHS, nproc=2) for node in nodes]
    states = [node / "state-run" for node in nodes]
    procs = _launch(nodes, params, "mtl-killed")
    deadline = time.monotonic() + 600
    while not list(states[0].glob("*.pt")) and all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "no resumable state appeared"
        time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    assert not (nodes[0] / "model.pt").exists(), "the run finished before it could be killed"
    assert list(states[0].glob("*.pt")) and not list(states[1].glob("*.pt")), \
        "only global rank 0 (node 0) writes the resumable state"

    # The rerun: node 1 has no state on its disk; every process must resume from rank 0's.
    outs = _wait(_launch(nodes, params, "mtl-resumed"))
    assert "resumed after epoch" in outs[0], outs[0][-3000:]
    assert (nodes[0] / "model.pt").is_file() and not (nodes[1] / "model.pt").exists()

    expected = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(nodes[0] / "model.pt", weights_only=True)["state_dict"]
    assert expected.keys() == got.keys()
    for k, v in expected.items():
        assert torch.equal(v, got[k]), k
