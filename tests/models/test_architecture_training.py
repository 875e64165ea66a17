"""Every registered architecture through the trainer: a few steps on tiny generated data with a
gradient-level method on both backends (the representation backend refused where the
architecture has no shared representation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl.models import create_model, list_architectures
from mtl.splits import SplitData
from mtl.train import fit, seed_everything
from tests.test_train import TASKS, make_split, tiny_cfg

NUM_FEATURES = 3


def _with_features(data: SplitData, seed: int) -> SplitData:
    gen = torch.Generator().manual_seed(seed)
    return SplitData(data.images, data.targets, torch.randn(len(data), NUM_FEATURES, generator=gen))


@pytest.mark.parametrize("backend", ["full", "representation"])
@pytest.mark.parametrize("arch", list_architectures())
def test_architecture_trains_on_every_task_kind(arch: str, backend: str, tmp_path: Path) -> None:
    """Multiclass, binary, regression and multilabel heads, 30 % labels missing, tabular
    features fused; 2 optimiser steps of PCGrad. LTB leaves its warm-up after the first step,
    so the second one trains through a hard Gumbel-softmax branching."""
    train = _with_features(make_split(32, 0, missing=0.3), 0)
    val = _with_features(make_split(16, 1), 1)
    kwargs: dict[str, object] = {"head_hidden": 0}
    if arch == "ltb":
        kwargs["warmup_steps"] = 1
    cfg = tiny_cfg(tmp_path, weighting="pcgrad", backend=backend, epochs=1, batch_size=16,
                   architecture=arch, architecture_kwargs=kwargs)
    seed_everything(cfg.seed)  # fit builds its model right after seeding: the initial weights
    fresh = create_model(arch, cfg.backbone, TASKS, in_channels=1, num_features=NUM_FEATURES,
                         architecture_kwargs=kwargs, backbone_kwargs=cfg.backbone_kwargs)
    if backend == "representation" and not fresh.supports_representation:
        with pytest.raises(ValueError, match="supports_representation is False"):
            fit(TASKS, train, val, cfg, in_channels=1, device=torch.device("cpu"))
        return
    _, result = fit(TASKS, train, val, cfg, in_channels=1, device=torch.device("cpu"))
    init = fresh.state_dict()
    changed = {k for k, v in init.items() if v.is_floating_point()
               and not torch.equal(v, result.best_state[k])}
    names = {id(p): n for n, p in fresh.named_parameters()}
    shared = {names[id(p)] for p in fresh.shared_parameters()}
    assert shared & changed, "no shared parameter moved"
    for t in TASKS:
        own = {names[id(p)] for p in fresh.task_parameters(t.name)}
        assert own & changed, (t.name, sorted(changed))
    assert all(torch.isfinite(v).all() for v in result.best_state.values()
               if v.is_floating_point())
    if arch == "ltb":
        assert int(result.best_state["num_steps"]) == 2
