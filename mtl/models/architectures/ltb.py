"""Learning to Branch (Guo, Lee & Ulbricht 2020, ICML)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.architectures.common import (
    FeatureFusion,
    TaskHeads,
    check_heads,
    decode_per_task,
    unique_trainable,
)
from mtl.models.architectures.registry import BackboneFactory, register_architecture
from mtl.models.base import Backbone, MultiTaskModel

__all__ = ["LTB"]


class LTB(MultiTaskModel):
    """Learning to Branch (Guo, Lee & Ulbricht 2020, "Learning to Branch for Multi-Task
    Learning", ICML), as LibMTL ports it: ``T`` backbone columns (one per task) whose every
    stage input is a branching choice among the previous layer's ``T`` nodes::

        n_p^0 = stem_p(x)                                          (layer-0 nodes, p = 1..T)
        n_t^(j+1) = stage_t,j(sum_p alpha[j, t, p] n_p^j)          (j = 0..S-1)
        z_t = concat(neck_t(n_t^S), mlp(features));  out_t = head_t(z_t)

    Branching starts at the first live layer: a choice among nodes that are equal in every
    column changes nothing, so its logits would be dead (no effect on any output, zero
    gradient). The leading modules of ``stem, stage_0, stage_1, ...`` that have no parameters
    (``smallcnn``'s stem is ``nn.Identity()``) compute the same tensor in every column: they
    run once (column 0's), and the first choice is made before the first stage whose input
    comes from a module with parameters. So ``theta`` has ``L = S - k`` layers, ``k`` the
    number of parameter-free leading modules (``L = S`` for a conv stem, ``S - 1`` for
    ``smallcnn``), and every branching logit can change the output; ``L = 0`` is refused.

    ``theta [L, T, T]`` are the branching logits (child ``t``'s over its parents ``p``);
    :meth:`branching_probabilities` is ``softmax(theta)``. What ``alpha`` is, precisely:

    * training, step ``s < warmup_steps`` (warm-up): ``alpha = softmax(theta)`` (soft mixing;
      ``theta`` starts at 0, i.e. the mean of the parents, and learns);
    * training, ``s >= warmup_steps``: a hard Gumbel-softmax sample (straight-through:
      one-hot forward, gradient of ``softmax((theta + g) / tau)``), with temperature
      ``tau(s) = tau_initial / sqrt(1 + (s - warmup_steps) / tau_decay_steps)``;
    * evaluation: the warm-up's ``softmax(theta)`` before ``warmup_steps``, afterwards the
      deterministic tree ``one_hot(argmax theta)`` (straight-through over ``softmax(theta)``).

    ``s`` is the ``num_steps`` buffer, the count of training-mode forward passes (one per
    micro-batch; saved in the state dict, so a resumed run continues the schedule). The Gumbel
    noise of step ``s`` comes from a generator seeded with ``(noise_seed, s)``, ``noise_seed``
    drawn from torch's RNG at construction: every DDP rank samples the same tree and a resumed
    run the same noise.

    Also what is *not* done: every layer has exactly ``T`` nodes (LibMTL's design space; the
    paper's tree can have another number of nodes per layer), the branching logits are trained
    jointly with the weights on the training loss (no separate split), and the final tree is
    used in place (no retraining of the chosen architecture from scratch). Differences from
    LibMTL: its warm-up mixes with all-ones weights (sums the parents, ``theta`` untrained),
    its temperature is ``(epochs / 20) / sqrt(epoch + 1)`` per epoch (here per
    ``tau_decay_steps`` steps, ``tau_initial = 5`` = its value at 100 epochs), and it samples
    in evaluation too.

    Representation: none shared: ``encode`` returns the per-task ``[B, T, D]`` and
    ``supports_representation`` is False (after branching, tasks may share no node at all).
    Shared parameters: every column's stem and stages but the last, ``theta`` for layers
    ``0..L-2`` (``shared_logits``, ``None`` when ``L == 1``), the feature MLP. Task ``t``'s:
    its column's last stage and neck, ``theta[L-1, t]`` (only child ``t`` of the last layer
    uses it) and ``head_t``.
    Cost: T backbones.
    """

    supports_representation = False
    shared_logits: nn.Parameter | None
    num_steps: Tensor
    noise_seed: Tensor

    def __init__(
        self,
        backbones: Sequence[Backbone],
        heads: Mapping[str, int],
        num_features: int = 0,
        warmup_steps: int = 100,
        tau_initial: float = 5.0,
        tau_decay_steps: int = 100,
        head_hidden: int = 64,
        feature_hidden: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        heads = check_heads(heads)
        if len(backbones) != len(heads):
            raise ValueError(f"need one backbone column per task: {len(backbones)} vs {len(heads)}")
        if warmup_steps < 0 or tau_initial <= 0 or tau_decay_steps < 1:
            raise ValueError(
                "expected warmup_steps >= 0, tau_initial > 0, tau_decay_steps >= 1; got "
                f"{warmup_steps}, {tau_initial}, {tau_decay_steps}"
            )
        first = backbones[0]
        if not all(b.is_staged for b in backbones):
            raise TypeError("LTB needs staged backbones (Backbone.set_structure)")
        for b in backbones[1:]:
            if b.stage_channels != first.stage_channels or b.out_features != first.out_features:
                raise ValueError("all LTB columns must have the same architecture")
        t, s = len(heads), first.num_stages
        self.columns = nn.ModuleList(backbones)
        # k = how many leading modules of [stem, stage_0, ...] have no parameters in any column:
        # they map x to the same tensor in every column, so a choice among their outputs is dead.
        chains = [[b.stem, *b.stages] for b in backbones]
        k = 0
        while k <= s and all(not any(True for _ in c[k].parameters()) for c in chains):
            k += 1
        if s - k < 1:
            raise ValueError(
                f"LTB needs at least one live branching layer, i.e. a stage whose input comes "
                f"from a module with parameters; got a backbone with {s} stage(s) whose first "
                f"{k} module(s) (stem included) have no parameters"
            )
        self.num_shared_prefix = k
        # theta split by owner: layers 0..L-2 (shared) and each child of the last layer (task)
        if s - k > 1:
            self.shared_logits = nn.Parameter(torch.zeros(s - k - 1, t, t))
        else:
            self.register_parameter("shared_logits", None)
        self.last_logits = nn.ParameterList(nn.Parameter(torch.zeros(t)) for _ in range(t))
        self.warmup_steps, self.tau_initial, self.tau_decay_steps = (
            warmup_steps,
            tau_initial,
            tau_decay_steps,
        )
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("noise_seed", torch.randint(0, 2**31 - 1, ()))
        self.fusion = FeatureFusion(first.out_features, num_features, feature_hidden)
        self.heads = TaskHeads(self.fusion.out_features, heads, head_hidden, dropout)
        self.representation_size = self.fusion.out_features

    def _columns(self) -> list[Backbone]:
        return [c for c in self.columns if isinstance(c, Backbone)]

    def branching_logits(self) -> Tensor:
        """``theta [L, T, T]``: child ``t``'s logits over its parents, per branching layer."""
        last = torch.stack(list(self.last_logits))[None]  # [1, T, T]
        if self.shared_logits is None:
            return last
        return torch.cat([self.shared_logits, last], dim=0)

    def branching_probabilities(self) -> Tensor:
        """``softmax(theta) [L, T, T]``: each child's distribution over its parents."""
        return torch.softmax(self.branching_logits(), dim=-1)

    def temperature(self, step: int) -> float:
        """The Gumbel-softmax temperature at training step ``step`` (after the warm-up)."""
        done = max(step - self.warmup_steps, 0)
        return self.tau_initial / math.sqrt(1.0 + done / self.tau_decay_steps)

    def tree(self) -> Tensor:
        """The deterministic tree ``argmax theta [L, T]``: each child's chosen parent."""
        return self.branching_logits().argmax(dim=-1)

    def _alpha(self) -> Tensor:
        """The mixing weights ``alpha [L, T(child), T(parent)]`` of this forward pass."""
        theta = self.branching_logits()
        soft = torch.softmax(theta, dim=-1)
        if self.training:
            step = int(self.num_steps)
            self.num_steps += 1
            if step < self.warmup_steps:
                return soft
            gen = torch.Generator().manual_seed(int(self.noise_seed) * 1_000_003 + step)
            u = torch.rand(theta.shape, generator=gen, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-12)))
            y = torch.softmax((theta + gumbel.to(theta)) / self.temperature(step), dim=-1)
            hard = F.one_hot(y.argmax(dim=-1), theta.shape[-1]).to(y)
            return hard - y.detach() + y
        # Evaluation: tensor ops only (no Python branch on the buffer), so exporters can trace.
        hard = F.one_hot(theta.argmax(dim=-1), theta.shape[-1]).to(soft)
        warm = self.num_steps < self.warmup_steps
        return torch.where(warm, soft, hard - soft.detach() + soft)

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``features [B, F]`` -> per-task representations ``[B, T, D]``."""
        self.fusion.check(features, x.shape[0])
        columns = self._columns()
        alpha = self._alpha()
        k = self.num_shared_prefix
        chains = [[col.stem, *col.stages] for col in columns]
        h = x
        for module in chains[0][:k]:  # parameter-free: the same output in every column
            h = module(h)
        nodes = [chain[k](h) for chain in chains]  # the first column-specific module
        for j in range(alpha.shape[0]):  # branching layer j feeds stage k + j
            stacked = torch.stack(nodes, dim=0)  # [T(parents), B, C, H, W]
            # [T(children), T(parents)] x [T(parents), N] -> [T(children), N]
            mixed = (alpha[j].to(stacked.dtype) @ stacked.flatten(1)).view_as(stacked)
            nodes = [
                col.stages[k + j](m) for col, m in zip(columns, mixed.unbind(0), strict=True)
            ]
        reps = [self.fusion(col.neck(n), features) for col, n in zip(columns, nodes, strict=True)]
        return torch.stack(reps, dim=1)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """``z [B, T, D]`` -> ``{task: head_task(z[:, task]) [B, K_task]}``."""
        return decode_per_task(self.heads, z)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        trunks = [part for col in self._columns() for part in (col.stem, *col.stages[:-1])]
        logits = [] if self.shared_logits is None else [self.shared_logits]
        return unique_trainable(*trunks, logits, self.fusion)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        i = self.heads.task_index(task)
        col = self._columns()[i]
        return unique_trainable(
            col.stages[-1], col.neck, [self.last_logits[i]], self.heads.heads[i]
        )


@register_architecture("ltb")
def build_ltb(
    make_backbone: BackboneFactory, heads: Mapping[str, int], num_features: int, **kw: Any
) -> MultiTaskModel:
    """Registry builder of :class:`LTB`: one fresh backbone column per task."""
    return LTB([make_backbone() for _ in heads], heads, num_features, **kw)
