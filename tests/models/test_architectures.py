"""Every registered architecture × a few backbones: outputs, parameter split, gradients."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtl.models import MultiTaskModel, create_architecture, create_model, list_architectures
from mtl.models.architectures import MTAN, CrossStitch, HardParameterSharing, register_architecture
from mtl.models.backbones import create_backbone
from mtl.models.base import Backbone
from mtl.tasks import TaskKind, TaskSchema, masked_task_loss

# Task names that would break a ModuleDict (a dot, a ModuleDict method name) on purpose.
HEADS = {"digit": 10, "is.odd": 1, "update": 1}
# (backbone, backbone kwargs, input size): smallcnn is the default; resnet18 in small-input mode
# has real stages; convnext_tiny has a parametrised neck (its LayerNorm).
BACKBONES: list[tuple[str, dict[str, Any], int]] = [
    ("smallcnn", {}, 28),
    ("resnet18", {"small_input": True}, 16),
    ("convnext_tiny", {}, 32),
]
CASES = [
    pytest.param(arch, bb, kw, size, id=f"{arch}-{bb}")
    for arch in list_architectures()
    for bb, kw, size in BACKBONES
]
NUM_FEATURES = 5
# Each task has its own representation ([B, T, D]): the representation backend is refused.
PER_TASK_REPRESENTATION = ("mtan", "cross_stitch", "ltb")


def _build(arch: str, backbone: str, bkw: dict[str, Any], num_features: int = 0) -> MultiTaskModel:
    return create_architecture(
        arch, backbone, HEADS, in_channels=1, num_features=num_features, backbone_kwargs=bkw
    )


def _ids(params: Any) -> list[int]:
    return [id(p) for p in params]


def test_registry_names() -> None:
    assert set(list_architectures()) == {
        "hps", "mmoe", "mtan", "cross_stitch", "cgc", "ple", "dselect_k", "ltb"
    }
    with pytest.raises(ValueError, match=r"unknown architecture 'nope'.*hps"):
        create_architecture("nope", "smallcnn", HEADS, 1)
    with pytest.raises(ValueError, match=r"unknown backbone 'nope'.*smallcnn"):
        create_architecture("hps", "nope", HEADS, 1)
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("hps")(create_architecture)  # type: ignore[type-var]


def test_cli_lists_the_eight_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    from mtl.cli import main

    assert main(["list", "architectures"]) == 0
    assert capsys.readouterr().out.split() == [
        "cgc", "cross_stitch", "dselect_k", "hps", "ltb", "mmoe", "mtan", "ple"
    ]


def test_docstrings_name_their_paper() -> None:
    for arch in list_architectures():
        model = _build(arch, "smallcnn", {})
        doc = type(model).__doc__ or ""
        assert any(str(year) in doc for year in range(1990, 2030)), arch


@pytest.mark.parametrize(("arch", "backbone", "bkw", "size"), CASES)
def test_outputs_params_and_gradients(
    arch: str, backbone: str, bkw: dict[str, Any], size: int
) -> None:
    model = _build(arch, backbone, bkw).eval()  # eval: no stochastic depth, BN deterministic
    x = torch.randn(2, 1, size, size)

    # Output keys in task order, [B, K] per task, and forward == decode(encode).
    out = model(x)
    assert list(out) == list(HEADS)
    for task, k in HEADS.items():
        assert out[task].shape == (2, k)
    z = model.encode(x)
    if model.supports_representation:
        assert z.dim() == 2 and z.shape[0] == 2
    else:
        assert z.shape[:2] == (2, len(HEADS))  # per-task representations [B, T, D]
    for task, y in model.decode(z).items():
        torch.testing.assert_close(y, out[task])

    # shared / task parameters: no duplicates, pairwise disjoint, covering every trainable one.
    shared = _ids(model.shared_parameters())
    per_task = {t: _ids(model.task_parameters(t)) for t in HEADS}
    groups = [shared, *per_task.values()]
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)), "a parameter is in two groups (or twice in one)"
    assert set(flat) == {id(p) for p in model.parameters() if p.requires_grad}
    assert shared and all(per_task.values())
    with pytest.raises(KeyError):
        list(model.task_parameters("no such task"))

    # Task t's loss: reaches every shared parameter and its own, none of the other tasks'.
    by_id = {id(p): p for p in model.parameters()}
    for task in HEADS:
        model.zero_grad(set_to_none=True)
        model(x)[task].square().mean().backward()
        assert all(by_id[i].grad is not None for i in shared), f"{task}: shared param unused"
        own_grads = [by_id[i].grad for i in per_task[task]]
        assert any(g is not None and g.abs().sum() > 0 for g in own_grads)
        for other in HEADS:
            if other != task:
                for i in per_task[other]:
                    g = by_id[i].grad
                    assert g is None or not g.any(), f"{task}'s loss moved {other}'s head"


@pytest.mark.parametrize("arch", list_architectures())
def test_representation_split(arch: str) -> None:
    """Representation-level backends: per-task gradients w.r.t. ``z = encode(x)``, then one
    ``z.backward(d)`` for what lies below ``z`` and each task's own gradient for its head.

    So every parameter above ``z`` must be a task parameter and every shared one below it.
    """
    model = _build(arch, "smallcnn", {}, num_features=NUM_FEATURES)
    expected = arch not in PER_TASK_REPRESENTATION
    assert model.supports_representation is expected
    if not expected:
        return
    x, f = torch.randn(2, 1, 28, 28), torch.randn(2, NUM_FEATURES)
    z = model.encode(x, f)
    assert z.dim() == 2 and z.shape[1] == model.representation_size  # type: ignore[attr-defined]
    grads = [torch.autograd.grad(model.decode(z)[t].sum(), z, retain_graph=True)[0] for t in HEADS]
    assert all(g.shape == z.shape and g.abs().sum() > 0 for g in grads)
    # Not orthogonal by construction (what a stacked per-task z would give): every pair of
    # tasks' gradients w.r.t. z share non-zero coordinates, and their inner product is not 0.
    for i, gi in enumerate(grads):
        for gj in grads[i + 1 :]:
            assert ((gi != 0) & (gj != 0)).any(), "two tasks' gradients have disjoint supports"
            assert (gi * gj).sum().abs() > 0

    leaf = z.detach().requires_grad_()
    model.zero_grad(set_to_none=True)
    sum(y.square().sum() for y in model.decode(leaf).values()).backward()  # type: ignore[union-attr]
    above = {id(p) for p in model.parameters() if p.grad is not None}
    task_ids = {i for t in HEADS for i in _ids(model.task_parameters(t))}
    assert above == task_ids

    model.zero_grad(set_to_none=True)
    model.encode(x, f).backward(torch.randn_like(z))
    below = {id(p) for p in model.parameters() if p.grad is not None}
    assert below == set(_ids(model.shared_parameters()))


@pytest.mark.parametrize("arch", list_architectures())
def test_tabular_features_are_fused(arch: str) -> None:
    model = _build(arch, "smallcnn", {}, num_features=NUM_FEATURES).eval()
    x = torch.randn(3, 1, 28, 28)
    f = torch.randn(3, NUM_FEATURES)
    a, b = model(x, f), model(x, f + 1.0)
    for task in HEADS:
        assert not torch.allclose(a[task], b[task]), f"{task} ignores the tabular features"
    torch.testing.assert_close(model.decode(model.encode(x, f))["digit"], a["digit"])
    # The fusion MLP is shared: every task's loss reaches it.
    fusion = {id(p) for p in model.fusion.parameters()}  # type: ignore[union-attr]
    assert fusion and fusion <= set(_ids(model.shared_parameters()))
    with pytest.raises(ValueError, match="needs the tabular features"):
        model(x)
    with pytest.raises(ValueError, match="features must be"):
        model(x, torch.randn(3, NUM_FEATURES + 1))
    with pytest.raises(ValueError, match="num_features=0"):
        _build(arch, "smallcnn", {})(x, f)


def _schemas() -> list[TaskSchema]:
    return [
        TaskSchema("left", TaskKind.MULTICLASS, "left", classes=tuple("0123456789")),
        TaskSchema("odd", TaskKind.BINARY, "odd"),
        TaskSchema("size", TaskKind.REGRESSION, "size"),
    ]


@pytest.mark.parametrize("arch", list_architectures())
def test_create_model_from_schemas(arch: str) -> None:
    tasks = _schemas()
    model = create_model(
        arch,
        "smallcnn",
        tasks,
        in_channels=1,
        num_features=2,
        architecture_kwargs={"head_hidden": 0},
        backbone_kwargs={"channels": (8, 16)},
    )
    x, f = torch.randn(4, 1, 28, 28), torch.randn(4, 2)
    out = model(x, f)
    assert {t: tuple(y.shape) for t, y in out.items()} == {
        "left": (4, 10),
        "odd": (4, 1),
        "size": (4, 1),
    }
    target = {
        "left": torch.tensor([1.0, 2.0, float("nan"), 3.0]),
        "odd": torch.tensor([0.0, 1.0, 1.0, float("nan")]),
        "size": torch.tensor([0.5, -0.1, 0.0, 1.0]),
    }
    loss = sum(masked_task_loss(t, out[t.name], target[t.name])[0] for t in tasks)
    assert isinstance(loss, torch.Tensor)
    loss.backward()


def test_create_model_errors() -> None:
    tasks = _schemas()
    with pytest.raises(ValueError, match="duplicate task names"):
        create_model("hps", "smallcnn", [tasks[0], tasks[0]], in_channels=1)
    with pytest.raises(ValueError, match="at least one task"):
        create_model("hps", "smallcnn", [], in_channels=1)
    with pytest.raises(ValueError, match="valid names"):
        create_model("hps", "vgg_nonexistent", tasks, in_channels=1)


@pytest.mark.parametrize("arch", list_architectures())
def test_pretrained_backbone_through_create_model(arch: str, tmp_path: Path) -> None:
    src = create_backbone("smallcnn", 3)
    path = tmp_path / "smallcnn.pt"
    torch.save(src.state_dict(), path)
    model = create_model(arch, "smallcnn", _schemas(), in_channels=1, pretrained=str(path))
    backbones = [m for m in model.modules() if type(m).__name__ == "SmallCNN"]
    assert backbones  # cross-stitch: one per task column, every one loaded
    for b in backbones:
        assert isinstance(b, nn.Module)
        torch.testing.assert_close(
            b.state_dict()["head.2.weight"], src.state_dict()["head.2.weight"]
        )
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        create_model(arch, "smallcnn", _schemas(), 1, pretrained=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("arch", list_architectures())
def test_copy_and_state_dict_roundtrip(arch: str) -> None:
    """Checkpointing (state dict into a fresh model) and deepcopy (EMA / best model) work."""
    model = _build(arch, "smallcnn", {}).eval()
    x = torch.randn(2, 1, 28, 28)
    expected = model(x)
    torch.manual_seed(123)  # a differently initialised twin
    twin = _build(arch, "smallcnn", {}).eval()
    twin.load_state_dict(model.state_dict())
    clone = copy.deepcopy(model)
    for other in (twin, clone):
        got = other(x)
        for task in HEADS:
            torch.testing.assert_close(got[task], expected[task])
    # The copy's staged views point at the copy's own modules, not the original's.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(clone(x)["digit"], expected["digit"])


def test_unstaged_backbone_is_rejected() -> None:
    class Flat(Backbone):
        out_features = 4

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(1, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.mean(dim=(1, 2, 3))[:, None])

    # Hard sharing only needs forward + out_features ...
    hps = HardParameterSharing(Flat(), {"a": 2})
    assert hps(torch.randn(2, 1, 8, 8))["a"].shape == (2, 2)
    # ... MTAN and cross-stitch need the stages.
    with pytest.raises(TypeError, match="staged"):
        MTAN(Flat(), {"a": 2})
    with pytest.raises(TypeError, match="staged"):
        CrossStitch([Flat()], {"a": 2})
