"""How the trainer drives the weighting methods: ``step_end`` once per optimiser step on the
losses of all its micro-batches, the same state on every DDP rank, and the representation
backend refused where the architecture has no shared representation (issue 8)."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from mtl.splits import SplitData
from mtl.train import Distributed, _build_loop, fit, train_one_epoch
from mtl.weighting.famo import FAMO
from tests.test_train import TASKS, make_split, tiny_cfg


class RecordingFAMO(FAMO):
    """FAMO that records the losses it is given per micro-batch and at each ``step_end``."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.micro: list[tuple[Tensor, Tensor]] = []
        self.ends: list[tuple[Tensor, Tensor]] = []

    def weights(self, losses: Tensor, present: Tensor) -> Tensor:
        self.micro.append((losses.detach().double().cpu(), present.cpu()))
        return super().weights(losses, present)

    def step_end(self, losses: Tensor, present: Tensor) -> None:
        self.ends.append((losses.detach().double().cpu(), present.cpu()))
        super().step_end(losses, present)


@pytest.mark.parametrize("accum", [1, 4])
def test_step_end_once_per_optimiser_step_on_accumulated_losses(accum: int,
                                                                tmp_path: Path) -> None:
    """10 batches with ``grad_accum=4``: 3 optimiser steps (4 + 4 + 2 micro-batches), so 3
    ``step_end`` calls, each with every task's mean loss over the micro-batches of that step in
    which it was labelled (30 % of labels missing, batch 8: tasks are often absent). Before the
    fix ``step_end`` ran once per micro-batch on that micro-batch's losses: FAILED for 4."""
    cfg = tiny_cfg(tmp_path, weighting="famo", batch_size=8, grad_accum=accum,
                   log_conflict_every=0)
    data = make_split(80, 0, missing=0.3)
    loop = _build_loop(TASKS, cfg, 1, 0, torch.device("cpu"), 10, Distributed())
    rec = RecordingFAMO(len(TASKS))
    loop.weighting = rec
    train_one_epoch(loop, data)
    assert len(rec.micro) == 10
    assert len(rec.ends) == math.ceil(10 / accum) == loop.step
    for j, (mean, present) in enumerate(rec.ends):
        group = rec.micro[j * accum:(j + 1) * accum]
        losses = torch.stack([l_ for l_, _ in group])  # [micro, T]
        mask = torch.stack([p for _, p in group])  # [micro, T]
        n = mask.sum(0)
        expected = torch.where(n > 0, (losses * mask).sum(0) / n.clamp(min=1), 0.0)
        assert torch.equal(present, n > 0)
        torch.testing.assert_close(mean[present], expected[present], rtol=1e-6, atol=1e-7)


def _without_batch_norm(module: torch.nn.Module) -> None:
    """Replace every BatchNorm by the identity: batch statistics depend on the batch size by
    design, so with them 4 micro-batches of 8 cannot compute what one batch of 32 does."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.Identity())
        else:
            _without_batch_norm(child)


def _state_after(weighting: str, batch_size: int, accum: int, lr: float, epochs: int,
                 tmp_path: Path) -> dict[str, Tensor]:
    """The method's state after ``epochs`` epochs of the real trainer loop on 96 fully
    labelled samples (3 optimiser steps per epoch in both settings)."""
    cfg = tiny_cfg(tmp_path, weighting=weighting, batch_size=batch_size, grad_accum=accum,
                   lr=lr, optimizer="sgd", log_conflict_every=0, scheduler="none")
    data = make_split(96, 0)
    loop = _build_loop(TASKS, cfg, 1, 0, torch.device("cpu"), 3, Distributed())
    _without_batch_norm(loop.model)
    for _ in range(epochs):
        train_one_epoch(loop, data)
    assert loop.step == 3 * epochs
    return {k: v.clone() for k, v in loop.weighting.state_dict().items()}


@pytest.mark.parametrize(("weighting", "lr"), [("dwa", 0.01), ("famo", 1e-9)])
def test_grad_accum_4_gives_the_state_of_one_batch_4x_the_size(
        weighting: str, lr: float, tmp_path: Path) -> None:
    """``grad_accum=4`` with batches of 8 against one batch of 32 (same seed, so the same
    samples per optimiser step, no missing labels): the method ends in the same state.

    DWA's weights are fixed within an epoch, so the accumulated gradient is the big batch's and
    the two runs train the same model (SGD: a gradient accumulated at the wrong scale shows)
    for 3 epochs (history of epoch means, weights moved).
    FAMO's weights depend on each micro-batch's losses, so the two runs' models would part
    after the first step: the model is held (lr 1e-9) and FAMO's own state is compared after
    2 epochs (6 optimiser steps) with its logits moved by the batches' loss changes. Calling
    ``step_end`` per micro-batch (12 calls per epoch, the defect of issue 8), or on the last
    micro-batch's losses only, gives different logits, Adam moments and reference losses."""
    epochs = 3 if weighting == "dwa" else 2
    small = _state_after(weighting, 8, 4, lr, epochs, tmp_path / "small")
    big = _state_after(weighting, 32, 1, lr, epochs, tmp_path / "big")
    assert small.keys() == big.keys()
    for k in small:
        torch.testing.assert_close(small[k], big[k], rtol=1e-4, atol=1e-6, equal_nan=True,
                                   msg=f"{weighting}: {k}")
    # the state moved away from uniform weights: FAMO's logits, DWA's loss ratios per task
    spread = big["logits"] if weighting == "famo" else big["history"][0] / big["history"][1]
    assert bool(torch.isfinite(spread).all()) and float(spread.max() - spread.min()) > 1e-3, spread


# ------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, port: int, out: str) -> None:
    """Both DDP tests' runs in one spawn (each spawned process pays the imports once)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # task "d" labelled in every 5th sample only: in a batch of 8 split over two ranks it
        # is often present on one rank only
        data = make_split(64, 0, missing=0.3)
        d = make_split(64, 0).targets["d"].copy()
        d[torch.arange(64).numpy() % 5 != 0] = float("nan")
        data.targets["d"] = d
        for weighting in ("famo", "dwa"):
            cfg = tiny_cfg(Path(out), weighting=weighting, batch_size=8, log_conflict_every=0,
                           epochs=2, grad_accum=2)
            loop = _build_loop(TASKS, cfg, 1, 0, torch.device("cpu"), 4, Distributed(rank, 2))
            for _ in range(2):
                train_one_epoch(loop, data)
            torch.save(loop.weighting.state_dict(), Path(out) / f"{weighting}-rank{rank}.pt")
        for weighting, backend in GRADIENT_RUNS:
            model, state = _train_gradient_method(weighting, backend, Path(out),
                                                  Distributed(rank, 2))
            torch.save({"model": model, "state": state},
                       Path(out) / f"{weighting}-{backend}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where each rank of one 2-process gloo run saved its results."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return out


def test_ddp_ranks_hold_identical_weighting_state(ddp_runs: Path) -> None:
    """Two gloo processes, a task often labelled on one rank only: after 2 epochs every rank
    holds the same method state (FAMO's logits/moments/reference losses, DWA's history), and
    it moved. Before the fix each rank passed its own ``present`` to ``step_end`` (and DWA's
    epoch means averaged in zeros from ranks without the task): FAILED."""
    for weighting, moved in (("famo", "logits"), ("dwa", "history")):
        a = torch.load(ddp_runs / f"{weighting}-rank0.pt", weights_only=True)
        b = torch.load(ddp_runs / f"{weighting}-rank1.pt", weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k].nan_to_num(-7.0), b[k].nan_to_num(-7.0)), (weighting, k)
        assert bool(torch.isfinite(a[moved]).all()) and bool((a[moved] != 0).any()), weighting


# ----------------------------------------------- gradient-level methods under DDP (issue 11)
# (method, backend): the three the issue names, a stateful one (GradVac's EMA of the cosines)
# and the representation backend, with a randomised method there (GradDrop: its draws and the
# signs of the *global* batch's z must be the same on both ranks)
GRADIENT_RUNS = (("pcgrad", "full"), ("mgda", "full"), ("nash_mtl", "full"),
                 ("gradvac", "full"), ("mgda", "representation"),
                 ("graddrop", "representation"))
# issue 12: a method whose state lags one batch (MoDo's previous-step gradients, extra state)
GRADIENT_RUNS += (("modo", "full"), ("fairgrad", "full"))


def _gradient_data() -> SplitData:
    """51 rows, batch 16: the last global batch (3 rows) splits 2 / 1, and with 30 % labels
    missing plus task "d" labelled on every 5th row only, the ranks hold different label
    counts per task (often none of "d")."""
    data = make_split(51, 0, missing=0.3)
    d = data.targets["d"].copy()
    d[torch.arange(51).numpy() % 5 != 0] = float("nan")
    data.targets["d"] = d
    return data


def _train_gradient_method(weighting: str, backend: str, out: Path,
                           dist_: Distributed) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """2 epochs (8 optimiser steps) of ``weighting``; the model's and the method's state.

    BatchNorm is replaced by the identity: in training mode it normalises with the statistics
    of each process's own shard (as under any DDP without SyncBatchNorm), which is not the
    gradient path under test."""
    cfg = tiny_cfg(out, weighting=weighting, backend=backend, batch_size=16,
                   log_conflict_every=0, epochs=2)
    loop = _build_loop(TASKS, cfg, 1, 0, torch.device("cpu"), 4, dist_)
    for name, module in list(loop.model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            parent, _, attr = name.rpartition(".")
            setattr(loop.model.get_submodule(parent), attr, nn.Identity())
    if dist_.rank == 1:
        # rank 1's RNG stream moves on (as dropout on a shard of another size would do): the
        # trainer must still give every rank the same draws for PCGrad's order and GradDrop
        torch.rand(7)
    data = _gradient_data()
    init = {k: v.clone() for k, v in loop.model.state_dict().items()}
    for _ in range(2):
        train_one_epoch(loop, data)
    assert loop.step == 8
    assert any(not torch.equal(v, init[k]) for k, v in loop.model.state_dict().items() if
               "encoder" in k or "backbone" in k), (weighting, backend, "shared part moved")
    return ({k: v.detach().clone() for k, v in loop.model.state_dict().items()},
            {k: v.detach().clone() for k, v in _tensors(loop.weighting.state_dict()).items()})


def _tensors(state: dict[str, object]) -> dict[str, Tensor]:
    """A state dict's tensors, with a module's extra state (a dict of tensors: MoDo's
    previous-step gradients) flattened into it as ``_extra_state.<key>``."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, Tensor)})
        elif isinstance(v, Tensor):
            out[k] = v
    return out


def test_gradient_methods_under_ddp_match_one_process(ddp_runs: Path,
                                                      tmp_path: Path) -> None:
    """Two gloo processes, each with its shard of every global batch, end with the parameters
    one process reaches on the same global batches (8 steps), for every method of
    GRADIENT_RUNS; both ranks hold identical parameters and identical method state, and the
    state matches one process's. Fails if the per-task gradients were not all-reduced (each
    rank balancing its shard), if they were averaged without the label counts (a rank
    without task "d" would halve its gradient), if the ranks drew different random numbers
    (GradDrop, PCGrad's order), or if the representation backend used only the local z.
    Before this change gradient-level methods were refused under DDP."""
    torch.set_num_threads(1)
    for weighting, backend in GRADIENT_RUNS:
        model, state = _train_gradient_method(weighting, backend, tmp_path, Distributed())
        ranks = [torch.load(ddp_runs / f"{weighting}-{backend}-rank{r}.pt", weights_only=True)
                 for r in (0, 1)]
        for k, v in model.items():
            assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), (weighting, k)
            torch.testing.assert_close(ranks[0]["model"][k], v, rtol=1e-4, atol=1e-5,
                                       msg=f"{weighting}/{backend}: {k}")
        assert ranks[0]["state"].keys() == ranks[1]["state"].keys() == state.keys()
        for k, v in state.items():
            a, b = ranks[0]["state"][k], ranks[1]["state"][k]
            assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0)), (weighting, k)
            torch.testing.assert_close(a, v, rtol=1e-4, atol=1e-5, equal_nan=True,
                                       msg=f"{weighting}/{backend} state {k}")


# ------------------------------------------------------------ representation backend refused
@pytest.mark.parametrize("architecture", ["mtan", "cross_stitch"])
def test_representation_backend_refused_without_a_shared_representation(
        architecture: str, tmp_path: Path) -> None:
    """MTAN and cross-stitch give each task its own representation: the representation backend
    would train their task modules with doubled gradients and see no conflict. Before the fix
    it trained without a word: FAILED."""
    cfg = replace(tiny_cfg(tmp_path, weighting="pcgrad", backend="representation"),
                  architecture=architecture, architecture_kwargs={})
    with pytest.raises(ValueError, match="supports_representation is False"):
        fit(TASKS, make_split(16, 0), make_split(8, 1), cfg, 1, torch.device("cpu"))


def test_backend_the_method_does_not_support_is_refused_at_build(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, weighting="db_mtl", backend="representation")
    with pytest.raises(ValueError, match=r"not supported by train.weighting='db_mtl'"):
        fit(TASKS, make_split(16, 0), make_split(8, 1), cfg, 1, torch.device("cpu"))
