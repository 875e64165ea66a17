"""teach stage: the single-task baselines' outputs on the training split, for ``train.distill``.

DVC dependencies cannot be conditional, so this small stage sits between the ``baseline@*``
stages and ``train``: ``train`` depends on its output folder (``data/teachers``), never on the
baselines themselves. With ``train.distill.enabled: false`` (the default) it reads nothing and
returns the constant marker (:func:`mtl.distill.disabled_marker`), so a retrained baseline
leaves ``train`` cached. With it on, every task's baseline ``models/baselines/<task>.pt`` runs
over the training split exactly as the train stage loads it
(``load_split_data(augmented, "train", ...)``: with ``augment.online: false`` the stored
augmented copies too, each row getting the teacher's output on its own image; with online
augmentation the un-augmented originals, so the student's augmented view is matched to the
teacher's output on the original: offline distillation). The outputs are raw head outputs
(logits, standardised regression values), as :mod:`mtl.distill` expects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtl.checkpoint import CheckpointError, load_checkpoint, safe_load
from mtl.delta import SKIPPED_BASELINE_FORMAT
from mtl.device import select_device
from mtl.distill import teacher_manifest
from mtl.inference import predict
from mtl.schema import TaskSchema
from mtl.splits import SplitData, feature_columns, load_split_data

__all__ = ["TeachResult", "teach_stage"]


@dataclass(frozen=True)
class TeachResult:
    """``manifest`` (``teachers.json``; None: distillation off, write the constant marker) and
    the teachers' outputs ``{task: [N, K] float32}`` (empty when off)."""

    manifest: dict[str, Any] | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _teacher_path(baselines: Path, task: TaskSchema) -> tuple[Path, Mapping[str, Any]]:
    """``task``'s trained baseline checkpoint and its ``model`` record (architecture, input
    shape); a missing file or a skipped marker is an error."""
    path = baselines / f"{task.name}.pt"
    need = ("train.distill needs a trained single-task baseline per task as its teacher: set "
            "evaluate.baselines: true and run `dvc repro teach` (it trains the baselines first)")
    if not path.is_file():
        raise FileNotFoundError(f"teach: task {task.name!r}: expected its baseline checkpoint "
                                f"{path}, found no such file; {need}")
    raw = safe_load(path, "baseline checkpoint")
    if isinstance(raw, dict) and raw.get("format") == SKIPPED_BASELINE_FORMAT:
        raise CheckpointError(f"teach: task {task.name!r}: expected a trained baseline at {path}, "
                              f"found a 'skipped' marker ({raw.get('reason', 'skipped')}); {need}")
    model = raw.get("model") if isinstance(raw, dict) else None
    return path, model if isinstance(model, dict) else {}


def _check_inputs(path: Path, model: Mapping[str, Any], train: SplitData) -> None:
    """Refuse a baseline trained on other inputs than the training split (a stale checkpoint:
    the backbone pools globally, so other-sized images would still run and give meaningless
    soft targets; other channels or features would fail deep inside the model)."""
    _, h, w, c = (int(d) for d in train.images.shape)  # [N, H, W, C]
    f = 0 if train.features is None else int(train.features.shape[1])  # [N, F]
    expected = ([h, w], c, f)
    found = ([int(d) for d in model.get("image_size", [])], model.get("in_channels"),
             model.get("num_features", 0))
    if found != expected:
        raise CheckpointError(
            f"teach: {path}: expected a baseline trained on this training split's inputs "
            f"({expected[0]} images, {c} channel(s), {f} tabular feature(s)), found "
            f"{found[0]} images, {found[1]} channel(s), {found[2]} tabular feature(s); "
            f"rerun its baseline stage")


def teach_stage(enabled: bool, schema: Mapping[str, Any], augmented: Path, baselines: Path,
                device: str = "auto", batch_size: int = 512,
                echo: Callable[[str], None] = print) -> TeachResult:
    """The ``teach`` stage: the baselines' outputs on the training split, or nothing when off.

    ``enabled`` is ``train.distill.enabled`` (off: nothing is read, not even ``baselines``);
    ``schema`` the select stage's ``schema.json``; ``baselines`` the folder of the
    ``baseline@<task>`` checkpoints; ``device`` (``train.device``) and ``batch_size``
    (``evaluate.batch_size``) only set how inference runs.
    """
    if not enabled:
        echo("teach: train.distill.enabled is false: nothing read, the constant marker written")
        return TeachResult(None)
    tasks = tuple(TaskSchema.from_dict(d) for d in schema["tasks"])
    found = {t.name: _teacher_path(baselines, t) for t in tasks}  # every error before any work
    paths = {name: path for name, (path, _) in found.items()}
    train = load_split_data(augmented, "train", tasks, feature_columns(schema), stream=True)
    for path, model in found.values():
        _check_inputs(path, model, train)
    dev = select_device(device)
    outputs: dict[str, np.ndarray] = {}
    for t in tasks:
        ckpt = load_checkpoint(paths[t.name])
        if [x.name for x in ckpt.tasks] != [t.name] or ckpt.tasks[0] != t:
            raise CheckpointError(
                f"teach: {paths[t.name]}: expected a single-task baseline of task {t.name!r} "
                f"with the select stage's schema, found tasks "
                f"{[x.to_dict() for x in ckpt.tasks]}; rerun its baseline stage")
        out = predict(ckpt.model.to(dev), train.images, dev, batch_size, train.features)
        outputs[t.name] = np.ascontiguousarray(out[t.name], dtype=np.float32)  # [N, K]
        echo(f"teach: {t.name}: teacher {paths[t.name]} on {len(train)} training images")
    manifest = teacher_manifest(tasks, outputs, {n: _sha256(p) for n, p in paths.items()},
                                train.fingerprint())
    return TeachResult(manifest, outputs)
