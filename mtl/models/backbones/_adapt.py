"""Helpers shared by the torchvision families: stem replacement, stride removal, stage splits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["last_conv_channels", "make_conv_like", "split_at_strides", "unstride_first"]


def make_conv_like(
    conv: nn.Conv2d,
    in_channels: int,
    kernel_size: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> nn.Conv2d:
    """A freshly initialised copy of ``conv`` with another input channel count / geometry."""
    k = kernel_size if kernel_size is not None else conv.kernel_size[0]
    s = stride if stride is not None else conv.stride[0]
    if padding is not None:
        p = padding
    else:
        # torchvision stems use square kernels/strides and integer padding
        assert isinstance(conv.padding, tuple), "string padding is not used by torchvision stems"
        p = conv.padding[0]
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=k,
        stride=s,
        padding=p,
        bias=conv.bias is not None,
    )


def _strided_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]


def unstride_first(module: nn.Module) -> None:
    """Set the stride of ``module``'s strided convolutions to 1 (its padding keeps the size).

    Used on the first downsampling block of MobileNetV3 / EfficientNet for ``small_input``. The
    block was built with stride 2, so it has no residual connection; with stride 1 it stays a
    valid (non-residual) block.
    """
    convs = _strided_convs(module)
    if not convs:
        raise ValueError(f"{type(module).__name__} has no strided convolution")
    for conv in convs:
        conv.stride = (1, 1)


def split_at_strides(blocks: Sequence[nn.Module]) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """Group ``blocks`` into (blocks before the first downsampling, stages).

    A new stage starts at every block holding a strided convolution, so the stages of an
    ImageNet network sit at output strides 4, 8, 16, 32 (like a ResNet's layer1..layer4).
    """
    lead: list[nn.Module] = []
    stages: list[list[nn.Module]] = []
    for block in blocks:
        if _strided_convs(block):
            stages.append([block])
        elif stages:
            stages[-1].append(block)
        else:
            lead.append(block)
    return lead, stages


def last_conv_channels(module: nn.Module) -> int:
    """Output channels of the last convolution registered in ``module`` (its output width)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no convolution")
    return convs[-1].out_channels
