"""Knowledge distillation from the single-task baselines: the teacher-targets format and the loss.

``train.distill`` (off by default) trains the multi-task model with the single-task baselines'
outputs as extra, soft targets. The ``teach`` stage (:mod:`mtl.teach`) runs every baseline
``models/baselines/<task>.pt`` over the training split, exactly as the train stage loads it,
and writes ``data/teachers/``: one ``<task>.npy`` per task (float32 ``[N, K]``, the raw head
output: logits or the standardised regression value) and ``teachers.json`` (per task the
checkpoint's SHA-256, head size, kind, ``N`` and the SHA-256 of the array itself, so a shuffled
or swapped ``<task>.npy`` is refused; the training split's fingerprint). With
distillation off it writes only :func:`disabled_marker`, byte-identical every time, so a
retrained baseline changes nothing the train stage depends on. This module is shared by the
teach and train stages; neither imports the other.

The loss of task ``t`` with student output ``z``, teacher output ``s``, weight ``w_t`` and
temperature ``T_t`` is, on the samples that carry the task's label (the hard loss's mask, so a
task absent from a batch stays absent for every weighting method)::

    L_t = (1 - w_t) · hard_t(z, y) + w_t · soft_t(z, s)

with ``soft_t`` by kind (:meth:`mtl.tasks.KindSpec.soft_loss`): ``T² · KL(softmax(s/T) ‖
softmax(z/T))`` for multiclass, the per-output Bernoulli KL ``T² · [BCE(z/T, σ(s/T)) −
H(σ(s/T))]`` for binary and multilabel, ``MSE(z, s)`` for regression (no temperature). The
weighting method sees ``L_t`` as the task's loss, so every method works unchanged.

This is soft-target distillation per task (Hinton, Vinyals & Dean 2015, *Distilling the
Knowledge in a Neural Network*), the way Clark et al. (ACL 2019, *BAM! Born-Again Multi-Task
Networks for Natural Language Understanding*) distil single-task teachers into a multi-task
student. Li & Bilen (ECCV-W 2020, *Knowledge Distillation for Multi-task Learning*), named by
the issue, distil *features* instead: the student's shared representation is mapped through a
learned task-specific adaptor onto each single-task teacher's features. Output distillation was
chosen because it works with every architecture and backbone (heads always produce the
teacher's output shape) and needs no feature alignment or adaptors; feature distillation is
left for later.

Offline distillation: the teacher's outputs are computed once, on the training split as the
augment stage wrote it. With ``augment.online: false`` every stored row (original or augmented
copy) gets the teacher's output on its own image; with online augmentation the teacher saw the
un-augmented original, and the student's augmented view of it is matched to that output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from mtl.data.io import DataError
from mtl.schema import TaskSchema
from mtl.tasks import head_size, kind_spec, label_mask

__all__ = [
    "FORMAT",
    "TEACHERS_FILE",
    "TeacherError",
    "disabled_marker",
    "distill_task_loss",
    "read_teachers",
    "teacher_manifest",
    "write_teachers",
]

#: Format of ``teachers.json``.
FORMAT = "mtl.teachers/1"
#: The manifest's file name inside the teach stage's output folder.
TEACHERS_FILE = "teachers.json"

_RUN_TEACH = "run `dvc repro teach` (or `mtl teach`)"


class TeacherError(DataError):
    """The teach stage's output does not match what the train stage distils from."""


def disabled_marker() -> bytes:
    """``teachers.json`` when distillation is off: a constant, byte-identical every time."""
    return (json.dumps({"format": FORMAT, "enabled": False}, sort_keys=True) + "\n").encode()


def _array_sha256(array: np.ndarray) -> str:
    """SHA-256 of a teacher array's float32 content (row order included)."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _check_finite(where: str, task: str, array: np.ndarray, advice: str) -> None:
    """Refuse NaN/inf teacher outputs: on a labelled row they would make the task's loss
    non-finite mid-training, reported as a divergence of the student instead of a bad teacher."""
    bad = ~np.isfinite(array.reshape(len(array), -1))  # [N, K]
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise TeacherError(f"{where}: expected finite teacher outputs for task {task!r}, found "
                           f"{int(bad.sum())} non-finite value(s) in {len(rows)} row(s) (first: "
                           f"row {int(rows[0])}); {advice}")


def teacher_manifest(tasks: Sequence[TaskSchema], outputs: Mapping[str, np.ndarray],
                     checkpoint_sha256: Mapping[str, str], fingerprint: str) -> dict[str, Any]:
    """``teachers.json`` of distillation on: per task its kind, head size, ``N``, the
    teacher checkpoint's SHA-256 and the SHA-256 of the output array; ``fingerprint`` is the
    training split's (:meth:`mtl.splits.SplitData.fingerprint`, taken before any teacher is
    attached). Non-finite outputs are refused (:class:`TeacherError`)."""
    for t in tasks:
        _check_finite("teach", t.name, outputs[t.name],
                      f"its baseline (baseline@{t.name}) is broken: retrain it")
    n = {int(outputs[t.name].shape[0]) for t in tasks}
    if len(n) > 1:
        raise ValueError(f"teach: expected one row count for every task, found {sorted(n)}")
    return {
        "format": FORMAT, "enabled": True, "n": n.pop() if n else 0,
        "train_fingerprint": fingerprint,
        "tasks": {t.name: {"kind": t.kind.value, "head": int(outputs[t.name].shape[1]),
                           "n": int(outputs[t.name].shape[0]),
                           "checkpoint_sha256": checkpoint_sha256[t.name],
                           "sha256": _array_sha256(outputs[t.name])} for t in tasks},
    }


def write_teachers(folder: Path, manifest: Mapping[str, Any] | None,
                   outputs: Mapping[str, np.ndarray]) -> None:
    """Write the teach stage's folder: ``<task>.npy`` per task (float32) and ``teachers.json``
    (``manifest``; None: :func:`disabled_marker`). Files of an earlier run are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npy"):
        old.unlink()
    for name, array in outputs.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array, dtype=np.float32))
    body = disabled_marker() if manifest is None else (
        json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (folder / TEACHERS_FILE).write_bytes(body)


def read_teachers(folder: Path, tasks: Sequence[TaskSchema], n: int,
                  fingerprint: str) -> dict[str, np.ndarray]:
    """The teachers' outputs ``{task: [N, K] float32}`` for the training split of ``n`` rows
    and ``fingerprint``; a folder written for other data, other tasks or with distillation off
    is refused (:class:`TeacherError`, expected vs found), a missing one too, and so is an
    array whose content is not the one ``teachers.json`` records (rows shuffled, a file from
    another run) or holds NaN/inf."""
    path = folder / TEACHERS_FILE
    if not path.is_file():
        raise TeacherError(f"train.distill.enabled is true: expected the teach stage's soft "
                           f"targets in {path}, found no such file; {_RUN_TEACH} first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or not manifest.get("enabled", False):
        raise TeacherError(f"{path}: expected teacher outputs written with train.distill."
                           f"enabled true ({FORMAT}), found {manifest}; {_RUN_TEACH}")
    if manifest.get("n") != n or manifest.get("train_fingerprint") != fingerprint:
        raise TeacherError(
            f"{path}: expected teacher outputs for this training split ({n} rows, fingerprint "
            f"{fingerprint[:16]}), found {manifest.get('n')} rows, fingerprint "
            f"{str(manifest.get('train_fingerprint'))[:16]}: the data changed since; "
            f"{_RUN_TEACH}")
    recorded = manifest.get("tasks", {})
    out: dict[str, np.ndarray] = {}
    for t in tasks:
        entry = recorded.get(t.name)
        file = folder / f"{t.name}.npy"
        if entry is None or not file.is_file():
            raise TeacherError(f"{path}: expected teacher outputs for every task "
                               f"{[x.name for x in tasks]}, found none for {t.name!r} "
                               f"(recorded: {sorted(recorded)}); {_RUN_TEACH}")
        array = np.load(file, mmap_mode=None, allow_pickle=False)
        expected = (n, head_size(t))
        if tuple(array.shape) != expected or entry.get("head") != head_size(t) \
                or entry.get("kind") != t.kind.value:
            raise TeacherError(
                f"{file}: expected the teacher output of task {t.name!r} of shape {list(expected)} "
                f"({t.kind.value}), found shape {list(array.shape)} (recorded head "
                f"{entry.get('head')}, kind {entry.get('kind')}); {_RUN_TEACH}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest = _array_sha256(array)
        if entry.get("sha256") != digest:
            raise TeacherError(
                f"{file}: expected the teacher outputs {path.name} records for task {t.name!r} "
                f"(sha256 {str(entry.get('sha256'))[:16]}), found content with sha256 "
                f"{digest[:16]}: the file was changed or comes from another teach run; "
                f"{_RUN_TEACH}")
        _check_finite(str(file), t.name, array, _RUN_TEACH)
        out[t.name] = array
    return out


def distill_task_loss(task: TaskSchema, output: Tensor, target: Tensor, teacher: Tensor,
                      weight: float, temperature: float) -> tuple[Tensor, int]:
    """``(1 - w) · hard + w · soft`` of one task over the samples that carry its label.

    ``output`` ``[B, K]`` is the student's head output, ``target`` ``[B]`` (``[B, K]``
    multilabel, ``NaN`` = missing) and ``teacher`` ``[B, K]`` the teacher's raw output for the
    same rows. Returns the loss and the count of labelled samples, like
    :func:`mtl.tasks.masked_task_loss` (``w = 0`` is exactly it, ``w = 1`` exactly the soft
    loss; no labelled sample: ``0.0`` attached to the graph).
    """
    present = label_mask(target)
    n = int(present.sum())
    if n == 0:
        return output.sum() * 0.0, 0  # connected to the graph, zero gradient (as masked_task_loss)
    spec = kind_spec(task)
    z = output[present].float()
    if weight == 0.0:
        return spec.loss(z, target[present]), n
    soft = spec.soft_loss(z, teacher[present].float(), temperature)
    if weight == 1.0:
        return soft, n
    return (1.0 - weight) * spec.loss(z, target[present]) + weight * soft, n
