"""train stage: a shared backbone with one head per task, balanced by a weighting method.

``train_one_epoch`` runs one pass over the training data, ``validate`` scores the validation
split, and ``fit`` wires them: it keeps the state of the epoch with the best validation score
(the test split is never seen here) and logs per-epoch metrics through a callback.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl.config import TrainConfig
from mtl.evaluate import predict, task_metrics, task_score, to_model_input
from mtl.models import create_model
from mtl.models.base import MultiTaskModel
from mtl.schema import TaskSchema
from mtl.tasks import masked_task_loss
from mtl.weighting import create_weighting
from mtl.weighting.backward import multitask_backward
from mtl.weighting.base import Weighting

__all__ = [
    "EpochStats",
    "FitResult",
    "NonFiniteLossError",
    "SplitData",
    "fit",
    "seed_everything",
    "select_device",
    "train_one_epoch",
    "validate",
]


class NonFiniteLossError(FloatingPointError):
    """A task loss became NaN or infinite; the message names the task and the step."""


@dataclass(frozen=True)
class SplitData:
    """One split in memory: ``images [N, H, W, C]`` uint8 and ``targets {task: [N]}`` float32."""

    images: Tensor
    targets: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def target_matrix(self, tasks: Sequence[TaskSchema]) -> Tensor:
        """``[N, T]`` float32 with NaN for missing labels, in ``tasks`` order."""
        return torch.from_numpy(np.stack([self.targets[t.name] for t in tasks], axis=1))


@dataclass
class EpochStats:
    """What one training epoch measured."""

    loss: dict[str, float]
    weights: dict[str, float]
    images_per_second: float
    steps: int


@dataclass
class FitResult:
    """The best model state (on validation) and the history of every epoch."""

    best_state: dict[str, Tensor]
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for batch order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is available "
                           "(use 'auto' to fall back to the CPU)")
    return torch.device(name)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _autocast(device: torch.device, amp: bool) -> Any:
    """bf16 autocast on CUDA when supported (no scaler needed), fp16 otherwise; off on CPU."""
    if not amp or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _needs_scaler(device: torch.device, amp: bool) -> bool:
    return amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def train_one_epoch(model: MultiTaskModel, weighting: Weighting, tasks: Sequence[TaskSchema],
                    data: SplitData, optimizer: torch.optim.Optimizer, device: torch.device,
                    cfg: TrainConfig, generator: torch.Generator,
                    scaler: torch.amp.GradScaler | None = None, epoch: int = 0) -> EpochStats:
    """One pass over ``data`` in seeded random order; returns mean per-task losses and weights."""
    model.train()
    targets = data.target_matrix(tasks)  # [N, T]
    shared = list(model.shared_parameters())
    head = [p for t in tasks for p in model.task_parameters(t.name)]
    loss_sum = torch.zeros(len(tasks), dtype=torch.float64)
    weight_sum = torch.zeros(len(tasks), dtype=torch.float64)
    loss_count = torch.zeros(len(tasks), dtype=torch.float64)
    steps, seen, start = 0, 0, time.perf_counter()
    for idx in _batches(len(data), cfg.batch_size, generator):
        x = to_model_input(data.images[idx], device)
        y = targets[idx].to(device)  # [B, T]
        with _autocast(device, cfg.amp):
            z = model.encode(x)
            outputs = model.decode(z)
        per_task = [masked_task_loss(t, outputs[t.name], y[:, i]) for i, t in enumerate(tasks)]
        losses = torch.stack([loss for loss, _ in per_task])  # [T]
        present = torch.tensor([n > 0 for _, n in per_task], device=losses.device)
        if not torch.isfinite(losses).all():
            bad = [t.name for t, v in zip(tasks, losses.tolist(), strict=True) if not math.isfinite(v)]
            raise NonFiniteLossError(f"non-finite loss for task(s) {bad} at epoch {epoch}, "
                                     f"step {steps}: {losses.tolist()}")
        optimizer.zero_grad(set_to_none=True)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        w = multitask_backward(weighting, losses, present, shared, head, representation=z,
                               backend=cfg.backend, loss_scale=scale)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        weighting.step_end(losses.detach(), present)
        pres = present.cpu().double()
        loss_sum += losses.detach().cpu().double() * pres
        weight_sum += w.detach().cpu().double() * pres
        loss_count += pres
        steps += 1
        seen += len(idx)
    elapsed = time.perf_counter() - start
    mean_loss = loss_sum / loss_count.clamp(min=1)
    weighting.epoch_end(mean_loss.float(), loss_count > 0)
    return EpochStats(
        loss={t.name: float(mean_loss[i]) for i, t in enumerate(tasks)},
        weights={t.name: float(weight_sum[i] / max(loss_count[i], 1)) for i, t in enumerate(tasks)},
        images_per_second=seen / elapsed if elapsed > 0 else math.nan,
        steps=steps,
    )


def validate(model: MultiTaskModel, tasks: Sequence[TaskSchema], data: SplitData,
             device: torch.device, batch_size: int) -> tuple[float, dict[str, dict[str, Any]]]:
    """Mean task score (accuracy, or R² for regression) on ``data`` and per-task metrics."""
    metrics = task_metrics(tasks, predict(model, data.images, device, batch_size), data.targets)
    scores = [task_score(t, metrics[t.name]) for t in tasks]
    finite = [s for s in scores if not math.isnan(s)]
    return (float(np.mean(finite)) if finite else math.nan), metrics


Logger = Callable[[int, dict[str, float]], None]


def fit(tasks: Sequence[TaskSchema], train: SplitData, val: SplitData, cfg: TrainConfig,
        in_channels: int, device: torch.device, log: Logger | None = None) -> tuple[
            MultiTaskModel, FitResult]:
    """Build the model and weighting from ``cfg``, train for ``cfg.epochs`` and keep the best."""
    generator = seed_everything(cfg.seed)
    model = create_model(cfg.architecture, cfg.backbone, tasks, in_channels=in_channels,
                         pretrained=cfg.pretrained).to(device)
    weighting = create_weighting(cfg.weighting, len(tasks), **cfg.weighting_kwargs).to(device)
    params = list(model.parameters()) + list(weighting.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if _needs_scaler(device, cfg.amp) else None
    result: FitResult | None = None
    for epoch in range(cfg.epochs):
        stats = train_one_epoch(model, weighting, tasks, train, optimizer, device, cfg,
                                generator, scaler, epoch)
        score, metrics = validate(model, tasks, val if len(val) else train, device,
                                  cfg.batch_size * 4)
        row: dict[str, float] = {"val/score": score, "train/images_per_second":
                                 stats.images_per_second}
        for t in tasks:
            row[f"train/loss/{t.name}"] = stats.loss[t.name]
            row[f"train/weight/{t.name}"] = stats.weights[t.name]
            for k in ("accuracy", "macro_f1", "mae", "rmse"):
                if k in metrics[t.name]:
                    row[f"val/{k}/{t.name}"] = float(metrics[t.name][k])
        if log is not None:
            log(epoch, row)
        if result is None or score > result.best_score:
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            history = result.history if result is not None else []
            result = FitResult(best, epoch, score, history)
        result.history.append({"epoch": epoch, **row})
    assert result is not None
    model.load_state_dict(result.best_state)
    return model, result
