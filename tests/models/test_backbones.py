"""Every registered backbone: shapes, staged form, any channel count, forward/backward."""

from __future__ import annotations

import pytest
import torch

from mtl.models.backbones import create_backbone, list_backbones, register_backbone
from mtl.models.backbones import registry as backbone_registry
from mtl.models.backbones.smallcnn import SmallCNN
from mtl.models.base import Backbone

TORCHVISION = [n for n in list_backbones() if n != "smallcnn"]


def test_registry_names() -> None:
    expected = {
        "smallcnn",
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "convnext_tiny",
    }
    assert expected <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'nope'.*resnet18.*smallcnn"):
        create_backbone("nope", 3)


def test_bad_in_channels() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        create_backbone("smallcnn", 0)


def test_register_duplicate_and_new(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("smallcnn")(lambda in_channels: SmallCNN(in_channels))
    # A newly registered backbone is created by name (monkeypatch removes it afterwards).
    monkeypatch.setitem(
        backbone_registry._REGISTRY, "tiny_test", lambda in_channels, **kw: SmallCNN(in_channels)
    )
    assert "tiny_test" in list_backbones()
    assert isinstance(create_backbone("tiny_test", 2), SmallCNN)


@pytest.mark.parametrize("name", list_backbones())
def test_small_input_forward_backward(name: str) -> None:
    """1 channel, small-input mode: [B, out_features], staged form consistent, all params used."""
    b = create_backbone(name, in_channels=1, small_input=True)
    assert isinstance(b, Backbone)
    x = torch.randn(2, 1, 16, 16)  # tiny: the big torchvision nets are slow on 2 CPU cores

    # eval: deterministic (no stochastic depth), so the staged pieces compose to forward.
    b.eval()
    maps = b.forward_stages(x)
    assert [m.shape[1] for m in maps] == list(b.stage_channels)
    assert len(maps) == b.num_stages >= 1
    if name in TORCHVISION:
        assert maps[-1].shape[-2:] == (2, 2)  # small_input: output stride 8 (not 32)
    y = b.neck(maps[-1])
    assert y.shape == (2, b.out_features)
    torch.testing.assert_close(b(x), y)
    y.square().mean().backward()
    no_grad = [n for n, p in b.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters outside the forward pass: {no_grad[:5]}"


@pytest.mark.parametrize("name", list_backbones())
def test_imagenet_layout_three_channels(name: str) -> None:
    """Default (ImageNet) layout, RGB, train mode: 32 px ends as a 1×1 map (stride 32)."""
    b = create_backbone(name, in_channels=3).train()
    x = torch.randn(2, 3, 32, 32)
    maps = b.forward_stages(x)
    if name in TORCHVISION:
        assert maps[-1].shape[-2:] == (1, 1)
    y = b.neck(maps[-1])
    assert y.shape == (2, b.out_features)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("in_channels", [2, 4])
@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "mobilenet_v3_small"])
def test_other_in_channels(name: str, in_channels: int) -> None:
    b = create_backbone(name, in_channels=in_channels).eval()
    with torch.no_grad():
        y = b(torch.randn(2, in_channels, 32, 32))
    assert y.shape == (2, b.out_features)


def test_smallcnn_on_multimnist_size_is_cheap() -> None:
    """The pipeline's default: 28×28 grey images, few parameters."""
    b = create_backbone("smallcnn", 1)
    assert b(torch.randn(4, 1, 28, 28)).shape == (4, b.out_features)
    assert sum(p.numel() for p in b.parameters()) < 200_000


def test_backbone_views_add_no_state() -> None:
    """The stem/stages/neck views are not registered: torchvision's key names are kept."""
    b = create_backbone("resnet18", 3)
    keys = set(b.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_mean" in keys
    assert not any(k.startswith(("stem.", "stages.", "neck.", "fc.")) for k in keys)
