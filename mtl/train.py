"""train stage: a multi-task model balanced by a weighting method.

``train_one_epoch`` runs one pass over the training data, ``validate`` scores the validation
split, and ``fit`` wires them: it keeps the state of the epoch with the best validation score
(the test split is never seen here), stops early per params, writes a full-state checkpoint
after every epoch (so a killed run resumes and ends bitwise identical on CPU) and reports each
epoch through a callback. Under ``torchrun`` (``train.nproc > 1``) it trains with DDP and only
rank 0 writes anything: loss-level methods through the ``DistributedDataParallel`` wrapper,
gradient-level ones by all-reducing the per-task gradients (``ProcessGroupTaskGradients``) so
that every process applies the single-process update of the global batch. ``train_stage`` is
the stage's one entry point (``mtl train``): it reads the splits, sets up the process group
and hands the checkpoint to its caller.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mtl.checkpoint import build_checkpoint, safe_load
from mtl.closure import module_closure, source_digest
from mtl.config import TrainConfig
from mtl.device import select_device
from mtl.distill import distill_task_loss, read_teachers
from mtl.inference import predict, to_model_input
from mtl.metrics import task_metrics, task_score
from mtl.models import create_model
from mtl.models.base import MultiTaskModel
from mtl.schema import TaskSchema
from mtl.shards import OnlineAugment
from mtl.splits import (
    Batch,
    BatchDataset,
    BatchFeed,
    SplitData,
    feature_columns,
    load_split_data,
)
from mtl.tasks import kind_spec, masked_task_loss
from mtl.weighting import create_weighting, multitask_backward, task_gradient_cosine
from mtl.weighting.base import Weighting

__all__ = [
    "Distributed",
    "EpochStats",
    "FitResult",
    "Logger",
    "NonFiniteLossError",
    "ProcessGroupTaskGradients",
    "SplitData",
    "TrainLoop",
    "TrainStageResult",
    "amp_dtype",
    "clear_state",
    "fit",
    "needs_torchrun",
    "process_group",
    "relaunch_under_torchrun",
    "remove_stale_states",
    "seed_everything",
    "select_device",
    "state_path",
    "train_one_epoch",
    "train_stage",
    "training_code_digest",
    "validate",
]


class NonFiniteLossError(FloatingPointError):
    """A task loss became NaN or infinite; the message names the task and the step."""


@dataclass(frozen=True)
class Distributed:
    """Process-group facts (``world_size == 1`` when not under torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    def mean(self, t: Tensor) -> Tensor:
        """All-reduce average across processes (identity on one process)."""
        if self.world_size == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world_size


@dataclass
class EpochStats:
    """What one training epoch measured."""

    loss: dict[str, float]
    weights: dict[str, float]
    conflict: dict[str, float]
    images_per_second: float
    steps: int


@dataclass
class FitResult:
    """The best model state (on validation) and the history of every epoch."""

    best_state: dict[str, Tensor]
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None


@dataclass
class TrainLoop:
    """Everything one optimisation step needs (built once by ``fit``)."""

    model: MultiTaskModel
    weighting: Weighting
    tasks: Sequence[TaskSchema]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    cfg: TrainConfig
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None = None
    ddp: nn.Module | None = None
    dist: Distributed = field(default_factory=Distributed)
    step: int = 0
    feed: BatchFeed | None = None  # the training split's loader (train_one_epoch builds it)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for batch order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _batches(n: int, batch_size: int, generator: torch.Generator,
             dist_: Distributed) -> Iterator[Tensor]:
    """Seeded global batches; under DDP each process takes its strided share of each one."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size][dist_.rank::dist_.world_size]


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None (off: CPU or ``amp: false``), bf16 (no scaler needed) or fp16."""
    if not cfg.amp or device.type != "cuda":
        return None
    if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class _EncodeDecode(nn.Module):
    """Forward returning ``(z, outputs)``, so DDP sees the whole model in one forward call."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, features: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.model.encode(x, features)
        return z, self.model.decode(z)


def _forward(loop: TrainLoop, x: Tensor, f: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    if loop.ddp is not None:
        out: tuple[Tensor, dict[str, Tensor]] = loop.ddp(x, f)
        return out
    if loop.dist.world_size > 1:  # gradient method under DDP, no wrapper: what DDP would do
        _broadcast(loop.model.buffers())  # rank 0's BatchNorm statistics (broadcast_buffers)
    z = loop.model.encode(x, f)
    return z, loop.model.decode(z)


def _losses(loop: TrainLoop, outputs: dict[str, Tensor], ys: Sequence[Tensor],
            teachers: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-task masked losses ``[T]``, which tasks are present ``[T]`` (bool) and how many
    samples carry each task's label ``[T]`` (float64). With ``train.distill`` on, ``teachers``
    (per task ``[B, K]``) make each task's loss ``(1 - w_t) hard + w_t soft``
    (:func:`mtl.distill.distill_task_loss`), which the weighting method sees as the task's."""
    d = loop.cfg.distill
    if d.enabled:
        if teachers is None:
            raise ValueError("train.distill.enabled is true but the training batches carry no "
                             "teacher outputs (the split was loaded without the teach stage's "
                             "output)")
        per_task = [distill_task_loss(t, outputs[t.name], y, s, d.task_weight(t.name),
                                      d.task_temperature(t.name))
                    for t, y, s in zip(loop.tasks, ys, teachers, strict=True)]
    else:
        per_task = [masked_task_loss(t, outputs[t.name], y)
                    for t, y in zip(loop.tasks, ys, strict=True)]
    losses = torch.stack([loss.float() for loss, _ in per_task])
    counts = torch.tensor([float(n) for _, n in per_task], dtype=torch.float64,
                          device=losses.device)
    present = counts > 0
    if not torch.isfinite(losses).all():
        bad = [t.name for t, v in zip(loop.tasks, losses.tolist(), strict=True)
               if not math.isfinite(v)]
        values = dict(zip([t.name for t in loop.tasks], losses.tolist(), strict=True))
        raise NonFiniteLossError(f"non-finite loss for task(s) {bad} at optimiser step "
                                 f"{loop.step}: {values}")
    return losses, present, counts


def _broadcast(tensors: Iterator[Tensor] | Sequence[Tensor]) -> None:
    """Overwrite ``tensors`` on every process with rank 0's values (in place)."""
    for t in tensors:
        dist.broadcast(t.data, 0)


def _sync_rng(device: torch.device) -> None:
    """Give every process rank 0's torch RNG state (CPU, and ``device``'s when CUDA).

    Randomised gradient methods (PCGrad's task order, GradDrop, RLW) must draw the same numbers
    on every rank or the ranks would apply different updates; dropout or unequal shard sizes
    would otherwise let the per-rank streams drift apart.
    """
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    cpu = torch.get_rng_state().to(comm)
    dist.broadcast(cpu, 0)
    torch.set_rng_state(cpu.cpu())
    if device.type == "cuda":
        state = torch.cuda.get_rng_state(device).to(comm)
        dist.broadcast(state, 0)
        torch.cuda.set_rng_state(state.cpu(), device)


class ProcessGroupTaskGradients:
    """:class:`~mtl.weighting.backward.TaskGradientSync` over the default process group, for
    one micro-batch of which this process holds ``counts [T]`` labelled samples per task.

    Each process's task loss is the mean over its own labelled samples, so the global batch's
    loss of task ``t`` is ``sum_r n_rt L_rt / N_t`` (``N_t = sum_r n_rt``): its gradient is the
    count-weighted average of the processes' gradients, and a process without the task's label
    contributes nothing instead of a zero that would halve the gradient. The constructor is a
    collective (the totals ``N``).
    """

    def __init__(self, counts: Tensor) -> None:
        self.counts = counts.to(torch.float64)  # [T] n_rt
        self.total = self.counts.clone()
        dist.all_reduce(self.total)  # [T] N_t
        self._sizes: list[int] = []

    def losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        sums = losses.detach().to(torch.float64) * self.counts
        dist.all_reduce(sums)
        present = self.total > 0
        mean = torch.where(present, sums / self.total.clamp(min=1), torch.zeros_like(sums))
        return mean.to(losses.dtype), present

    def share(self, grads: Tensor) -> Tensor:
        ratio = torch.where(self.total > 0, self.counts / self.total.clamp(min=1),
                            torch.zeros_like(self.counts))  # [T] n_rt / N_t
        return grads * ratio.to(grads.dtype)[:, None]

    def mean(self, grads: Tensor) -> Tensor:
        out = self.share(grads).contiguous()
        dist.all_reduce(out)
        return out

    def gather(self, grads: Tensor) -> Tensor:
        # shards can differ in size (the last batch): gather the sizes, pad to the largest
        size = torch.tensor([grads.shape[1]], device=grads.device)
        sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size)
        self._sizes = [int(n) for n in sizes]
        padded = grads.new_zeros(grads.shape[0], max(self._sizes))
        padded[:, :grads.shape[1]] = grads
        parts = [torch.empty_like(padded) for _ in self._sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:, :n] for p, n in zip(parts, self._sizes, strict=True)], 1)

    def local(self, direction: Tensor) -> Tensor:
        rank = dist.get_rank()
        start = sum(self._sizes[:rank])
        return direction[start:start + self._sizes[rank]]

    def sum(self, grads: Tensor) -> Tensor:
        out = grads.clone()
        dist.all_reduce(out)
        return out


def _optimizer_step(loop: TrainLoop) -> None:
    if loop.cfg.grad_clip > 0:
        if loop.scaler is not None:
            loop.scaler.unscale_(loop.optimizer)
        params = [p for g in loop.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, loop.cfg.grad_clip)
    if loop.scaler is not None:
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.step += 1


def _epoch_batches(loop: TrainLoop, data: SplitData,
                   epoch: int) -> tuple[list[Tensor], Iterator[Batch]]:
    """This epoch's seeded batch indices (this process's share under DDP) and the batches read
    from ``data`` in that order (augmented online when ``data`` has a transform), through the
    loop's :class:`BatchFeed` for ``data`` (built on first use: its workers live for the run)."""
    cfg = loop.cfg
    batches = list(_batches(data.epoch_size(), cfg.batch_size, loop.generator, loop.dist))
    if loop.feed is None or loop.feed.dataset.data is not data:
        augment = None
        if data.transform is not None:
            size = (int(data.images.shape[1]), int(data.images.shape[2]))  # [H, W]
            augment = OnlineAugment(data.transform, size, cfg.seed)
        loop.feed = BatchFeed(BatchDataset(data, loop.tasks, augment), cfg.workers,
                              pin_memory=loop.device.type == "cuda")
    return batches, loop.feed.epoch([(epoch, idx) for idx in batches])


def train_one_epoch(loop: TrainLoop, data: SplitData, epoch: int = 0) -> EpochStats:
    """One pass over ``data`` in seeded random order; returns mean per-task losses and weights.

    Batches are read by ``train.workers`` loader processes and travel as uint8 until
    ``to_model_input`` converts them on the device; ``epoch`` seeds online augmentation.
    """
    cfg, tasks, model = loop.cfg, loop.tasks, loop.model
    model.train()
    shared = list(model.shared_parameters())
    heads = [p for t in tasks for p in model.task_parameters(t.name)]
    t_count = len(tasks)
    loss_sum = torch.zeros(t_count, dtype=torch.float64)
    weight_sum = torch.zeros(t_count, dtype=torch.float64)
    count = torch.zeros(t_count, dtype=torch.float64)
    cos_sum: dict[str, float] = {}
    cos_n = 0
    micro, seen, start = 0, 0, time.perf_counter()
    # this optimiser step's per-task loss sums and micro-batch counts (step_end once per step)
    step_sum = torch.zeros(t_count, dtype=torch.float64, device=loop.device)
    step_n = torch.zeros(t_count, dtype=torch.float64, device=loop.device)
    batches, loader = _epoch_batches(loop, data, epoch)
    loop.optimizer.zero_grad(set_to_none=True)
    for i, (images, f, ys, teach) in enumerate(loader):
        x = to_model_input(images, loop.device)  # [B, C, H, W] float, converted on the device
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = f.to(loop.device, non_blocking=True) if f is not None else None
        ys = [y.to(loop.device, non_blocking=True) for y in ys]  # per task [B] or [B, K]
        if teach is not None:  # train.distill: per task the teacher's output [B, K]
            teach = [s.to(loop.device, non_blocking=True) for s in teach]
        with _autocast(loop.device, amp_dtype(cfg, loop.device)):
            z, outputs = _forward(loop, x, f)
        losses, present, counts = _losses(loop, outputs, ys, teach)
        if cfg.log_conflict_every and t_count > 1 and loop.step % cfg.log_conflict_every == 0 \
                and micro == 0 and loop.dist.world_size == 1:
            cos = task_gradient_cosine(losses, present, shared).cpu()  # [T, T], NaN: absent; 1 sync
            for a, b in combinations(range(t_count), 2):
                key = f"{tasks[a].name}~{tasks[b].name}"
                if not math.isnan(float(cos[a, b])):
                    cos_sum[key] = cos_sum.get(key, 0.0) + float(cos[a, b])
            cos_n += 1
        scale = 1.0
        if loop.scaler is not None:
            loop.scaler.scale(losses.detach().sum())  # initialises the scale on first use
            scale = float(loop.scaler.get_scale())
        sync = None
        if loop.dist.world_size > 1 and loop.weighting.level == "gradient":
            sync = ProcessGroupTaskGradients(counts)
            _sync_rng(loop.device)
        w = multitask_backward(loop.weighting, losses, present, shared, heads,
                               representation=z, backend=cfg.backend,
                               loss_scale=scale / cfg.grad_accum, sync=sync)
        _sync_weighting_grads(loop)
        step_sum += losses.detach().double() * present
        step_n += present
        micro += 1
        if micro == cfg.grad_accum or i == len(batches) - 1:
            _optimizer_step(loop)
            micro = 0
            # once per optimiser step, on the losses of all its micro-batches (and ranks)
            step_mean, step_present = _present_mean(loop.dist, step_sum, step_n)
            loop.weighting.step_end(step_mean.to(losses.dtype), step_present)
            step_sum.zero_()
            step_n.zero_()
        pres = present.detach().cpu().double()
        loss_sum += losses.detach().cpu().double() * pres
        weight_sum += w.detach().cpu().double() * pres
        count += pres
        seen += len(images) * loop.dist.world_size
    elapsed = time.perf_counter() - start
    mean_loss, seen_task = _present_mean(loop.dist, loss_sum.to(loop.device),
                                         count.to(loop.device))
    loop.weighting.epoch_end(mean_loss.float(), seen_task)
    mean_loss = mean_loss.cpu()
    return EpochStats(
        loss={t.name: float(mean_loss[i]) for i, t in enumerate(tasks)},
        weights={t.name: float(weight_sum[i] / max(float(count[i]), 1.0))
                 for i, t in enumerate(tasks)},
        conflict={k: v / cos_n for k, v in cos_sum.items()} if cos_n else {},
        images_per_second=seen / elapsed if elapsed > 0 else math.nan,
        steps=len(batches),
    )


def _present_mean(dist_: Distributed, sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per task, the mean of ``sums / counts`` over every process (``[T]`` each): a task counts
    only where it was present, so a rank (or micro-batch) without its label adds no zero, and
    every rank gets the same values (identical weighting state under DDP). Returns the means
    (0 where never present) and ``counts > 0``."""
    if dist_.world_size > 1:
        both = torch.stack([sums, counts])  # one all-reduce for both
        dist.all_reduce(both)
        sums, counts = both[0], both[1]
    present = counts > 0
    return torch.where(present, sums / counts.clamp(min=1), torch.zeros_like(sums)), present


def _sync_weighting_grads(loop: TrainLoop) -> None:
    """Average the gradients of learnable weightings (uncertainty) across DDP processes."""
    if loop.dist.world_size == 1:
        return
    for p in loop.weighting.parameters():
        if p.grad is not None:
            p.grad.copy_(loop.dist.mean(p.grad))


def validate(model: MultiTaskModel, tasks: Sequence[TaskSchema], data: SplitData,
             device: torch.device, batch_size: int,
             workers: int = 0) -> tuple[float, dict[str, dict[str, Any]]]:
    """Mean task score (accuracy, or R² for regression) on ``data`` and per-task metrics
    (``workers`` loader processes read the images)."""
    outputs = predict(model, data.images, device, batch_size, data.features, workers)
    metrics = task_metrics(tasks, outputs, data.targets)
    scores = [task_score(t, metrics[t.name]) for t in tasks]
    finite = [s for s in scores if not math.isnan(s)]
    return (float(np.mean(finite)) if finite else math.nan), metrics


Logger = Callable[[int, dict[str, float]], None]


def _build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step LR factor: linear warm-up, then cosine to 0, step decay, or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.scheduler == "step":
            return float(cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_row(stats: EpochStats, score: float, metrics: dict[str, dict[str, Any]],
               tasks: Sequence[TaskSchema], lr: float) -> dict[str, float]:
    row: dict[str, float] = {"val/score": score, "train/images_per_second":
                             stats.images_per_second, "train/lr": lr}
    for t in tasks:
        row[f"train/loss/{t.name}"] = stats.loss[t.name]
        row[f"train/weight/{t.name}"] = stats.weights[t.name]
        for k in kind_spec(t).metric_keys:
            if k in metrics[t.name]:
                row[f"val/{k}/{t.name}"] = float(metrics[t.name][k])
    for pair, cos in stats.conflict.items():
        row[f"conflict/cosine/{pair}"] = cos
    return row


_STATE_FILE = re.compile(r"^[0-9a-f]{16}\.(pt|tmp)$")


@functools.lru_cache(maxsize=1)
def training_code_digest() -> str:
    """SHA-256 of the source of every mtl module training runs (``mtl.train``'s import
    closure): a resumable state written by other code never resumes."""
    return source_digest(module_closure(["mtl.train"]))


def state_path(cfg: TrainConfig, tasks: Sequence[TaskSchema], train: SplitData,
               val: SplitData, in_channels: int, world_size: int) -> Path:
    """Where this exact run's resumable state lives: keyed by the config, the tasks, the full
    content of the training and validation data (every pixel, and the teacher outputs when
    distilling: :meth:`SplitData.fingerprint`) and the training code."""
    key = json.dumps({"cfg": asdict(cfg), "tasks": [t.to_dict() for t in tasks],
                      "train": train.fingerprint(), "val": val.fingerprint(),
                      "code": training_code_digest(),
                      "in_channels": in_channels, "world_size": world_size},
                     sort_keys=True, default=str)
    return Path(cfg.checkpoint_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def remove_stale_states(keep: Path) -> list[Path]:
    """Delete the resumable states in ``keep``'s folder other than ``keep`` (they were written
    for other data, code or config and can never match again); returns what was removed."""
    if not keep.parent.is_dir():
        return []
    stale = [p for p in keep.parent.iterdir()
             if _STATE_FILE.match(p.name) and p.name != keep.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "batches": generator.get_state(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["batches"])


def _save_state(path: Path, loop: TrainLoop, epoch: int, result: FitResult, stale: int) -> None:
    """Atomic full-state checkpoint (a kill during the write leaves the previous one intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({
        "epoch": epoch, "step": loop.step, "stale": stale,
        "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(), "weighting": loop.weighting.state_dict(),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
        "rng": _rng_state(loop.generator),
        "best_state": result.best_state, "best_epoch": result.best_epoch,
        "best_score": result.best_score, "history": result.history,
    }, tmp)
    os.replace(tmp, path)


def _build_loop(tasks: Sequence[TaskSchema], cfg: TrainConfig, in_channels: int,
                num_features: int, device: torch.device, steps_per_epoch: int,
                dist_: Distributed) -> TrainLoop:
    generator = seed_everything(cfg.seed)
    model = create_model(cfg.architecture, cfg.backbone, tasks, in_channels=in_channels,
                         num_features=num_features, pretrained=cfg.pretrained,
                         architecture_kwargs=cfg.architecture_kwargs,
                         backbone_kwargs=cfg.backbone_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    weighting = create_weighting(cfg.weighting, len(tasks), **cfg.weighting_kwargs).to(device)
    if weighting.level == "gradient" and cfg.backend not in weighting.backends:
        raise ValueError(f"train.backend={cfg.backend!r} is not supported by train.weighting="
                         f"{cfg.weighting!r}; expected one of {list(weighting.backends)}")
    if (weighting.level == "gradient" and cfg.backend == "representation"
            and not model.supports_representation):
        raise ValueError(
            f"train.backend='representation' needs one representation shared by every task, "
            f"but train.architecture={cfg.architecture!r} gives each task its own "
            "(supports_representation is False): its task gradients would be orthogonal by "
            "construction and parameters below it would get their gradient twice. Use "
            "train.backend: full.")
    ddp: nn.Module | None = None
    if dist_.world_size > 1 and weighting.level == "loss":
        ddp = DistributedDataParallel(_EncodeDecode(model),
                                      device_ids=[device.index] if device.type == "cuda" else None)
    elif dist_.world_size > 1:
        # A gradient-level method gets no DDP wrapper. Its gradients come from
        # torch.autograd.grad and are written into .grad by hand, where DDP's reducer hooks
        # never fire (it would wait for them, or, after a plain backward, all-reduce the
        # shared gradients a second time). Instead multitask_backward all-reduces the
        # per-task gradients (ProcessGroupTaskGradients), every process aggregates the same
        # matrix, and the heads' per-task gradients travel in the same all-reduce: one
        # collective per step, nothing left to average afterwards. What DDP's constructor and
        # forward would still have done is done here: start from rank 0's weights and
        # weighting state, and use rank 0's buffers (_forward).
        _broadcast([*model.parameters(), *model.buffers(), *weighting.parameters(),
                    *weighting.buffers()])
    if cfg.compile:
        model.encode = torch.compile(model.encode)  # type: ignore[method-assign]
    params = list(model.parameters()) + list(weighting.parameters())
    optimizer = _build_optimizer(params, cfg)
    scheduler = _build_scheduler(optimizer, cfg, steps_per_epoch)
    # fp16 needs loss scaling (its range underflows small gradients); bf16 does not.
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(cfg, device) == torch.float16 else None
    return TrainLoop(model, weighting, tasks, optimizer, scheduler, device, cfg, generator,
                     scaler, ddp, dist_)


def _restore(loop: TrainLoop, state: dict[str, Any]) -> FitResult:
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    loop.weighting.load_state_dict(state["weighting"])
    if loop.scaler is not None and state["scaler"] is not None:
        loop.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], loop.generator)
    loop.step = state["step"]
    return FitResult(state["best_state"], state["best_epoch"], state["best_score"],
                     state["history"], resumed_from=state["epoch"])


def _resume_state(path: Path, cfg: TrainConfig, device: torch.device,
                  dist_: Distributed) -> dict[str, Any] | None:
    """The resumable state every process continues from (None: start afresh).

    Only global rank 0 writes the state, so on several machines the others' disks do not have
    it: rank 0 reads the file and broadcasts its bytes, and every process loads them (tensors
    and plain containers only), so every process resumes from the same epoch or none does.
    """
    if dist_.world_size == 1:
        if cfg.resume and path.is_file():
            return safe_load(path, "resumable training state", map_location=device)
        return None
    data = path.read_bytes() if cfg.resume and dist_.is_main and path.is_file() else None
    box: list[bytes | None] = [data]
    # Bytes, not the loaded tensors: unpickling tensor storages sent by broadcast_object_list
    # fails. NCCL sends through this process's GPU, gloo through the CPU.
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    if box[0] is None:
        return None
    state: dict[str, Any] = torch.load(io.BytesIO(box[0]), map_location=device,
                                       weights_only=True)
    return state


def fit(tasks: Sequence[TaskSchema], train: SplitData, val: SplitData, cfg: TrainConfig,
        in_channels: int, device: torch.device, log: Logger | None = None,
        dist_: Distributed | None = None) -> tuple[MultiTaskModel, FitResult]:
    """Build the model and weighting from ``cfg``, train, keep the best epoch on validation.

    An empty validation split is refused: selecting the epoch on the training split would report
    a training score as the validation score.
    """
    if len(val) == 0:
        raise ValueError(
            "train: expected a non-empty validation split for model selection, found 0 "
            "validation rows; give the split column 'val' rows or set select.val_fraction > 0 "
            "(used when the data has no split column)")
    dist_ = dist_ or Distributed()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    steps_per_epoch = math.ceil(math.ceil(train.epoch_size() / cfg.batch_size) / cfg.grad_accum)
    num_features = 0 if train.features is None else int(train.features.shape[1])
    loop = _build_loop(tasks, cfg, in_channels, num_features, device, steps_per_epoch, dist_)
    path = state_path(cfg, tasks, train, val, in_channels, dist_.world_size)
    if dist_.is_main:
        remove_stale_states(path)
    result = FitResult({}, -1, -math.inf)
    stale, first_epoch = 0, 0
    state = _resume_state(path, cfg, device, dist_)
    if state is not None:
        result = _restore(loop, state)
        stale, first_epoch = state["stale"], state["epoch"] + 1
        if log is not None and dist_.is_main:
            for row in result.history:  # replay, so the metrics files hold every epoch
                log(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})
    for epoch in range(first_epoch, cfg.epochs):
        if cfg.early_stopping and stale >= cfg.early_stopping:
            break
        stats = train_one_epoch(loop, train, epoch)
        score, metrics = validate(loop.model, tasks, val, device, cfg.batch_size * 4)
        if math.isnan(score):
            # NaN never compares greater: the first epoch would be kept silently.
            labelled = {t.name: int(metrics[t.name].get("n", 0)) for t in tasks}
            raise ValueError(
                f"train: expected a validation score for model selection, found none at epoch "
                f"{epoch + 1}: no task has a usable label in the validation split (labelled "
                f"validation rows per task: {labelled}; a regression task also needs two "
                "different values). Label the validation split for at least one task.")
        row = _epoch_row(stats, score, metrics, tasks, float(loop.scheduler.get_last_lr()[0]))
        if log is not None and dist_.is_main:
            log(epoch, row)
        if score > result.best_score or not result.best_state:
            result.best_state = {k: v.detach().cpu().clone()
                                 for k, v in loop.model.state_dict().items()}
            result.best_epoch, result.best_score, stale = epoch, score, 0
        else:
            stale += 1
        result.history.append({"epoch": epoch, **row})
        if dist_.is_main:
            _save_state(path, loop, epoch, result, stale)
    loop.feed = None  # its worker processes end with it
    loop.model.load_state_dict(result.best_state)
    return loop.model, result


def clear_state(cfg: TrainConfig, tasks: Sequence[TaskSchema], train: SplitData,
                val: SplitData, in_channels: int, world_size: int = 1) -> None:
    """Remove the resumable state of a finished run (its result is the stage's model file)."""
    state_path(cfg, tasks, train, val, in_channels, world_size).unlink(missing_ok=True)


def needs_torchrun(cfg: TrainConfig) -> bool:
    """True when ``train.nproc > 1`` and this process was not started by torchrun."""
    return cfg.nproc > 1 and "LOCAL_RANK" not in os.environ


def relaunch_under_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m mtl <argv>`` under torchrun with ``nproc`` processes; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "mtl", *argv]
    print(f"train: train.nproc={nproc}: launching {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, check=False).returncode


@contextmanager
def process_group(dist_: Distributed, device: torch.device) -> Iterator[None]:
    """Set up the torch.distributed process group for the block (nothing on one process)."""
    if dist_.world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if dist_.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class TrainStageResult:
    """What the main process of the train stage produced."""

    checkpoint: dict[str, Any]  # the mtl.checkpoint/1 payload that was saved
    fit: FitResult


def train_stage(cfg: TrainConfig, schema: Mapping[str, Any], meta: Mapping[str, Any],
                augmented: Path, save: Callable[[dict[str, Any]], None],
                open_log: Callable[[], Logger] | None = None,
                echo: Callable[[str], None] = print,
                teachers: Path | None = None) -> TrainStageResult | None:
    """The train stage on this process (one of ``train.nproc`` under torchrun).

    ``schema`` is the select stage's ``schema.json``, ``meta`` the augment stage's
    ``meta.json``; the train and validation splits are read from ``augmented``. With
    ``train.distill.enabled`` the teacher outputs are read from ``teachers`` (the teach stage's
    folder, :func:`mtl.distill.read_teachers`: refused unless written for this very training
    split); otherwise ``teachers`` is not read. On the main
    process ``open_log()`` gives the per-epoch logger and ``save(payload)`` receives the
    checkpoint; the resumable state is removed only after ``save`` returned. Other processes
    return None.
    """
    dist_ = Distributed.from_env()
    tasks = tuple(TaskSchema.from_dict(d) for d in schema["tasks"])
    cols = feature_columns(schema)
    stream = cfg.loader == "stream"
    train = load_split_data(augmented, "train", tasks, cols, stream)
    val = load_split_data(augmented, "val", tasks, cols, stream)
    if cfg.distill.enabled:
        if teachers is None:
            raise ValueError("train.distill.enabled is true: expected the teach stage's output "
                             "folder (mtl train --teachers data/teachers), found none given")
        soft = read_teachers(teachers, tasks, len(train), train.fingerprint())
        train = dataclasses.replace(train, teacher=soft)
    device = select_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    with process_group(dist_, device):
        if dist_.is_main:
            views = (f" ({train.epoch_size()} samples per epoch: online augmentation, "
                     f"{train.copies} variant(s) per image"
                     + (" and the original" if train.keep_original else "") + ")"
                     if train.transform is not None else "")
            echo(f"train: {len(train)} training images{views}, {len(val)} validation, "
                 f"device {device}"
                 f" × {dist_.world_size} process(es), tasks {[t.name for t in tasks]}, "
                 f"{len(cols)} tabular feature(s), weighting {cfg.weighting}"
                 + (f", distilled from {teachers} (weight {cfg.distill.weight}, temperature "
                    f"{cfg.distill.temperature}, per task {dict(cfg.distill.task_weights)} / "
                    f"{dict(cfg.distill.task_temperatures)})" if cfg.distill.enabled else ""))
        log = open_log() if open_log is not None and dist_.is_main else None
        _, result = fit(tasks, train, val, cfg, meta["channels"], device, log, dist_)
        if not dist_.is_main:
            return None
        payload = build_checkpoint(result.best_state, schema, cfg, meta["channels"],
                                   meta["image_size"], len(cols), result.best_epoch,
                                   result.best_score)
        save(payload)
        clear_state(cfg, tasks, train, val, meta["channels"], dist_.world_size)
        return TrainStageResult(payload, result)
