"""Backends: turn per-task losses into accumulated ``.grad`` with a weighting method.

The trainer calls :func:`multitask_backward` once per step instead of ``loss.backward()``.

Cost (backward passes per step):

* loss-level methods: 1 (``sum_t w_t L_t``);
* gradient level, ``backend="full"``: the ``K`` per-task gradients of the present tasks are
  computed in **one vmapped backward** (``torch.autograd.grad(..., is_grads_batched=True)``) on
  accelerators, and in ``K`` backward passes of the retained graph on the CPU, where the loop is
  faster (the CPU batching rules of convolution / pooling backward concatenate per-sample
  results; LeNet, batch 256, 2 threads, benchmarks/results/weighting_cost.md: loop 1.73-1.81x,
  vmapped 1.83-2.70x a plain step);
  :func:`set_vmapped_gradients` forces either. If an op has no batching rule we fall back to
  ``K`` backward passes (warned once). The loop writes each task's shared gradient straight
  into its row of the ``[K, P]`` matrix (no stack-then-concatenate copies);
* gradient level, ``backend="representation"``: one vmapped backward through the heads only
  (per-task gradients w.r.t. ``z``) plus **one** backward of ``z`` through the backbone.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from mtl.weighting.base import Weighting

__all__ = [
    "TaskGradientSync",
    "backward_passes",
    "multitask_backward",
    "set_vmapped_gradients",
    "task_gradient_cosine",
]


# ``None``: automatic (vmapped on accelerators, one backward per task on the CPU); ``True`` /
# ``False`` force it. Flipped to False (for the process) the first time a vmapped backward raises.
_BATCHED_OK: bool | None = None


def set_vmapped_gradients(enabled: bool | None) -> None:
    """Force the vmapped per-task backward (``True``), one backward per task (``False``), or
    choose by device (``None``, the default: vmapped on accelerators, a loop on the CPU)."""
    global _BATCHED_OK
    _BATCHED_OK = None if enabled is None else bool(enabled)


def _vmapped(device: torch.device) -> bool:
    """Whether the per-task gradients on ``device`` are computed in one vmapped backward."""
    return device.type != "cpu" if _BATCHED_OK is None else _BATCHED_OK


def backward_passes(
    weighting: Weighting, backend: str = "full", device: torch.device | str | None = None
) -> str:
    """Human-readable cost of one step (for logs, docs and the benchmark)."""
    if weighting.level == "loss":
        return "1"
    if device is None and _BATCHED_OK is None:
        batched = "1 vmapped (T), T on CPU"
    else:
        batched = "1 vmapped (T)" if _vmapped(torch.device(device or "cpu")) else "T"
    if backend == "representation":
        return f"1 + heads ({batched})"
    return batched


class TaskGradientSync(Protocol):
    """Turns one process's per-task gradients into those of the global batch (DDP).

    Implemented by the trainer (``mtl.train``) over ``torch.distributed``; ``None`` (one process)
    everywhere in this module means "the local batch is the global batch". Every method is a
    collective: every process calls it once per step in the same order, with every task's row
    (exact zeros for a task unlabelled on this process).
    """

    def losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Local per-task mean losses ``[T]`` -> global ones ``[T]`` and global presence."""
        ...

    def share(self, grads: Tensor) -> Tensor:
        """``[T, X]``: row ``t`` times this process's share of task ``t``'s labels (local)."""
        ...

    def mean(self, grads: Tensor) -> Tensor:
        """``[T, X]`` gradients of the local per-task means -> those of the global means
        (the all-reduced sum of :meth:`share`)."""
        ...

    def gather(self, grads: Tensor) -> Tensor:
        """``[T, X_r]`` per-sample-block gradients -> ``[T, sum_r X_r]`` (rank order)."""
        ...

    def local(self, direction: Tensor) -> Tensor:
        """This process's slice ``[X_r]`` of a gathered ``[sum_r X_r]`` vector."""
        ...

    def sum(self, grads: Tensor) -> Tensor:
        """All-reduce sum of a flat gradient ``[P]`` (the backbone behind ``z``)."""
        ...


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """``p.grad += g`` (or ``p.grad = g`` when empty), so gradient accumulation works."""
    for p, g in zip(params, grads, strict=True):
        g = g.to(p.dtype)
        if p.grad is None:
            p.grad = g.detach().clone() if g._base is not None or not g.is_contiguous() else g
        else:
            p.grad.add_(g)


def _per_task_grads(
    losses: Tensor,
    inputs: Sequence[Tensor],
    grad_outputs: Tensor,
    n_flat: int,
    flat_dtype: torch.dtype | None = None,
    retain_graph: bool = True,
) -> tuple[Tensor, list[Tensor]]:
    """Gradients of ``grad_outputs @ losses`` w.r.t. each input, one row per task.

    ``grad_outputs [K, T]`` selects (and scales) the tasks. Returns the gradients of the first
    ``n_flat`` inputs flattened and concatenated into ``[K, P]`` (in ``flat_dtype``, default
    the inputs' dtype) and those of the other inputs as ``[K, *input.shape]``. One vmapped
    backward where :func:`_vmapped` says so; otherwise one backward per row, each row written
    straight into the ``[K, P]`` matrix. The graph is retained by default: the representation
    backend needs the part below ``z``, and keeping the saved tensors alive until the caller
    drops the graph costs no compute.
    """
    global _BATCHED_OK
    k = grad_outputs.shape[0]
    inputs = list(inputs)
    flat_inputs = inputs[:n_flat]
    dtype = flat_dtype or (flat_inputs[0].dtype if flat_inputs else grad_outputs.dtype)
    if k > 1 and _vmapped(grad_outputs.device):
        try:
            out = torch.autograd.grad(
                losses,
                inputs,
                grad_outputs=grad_outputs,
                is_grads_batched=True,
                retain_graph=True,  # kept so that the per-row fallback can still run
                allow_unused=True,
                materialize_grads=True,
            )
            # an input no task reaches gets one *unbatched* materialised zero: broadcast it
            out = tuple(g.expand(k, *x.shape) for g, x in zip(out, inputs, strict=True))
            flat = torch.cat([g.reshape(k, -1) for g in out[:n_flat]], dim=1).to(dtype)
            return flat, list(out[n_flat:])
        except RuntimeError as err:  # an op without a vmap batching rule
            _BATCHED_OK = False
            warnings.warn(
                f"vmapped per-task backward failed ({err}); falling back to one backward per "
                "task for the rest of this process",
                RuntimeWarning,
                stacklevel=3,
            )
    numel = sum(p.numel() for p in flat_inputs)
    flat = grad_outputs.new_empty((k, numel), dtype=dtype)
    rest: list[list[Tensor]] = [[] for _ in inputs[n_flat:]]
    for i in range(k):
        row = torch.autograd.grad(
            losses,
            inputs,
            grad_outputs=grad_outputs[i],
            retain_graph=retain_graph or i < k - 1,
            allow_unused=True,
            materialize_grads=True,
        )
        if n_flat:
            # one copy per row, with the dtype cast fused in (no stack, then concatenate)
            torch.cat([g.reshape(-1).to(dtype) for g in row[:n_flat]], out=flat[i])
        for acc, g in zip(rest, row[n_flat:], strict=True):
            acc.append(g)
    return flat, [torch.stack(gs) for gs in rest]


def _work_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """The dtype of their concatenation, with half precision promoted to float32.

    float64 stays float64; the methods never see float16/bfloat16 gradients.
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def multitask_backward(
    weighting: Weighting,
    losses: Tensor,
    present: Tensor,
    shared_params: Sequence[nn.Parameter],
    task_params: Sequence[nn.Parameter],
    representation: Tensor | None = None,
    backend: str = "full",
    loss_scale: float = 1.0,
    sync: TaskGradientSync | None = None,
) -> Tensor:
    """Back-propagate the task losses through ``weighting``; returns its weights ``[T]``.

    Args:
        weighting: the method.
        losses: ``[T]`` per-task mean losses, attached to the graph (0 for an absent task).
        present: ``[T]`` bool, task has at least one labelled sample in the batch.
        shared_params: the parameters every task depends on (``model.shared_parameters()``).
        task_params: every other trainable parameter the losses touch (the heads).
        representation: the shared representation ``z`` (required for ``"representation"``).
        backend: ``"full"`` or ``"representation"``; ignored for loss-level methods.
        loss_scale: the AMP ``GradScaler`` scale; ``1.0`` without AMP.
        sync: under DDP, how the per-task gradients of this process's shard become those of
            the global batch (gradient level only; see :class:`TaskGradientSync`). Every
            process then aggregates the same ``[T, P]`` matrix with the same losses and writes
            the same gradient: no DDP all-reduce of the shared parameters must follow.

    Post-condition: every parameter's ``.grad`` is *accumulated* with ``loss_scale`` times:
    loss level, the gradient of ``sum_t w_t L_t`` (+ the method's regulariser); gradient level,
    ``d`` for the shared parameters (``"full"``) or the backbone behind ``z``
    (``"representation"``, via one ``z.backward(d)``), and for the heads the gradient of their
    own task's loss (times :meth:`Weighting.head_scales`). Methods see unscaled gradients. If
    the scaled gradients overflow (``loss_scale != 1`` and a non-finite value), the plain sum
    is written so that the ``GradScaler`` sees the inf/NaN and skips the step.
    """
    num_tasks = weighting.num_tasks
    if losses.dim() != 1 or losses.shape[0] != num_tasks:
        raise ValueError(f"losses must have shape [{num_tasks}], got {tuple(losses.shape)}")
    if present.shape != losses.shape:
        raise ValueError(f"present must have shape [{num_tasks}], got {tuple(present.shape)}")
    present = present.to(device=losses.device, dtype=torch.bool)
    scale = float(loss_scale)

    if weighting.level == "loss":
        total, w = weighting.objective(losses, present)
        if total.requires_grad:
            (total * scale).backward() if scale != 1.0 else total.backward()
        return w.detach()

    if backend not in weighting.backends:
        raise ValueError(
            f"weighting {type(weighting).__name__} does not support backend={backend!r}; "
            f"supported: {weighting.backends}"
        )
    if backend == "representation" and representation is None:
        raise ValueError("backend='representation' needs the shared representation z")

    tasks = present.nonzero().squeeze(1)  # [K]
    k = tasks.numel()
    if k == 0 and sync is None:  # nothing labelled in this batch: no gradient at all
        return losses.new_zeros(num_tasks).detach()

    shared = [p for p in shared_params if p.requires_grad]
    heads = [p for p in task_params if p.requires_grad]
    if backend == "full":
        targets: list[Tensor] = [*shared, *heads]
        n_shared = len(shared)
    else:
        assert representation is not None
        targets, n_shared = [representation, *heads], 1
    # [K, T]: row i selects task tasks[i]; scaled by loss_scale so fp16 grads do not underflow.
    select = torch.zeros(k, num_tasks, dtype=losses.dtype, device=losses.device)
    select[torch.arange(k, device=losses.device), tasks] = scale
    work = _work_dtype(targets[:n_shared])
    if k > 0:
        flat, head_g = _per_task_grads(  # flat: [K, P]
            losses, targets, select, n_shared, flat_dtype=work
        )
    else:  # DDP, nothing labelled on this process: zero rows, but still in the collectives
        flat = losses.new_zeros((0, sum(t.numel() for t in targets[:n_shared])), dtype=work)
        head_g = [p.new_zeros((0, *p.shape)) for p in heads]
    if scale != 1.0:
        flat = flat / scale
    if sync is not None:
        flat, head_g, losses, present, tasks = _synchronise(
            sync, flat, head_g, tasks, losses, present, backend
        )
        k = tasks.numel()
    overflow = scale != 1.0 and not bool(torch.isfinite(flat).all())
    if overflow:
        direction, weights = flat.sum(0), present.to(flat.dtype)
    else:
        if k == num_tasks:
            grads = flat
        else:  # absent tasks' rows are exact zeros, as the method contract says
            grads = flat.new_zeros(num_tasks, flat.shape[1]).index_copy_(0, tasks, flat)
        z_seen = None
        if backend == "representation" and representation is not None:
            z_seen = representation.detach()
            if sync is not None:  # the global batch's z, in the order of the gathered rows
                z_seen = sync.gather(z_seen.reshape(1, -1)).view(-1, *z_seen.shape[1:])
        weighting.set_representation(z_seen)
        direction, weights = weighting.aggregate(grads, losses.detach().to(flat.dtype), present)
    direction = direction * scale if scale != 1.0 else direction  # [P]

    if backend == "full":
        sizes = [p.numel() for p in shared]
        pieces = torch.split(direction, sizes)
        _accumulate(shared, [d.view_as(p) for d, p in zip(pieces, shared, strict=True)])
    elif sync is None:
        assert representation is not None
        representation.backward(direction.view_as(representation).to(representation.dtype))
    else:
        # DDP: this process's rows of the global direction through its own backbone graph,
        # then the backbone gradients of all processes summed (each holds J_r^T d_r only)
        assert representation is not None
        mine = sync.local(direction).view_as(representation).to(representation.dtype)
        back = torch.autograd.grad(representation, shared, mine, allow_unused=True,
                                   materialize_grads=True)
        total = sync.sum(torch.cat([g.reshape(-1).to(work) for g in back]))
        pieces = torch.split(total, [p.numel() for p in shared])
        _accumulate(shared, [d.view_as(p) for d, p in zip(pieces, shared, strict=True)])

    if heads and k > 0:
        hs = None if overflow else weighting.head_scales(losses.detach(), present)
        if hs is None:
            _accumulate(heads, [g.sum(0) for g in head_g])
        else:
            coef = hs.to(losses.device).index_select(0, tasks)  # [K]
            _accumulate(heads, [torch.tensordot(coef.to(g.dtype), g, dims=1) for g in head_g])

    reg = weighting.regularization(losses.detach(), present)
    if reg is not None and reg.requires_grad:
        (reg * scale).backward()
    return weights.detach().to(losses.dtype)


def _synchronise(
    sync: TaskGradientSync,
    flat: Tensor,
    head_g: list[Tensor],
    tasks: Tensor,
    losses: Tensor,
    present: Tensor,
    backend: str,
) -> tuple[Tensor, list[Tensor], Tensor, Tensor, Tensor]:
    """Local per-task gradients (rows ``tasks``) -> the global batch's (rows: global tasks).

    Rows are scattered to all ``T`` tasks first (zeros where unlabelled here) so every process
    exchanges tensors of the same shape. ``full``: shared and head gradients are averaged as
    one ``[T, P + H]`` matrix (one all-reduce). ``representation``: the ``z`` gradients belong
    to different samples on each process, so they are gathered ``[T, sum_r B_r D]``; the heads
    are averaged.
    """
    num_tasks = losses.shape[0]

    def rows(m: Tensor) -> Tensor:  # [K, X] -> [T, X]
        return m.new_zeros(num_tasks, m.shape[1]).index_copy_(0, tasks, m)

    # flatten(1), not reshape(K, -1): with no task labelled on this process K = 0 and -1 is
    # ambiguous for a tensor of 0 elements
    heads_flat = [rows(g.flatten(1)) for g in head_g]  # each [T, numel(p)]
    glob_losses, glob_present = sync.losses(losses.detach())
    if backend == "full":
        n_shared = flat.shape[1]
        both = sync.mean(torch.cat([rows(flat), *[h.to(flat.dtype) for h in heads_flat]], 1))
        flat = both[:, :n_shared]
        head_parts = torch.split(both[:, n_shared:], [h.shape[1] for h in heads_flat], 1)
    else:
        # each process's mean loss over its shard -> the global mean: d L / d z_r scales by
        # (labelled on r) / (labelled anywhere), which ``mean`` applies to the gathered rows too
        flat = sync.gather(sync.share(rows(flat)))
        head_parts = torch.split(sync.mean(torch.cat(heads_flat, 1)) if heads_flat else
                                 flat.new_zeros(num_tasks, 0),
                                 [h.shape[1] for h in heads_flat], 1)
    glob_tasks = glob_present.nonzero().squeeze(1)
    flat = flat.index_select(0, glob_tasks)
    head_out = [h.index_select(0, glob_tasks).to(g.dtype).reshape(-1, *g.shape[1:])
                for h, g in zip(head_parts, head_g, strict=True)]
    return flat, head_out, glob_losses, glob_present, glob_tasks


def task_gradient_cosine(
    losses: Tensor,
    present: Tensor,
    shared_params: Sequence[nn.Parameter],
    retain_graph: bool = True,
) -> Tensor:
    """Pairwise cosine similarity ``[T, T]`` of the per-task gradients w.r.t. the shared params.

    For "task conflict" logging. NaN in the rows/columns of absent tasks (and of tasks whose
    gradient is exactly zero). Does not touch ``.grad``; with ``retain_graph=True`` (default) the
    graph survives for the actual :func:`multitask_backward` that follows.

    Cost: one backward pass per present task (one vmapped backward on accelerators), through
    the shared parameters only. The ``[K, K]`` Gram matrix is accumulated parameter by
    parameter (``G += g_p g_p^T`` with ``g_p [K, numel(p)]``), so no ``[K, P]`` copy of all
    the shared gradients is made (``K x P`` floats: 0.8 GB for 8 tasks on a ResNet-50), and
    each task's gradients are dropped as soon as they are folded in where the backward runs
    per task. The result stays on the device: callers read it once (``.cpu()`` / ``.tolist()``),
    not with one synchronising ``float()`` per pair.
    """
    t = losses.shape[0]
    present = present.to(device=losses.device, dtype=torch.bool)
    out = torch.full((t, t), float("nan"), dtype=losses.dtype, device=losses.device)
    tasks = present.nonzero().squeeze(1)
    k = tasks.numel()
    shared = [p for p in shared_params if p.requires_grad]
    if k == 0 or not shared:
        return out
    dtype = _work_dtype(shared)
    select = torch.zeros(k, t, dtype=losses.dtype, device=losses.device)
    select[torch.arange(k, device=losses.device), tasks] = 1.0
    gram = torch.zeros(k, k, dtype=dtype, device=losses.device)
    batched: Sequence[Tensor] | None = None
    if k > 1 and _vmapped(losses.device):
        try:  # one vmapped backward: per parameter [K, *p.shape]
            batched = torch.autograd.grad(
                losses,
                shared,
                grad_outputs=select,
                is_grads_batched=True,
                retain_graph=True,  # kept so that the per-task loop can still run
                allow_unused=True,
                materialize_grads=True,
            )
        except RuntimeError as err:  # an op without a vmap batching rule
            set_vmapped_gradients(False)
            warnings.warn(
                f"vmapped per-task backward failed ({err}); falling back to one backward per "
                "task for the rest of this process",
                RuntimeWarning,
                stacklevel=2,
            )
    if batched is not None:
        for g, p in zip(batched, shared, strict=True):
            # [K, numel(p)]; a parameter no task reaches gets one unbatched zero: broadcast
            g = g.expand(k, *p.shape).reshape(k, -1).to(dtype)
            gram.addmm_(g, g.T)
    else:
        # one backward per task; G[i, j] = sum_p <g_i,p, g_j,p> with only task i's and the
        # earlier tasks' per-parameter gradients alive (row i is folded in, then kept for j > i)
        rows: list[list[Tensor]] = []
        for i in range(k):
            row = torch.autograd.grad(
                losses,
                shared,
                grad_outputs=select[i],
                retain_graph=retain_graph or i < k - 1,
                allow_unused=True,
                materialize_grads=True,
            )
            flat_row = [g.reshape(-1).to(dtype) for g in row]  # views unless a cast is needed
            for j, other in enumerate([*rows, flat_row]):
                gram[i, j] = sum(torch.dot(a, b) for a, b in zip(flat_row, other, strict=True))
            rows.append(flat_row)
        gram = torch.where(torch.ones_like(gram, dtype=torch.bool).tril(), gram, gram.T)
    norms = gram.diagonal().clamp_min(0).sqrt()  # [K]
    cos = (gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(dtype).tiny))
    cos = cos.clamp(-1.0, 1.0)
    dead = norms == 0
    cos = cos.masked_fill(dead[:, None] | dead[None, :], float("nan"))
    out[tasks.unsqueeze(1), tasks.unsqueeze(0)] = cos.to(out.dtype)
    return out.detach()
