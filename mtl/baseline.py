"""Single-task baselines: one model per task, with the multi-task model's backbone, budget and seed.

The ``baseline`` DVC stage is a ``matrix`` over ``dataset.tasks``: instance ``baseline@task<i>``
trains task ``i`` alone and writes ``models/baselines/<task>.pt``, each instance cached on its
own. A baseline is the multi-task run with everything that only matters for several tasks taken
out (:data:`MTL_ONLY_KEYS`): the shared encoder (``train.backbone``) with one head (the ``hps``
architecture), plain loss (no weighting method, no distillation), the same optimiser, schedule,
epochs, batch size and seed. The stage lists exactly the other ``train`` keys
(:func:`shared_train_keys`) in ``dvc.yaml``, so changing a multi-task setting reruns ``train``
and never a baseline.

Model selection is the multi-task run's: the best epoch on the validation split, scored with the
task's own score. The test split is not read here (only by the evaluate stage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mtl.config import DistillConfig, TrainConfig
from mtl.delta import skipped_baseline
from mtl.train import TrainStageResult, train_stage

__all__ = [
    "MTL_ONLY_KEYS",
    "baseline_config",
    "baseline_schema",
    "baseline_stage",
    "shared_train_keys",
]

#: ``train`` keys a single-task baseline does not read: they only matter for several tasks.
MTL_ONLY_KEYS: frozenset[str] = frozenset({
    "architecture", "architecture_kwargs", "weighting", "weighting_kwargs", "backend",
    "log_conflict_every", "distill"})

def shared_train_keys() -> tuple[str, ...]:
    """The ``train`` keys a baseline reads (listed as ``train.<key>`` params in ``dvc.yaml``)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in MTL_ONLY_KEYS)


def baseline_config(cfg: TrainConfig, task: str) -> TrainConfig:
    """``cfg`` for a single-task model of ``task``: one head on the same backbone, no weighting,
    no distillation (the baselines are the teachers).

    Its resumable state lives in its own folder below ``cfg.checkpoint_dir`` (the train stage
    removes states it does not recognise in its folder).
    """
    return dataclasses.replace(
        cfg, architecture="hps", architecture_kwargs={}, weighting="equal", weighting_kwargs={},
        backend="full", log_conflict_every=0, distill=DistillConfig(),
        checkpoint_dir=str(Path(cfg.checkpoint_dir) / f"baseline-{task}"))


def baseline_schema(schema: Mapping[str, Any], task: str) -> dict[str, Any] | None:
    """The select stage's ``schema.json`` restricted to ``task`` (None: the task was dropped)."""
    kept = [d for d in schema.get("tasks", []) if d.get("name") == task]
    return {**schema, "tasks": kept} if kept else None


def baseline_stage(cfg: TrainConfig, task: str, enabled: bool, schema: Mapping[str, Any],
                   meta: Mapping[str, Any], augmented: Path,
                   save: Callable[[dict[str, Any]], None],
                   echo: Callable[[str], None] = print) -> TrainStageResult | None:
    """One ``baseline@<task>`` stage: train ``task`` alone, or record why it is skipped.

    ``enabled`` is ``evaluate.baselines``. ``save`` receives the checkpoint payload (or the
    :func:`mtl.delta.skipped_baseline` marker). Returns the training result; None when skipped
    or on a non-main process under torchrun.
    """
    if not enabled:
        save(skipped_baseline(task, "evaluate.baselines is false"))
        echo(f"baseline: {task}: skipped (evaluate.baselines is false)")
        return None
    single = baseline_schema(schema, task)
    if single is None:
        save(skipped_baseline(task, "task dropped by the select stage"))
        echo(f"baseline: {task}: skipped (dropped by the select stage)")
        return None
    return train_stage(baseline_config(cfg, task), single, meta, augmented, save,
                       open_log=None, echo=echo)
