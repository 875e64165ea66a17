"""The training engine: every weighting trains, partial labels, resume, NaN, schedules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtl.config import TrainConfig
from mtl.models import create_model
from mtl.models.base import MultiTaskModel
from mtl.schema import TaskKind, TaskSchema
from mtl.splits import SplitData
from mtl.tasks import head_size
from mtl.train import (
    NonFiniteLossError,
    TrainLoop,
    _build_scheduler,
    fit,
    remove_stale_states,
    seed_everything,
    state_path,
    train_one_epoch,
)
from mtl.weighting import create_weighting, get_weighting_class, list_weightings

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
    # workers=0: loading in this process (starting loader processes costs more than these
    # tiny runs); tests/test_train_loader.py covers train.workers > 0
    base = TrainConfig(epochs=2, batch_size=32, lr=0.01, log_conflict_every=3, workers=0,
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
    seed_everything(cfg.seed)  # fit builds its model right after seeding: the initial weights
    fresh = create_model(cfg.architecture, cfg.backbone, TASKS, in_channels=1,
                         architecture_kwargs=cfg.architecture_kwargs,
                         backbone_kwargs=cfg.backbone_kwargs)
    init = fresh.state_dict()
    _, result = fit(TASKS, train, val, cfg, in_channels=1, device=torch.device("cpu"),
                        log=lambda e, row: logged.append(row))
    row = logged[0]
    assert result.best_score == row["val/score"] and len(result.history) == 1
    # the weighting's update reached the shared encoder and every task's head
    changed = {k for k, v in init.items() if v.is_floating_point()
               and not torch.equal(v, result.best_state[k])}
    assert any(k.startswith("backbone.") for k in changed), sorted(changed)
    for t in TASKS:
        head = {n for n, p in fresh.named_parameters()
                if any(p is q for q in fresh.task_parameters(t.name))}
        assert head & changed, (t.name, sorted(changed))
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


def _interrupted(cfg: TrainConfig, train: SplitData, val: SplitData) -> Path:
    """Run ``fit`` until epoch 0's state is on disk, then stop it; returns the state file."""

    class Killed(Exception):
        pass

    def die(epoch: int, row: dict[str, float]) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(TASKS, train, val, cfg, 1, torch.device("cpu"), log=die)
    (state,) = Path(cfg.checkpoint_dir).glob("*.pt")
    return state


def test_one_different_pixel_does_not_resume_and_stale_state_is_removed(tmp_path: Path) -> None:
    # 1024 images of 144 pixels: more than the 65536 a strided sample would look at
    train, val = make_split(1024, 0), make_split(32, 1)
    cfg = tiny_cfg(tmp_path, epochs=2)
    old_state = _interrupted(cfg, train, val)
    images = train.images.clone()
    images[77, 11, 11, 0] ^= 1  # one pixel of one image (an odd flat index)
    other = SplitData(images, train.targets)
    assert state_path(cfg, TASKS, other, val, 1, 1) != old_state
    _, result = fit(TASKS, other, val, cfg, 1, torch.device("cpu"))
    assert result.resumed_from is None and len(result.history) == 2
    assert not old_state.exists(), "a state that can no longer match is removed"
    # the same data does resume (the control), from the state this run left
    cfg2 = tiny_cfg(tmp_path / "again", epochs=2)
    _interrupted(cfg2, train, val)
    _, again = fit(TASKS, train, val, cfg2, 1, torch.device("cpu"))
    assert again.resumed_from == 0


def test_remove_stale_states_keeps_only_the_current_key(tmp_path: Path) -> None:
    keep = tmp_path / "0123456789abcdef.pt"
    for name in (keep.name, "fedcba9876543210.pt", "fedcba9876543210.tmp", "notes.pt", "x.txt"):
        (tmp_path / name).write_text("")
    removed = remove_stale_states(keep)
    assert sorted(p.name for p in removed) == ["fedcba9876543210.pt", "fedcba9876543210.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [keep.name, "notes.pt", "x.txt"]


def test_non_finite_loss_names_task_and_step(tmp_path: Path) -> None:
    train = make_split(64, 0)
    train.targets["c"][5] = np.inf
    with pytest.raises(NonFiniteLossError, match=r"\['c'\] at optimiser step \d+"):
        fit(TASKS, train, make_split(16, 1), tiny_cfg(tmp_path), 1, torch.device("cpu"))


class FlatModel(MultiTaskModel):
    """No batch norm, so a batch's gradient does not depend on how it is split:
    ``x [B, 1, 12, 12] -> z [B, 6] -> one linear head per task``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(144, 6), nn.Tanh())
        self.heads = nn.ModuleDict({t.name: nn.Linear(6, head_size(t)) for t in TASKS})

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        return self.backbone(x)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {name: head(z) for name, head in self.heads.items()}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        return self.heads[task].parameters()


def _one_epoch(tmp_path: Path, data: SplitData, **kw: object) -> tuple[Tensor, int]:
    """All parameters ``[P]`` after one epoch of plain SGD on ``FlatModel``, and the step count."""
    cfg = tiny_cfg(tmp_path, optimizer="sgd", momentum=0.0, weight_decay=0.0, scheduler="none",
                   warmup_epochs=0.0, log_conflict_every=0, **kw)
    torch.manual_seed(0)
    model = FlatModel()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    steps = -(-len(data) // (cfg.batch_size * cfg.grad_accum))
    loop = TrainLoop(model, create_weighting("equal", len(TASKS)), TASKS, opt,
                     _build_scheduler(opt, cfg, steps), torch.device("cpu"), cfg,
                     torch.Generator().manual_seed(0))
    train_one_epoch(loop, data)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), loop.step


def test_accumulating_two_batches_equals_one_batch_twice_the_size(tmp_path: Path) -> None:
    data = make_split(64, 0)  # every label present: each micro-batch mean weighs the same
    accumulated, steps = _one_epoch(tmp_path, data, batch_size=16, grad_accum=2, lr=0.5)
    big, big_steps = _one_epoch(tmp_path, data, batch_size=32, grad_accum=1, lr=0.5)
    small, small_steps = _one_epoch(tmp_path, data, batch_size=16, grad_accum=1, lr=0.5)
    assert steps == big_steps == 2 and small_steps == 4
    torch.testing.assert_close(accumulated, big, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(small, big, atol=1e-4)  # the control: no accumulation differs


def test_gradient_clipping_bounds_the_update(tmp_path: Path) -> None:
    data = make_split(32, 0)
    torch.manual_seed(0)
    before = torch.cat([p.detach().reshape(-1) for p in FlatModel().parameters()])
    clipped, _ = _one_epoch(tmp_path, data, batch_size=32, lr=1.0, grad_clip=1e-3)
    free, _ = _one_epoch(tmp_path, data, batch_size=32, lr=1.0, grad_clip=0.0)
    # one SGD step: the update is lr * gradient, whose norm clipping caps at grad_clip
    assert float((clipped - before).norm()) <= 1e-3 * (1 + 1e-4)
    assert float((free - before).norm()) > 10 * 1e-3


@pytest.mark.parametrize("opt,sched", [("sgd", "step"), ("adamw", "none"), ("adamw", "cosine")])
def test_optimisers_and_schedules_set_the_lr(opt: str, sched: str, tmp_path: Path) -> None:
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


# Gradient-level methods under DDP used to be refused here; they now train (issue 11):
# tests/test_train_weighting.py::test_gradient_methods_under_ddp_match_one_process replaces
# test_gradient_method_under_ddp_is_refused.


def test_validation_without_any_usable_label_is_refused(tmp_path: Path) -> None:
    """A NaN validation score never compares greater, so the first epoch would be kept
    silently; it is an error naming the cause instead."""
    train, val = make_split(64, 0), make_split(16, 1)
    for t in val.targets.values():
        t[:] = np.nan  # every validation label missing, for every task
    with pytest.raises(ValueError, match="no task has a usable label in the validation split"):
        fit(TASKS, train, val, tiny_cfg(tmp_path, epochs=1), 1, torch.device("cpu"))
