"""The training engine: every weighting trains, partial labels, resume, NaN, schedules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.config import TrainConfig
from mtl.schema import TaskKind, TaskSchema
from mtl.splits import SplitData
from mtl.train import NonFiniteLossError, fit
from mtl.weighting import get_weighting_class, list_weightings

TASKS = (
    TaskSchema("a", TaskKind.MULTICLASS, "a", classes=("0", "1", "2")),
    TaskSchema("b", TaskKind.BINARY, "b", classes=("no", "yes")),
    TaskSchema("c", TaskKind.REGRESSION, "c", mean=0.0, std=1.0),
    TaskSchema("d", TaskKind.MULTILABEL, "d", classes=("x", "y", "z")),
)


def make_split(n: int, seed: int, missing: float = 0.0) -> SplitData:
    """Learnable 12×12 images: task a from the top-left brightness, b from bottom-right, c both."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, n)
    b = rng.integers(0, 2, n)
    img = rng.integers(0, 50, (n, 12, 12, 1)).astype(np.uint8)
    img[:, :6, :6, 0] += (a * 60)[:, None, None].astype(np.uint8)
    img[:, 6:, 6:, 0] += (b * 100)[:, None, None].astype(np.uint8)
    targets = {"a": a.astype(np.float32), "b": b.astype(np.float32),
               "c": (a - b + rng.normal(0, 0.1, n)).astype(np.float32),
               # multi-hot [N, 3]: x = "a is 0", y = "b is 1", z = both
               "d": np.stack([a == 0, b == 1, (a == 0) & (b == 1)], 1).astype(np.float32)}
    for t in targets.values():
        t[rng.random(n) < missing] = np.nan  # a whole row for the multilabel task
    return SplitData(torch.from_numpy(img), targets)


def tiny_cfg(tmp_path: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=32, lr=0.01, log_conflict_every=3,
                       checkpoint_dir=str(tmp_path / "state"),
                       backbone_kwargs={"channels": (4, 8), "out_features": 16},
                       architecture_kwargs={"head_hidden": 0})
    return replace(base, **kw)  # type: ignore[arg-type]


def _backend(name: str) -> str:
    cls = get_weighting_class(name)
    return "full" if cls.level == "loss" or "full" in cls.backends else "representation"


@pytest.mark.parametrize("name", list_weightings())
def test_every_weighting_trains_with_30_percent_labels_missing(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = make_split(96, 0, missing=0.3), make_split(48, 1, missing=0.3)
    cfg = tiny_cfg(tmp_path, weighting=name, backend=_backend(name), epochs=1)
    logged: list[dict[str, float]] = []
    model, result = fit(TASKS, train, val, cfg, in_channels=1, device=torch.device("cpu"),
                        log=lambda e, row: logged.append(row))
    assert result.best_epoch == 0 and model is not None
    row = logged[0]
    for t in TASKS:
        assert np.isfinite(row[f"train/loss/{t.name}"])
        assert np.isfinite(row[f"train/weight/{t.name}"])
    assert any(k.startswith("conflict/cosine/") for k in row)


def test_training_learns(tmp_path: Path) -> None:
    train, val = make_split(512, 0), make_split(128, 1)
    cfg = tiny_cfg(tmp_path, epochs=6, lr=0.02)
    _, result = fit(TASKS, train, val, cfg, 1, torch.device("cpu"))
    last = result.history[-1]
    assert last["val/accuracy/a"] > 0.6 and last["val/accuracy/b"] > 0.8, last
    assert last["val/micro_f1/d"] > 0.6, last
    assert result.best_score == max(r["val/score"] for r in result.history)


def test_interrupted_run_resumes_bitwise(tmp_path: Path) -> None:
    train, val = make_split(128, 0, missing=0.2), make_split(48, 1)
    device = torch.device("cpu")
    cfg_a = tiny_cfg(tmp_path / "a", epochs=3, weighting="dwa")
    _, full = fit(TASKS, train, val, cfg_a, 1, device)

    class Killed(Exception):
        pass

    def die_after_first_epoch(epoch: int, row: dict[str, float]) -> None:
        if epoch == 1:  # the state of epoch 0 is on disk; epoch 1's is not yet
            raise Killed

    cfg_b = tiny_cfg(tmp_path / "b", epochs=3, weighting="dwa")
    with pytest.raises(Killed):
        fit(TASKS, train, val, cfg_b, 1, device, log=die_after_first_epoch)
    _, resumed = fit(TASKS, train, val, cfg_b, 1, device)
    assert resumed.resumed_from == 0
    assert [r["val/score"] for r in resumed.history] == [r["val/score"] for r in full.history]
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def test_non_finite_loss_names_task_and_step(tmp_path: Path) -> None:
    train = make_split(64, 0)
    train.targets["c"][5] = np.inf
    with pytest.raises(NonFiniteLossError, match=r"\['c'\] at optimiser step \d+"):
        fit(TASKS, train, make_split(16, 1), tiny_cfg(tmp_path), 1, torch.device("cpu"))


@pytest.mark.parametrize("opt,sched", [("sgd", "step"), ("adamw", "none"), ("adamw", "cosine")])
def test_optimisers_schedules_clipping_accumulation(opt: str, sched: str, tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, optimizer=opt, scheduler=sched, grad_clip=1.0, grad_accum=2,
                   warmup_epochs=0.5, step_size=1, gamma=0.5)
    _, result = fit(TASKS, make_split(64, 0), make_split(16, 1), cfg, 1, torch.device("cpu"))
    lrs = [r["train/lr"] for r in result.history]
    if sched == "none":
        assert lrs[-1] == pytest.approx(cfg.lr)
    else:
        assert lrs[-1] < cfg.lr


def test_early_stopping(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, epochs=30, early_stopping=1, lr=1e-9, scheduler="none")
    _, result = fit(TASKS, make_split(32, 0), make_split(16, 1), cfg, 1, torch.device("cpu"))
    assert len(result.history) < 30


def test_gradient_method_under_ddp_is_refused(tmp_path: Path) -> None:
    from mtl.train import Distributed

    cfg = tiny_cfg(tmp_path, weighting="pcgrad")
    with pytest.raises(ValueError, match="gradient-level"):
        fit(TASKS, make_split(16, 0), make_split(8, 1), cfg, 1, torch.device("cpu"),
            dist_=Distributed(rank=0, world_size=2))
