"""``smallcnn``: a LeNet-like CNN for tiny images (28×28 MultiMNIST), the pipeline's default.

In the spirit of the LeNet used by Sener & Koltun (2018) for MultiMNIST, made a little sturdier
(batch norm, "same" padding so any size >= 4 px works) and kept cheap for 2 CPU cores
(~3 MMACs per 28×28 image with the defaults)::

    x [B, C, H, W]
    stage i: conv k×k ("same") -> BatchNorm -> ReLU -> max-pool 2   (H, W halve each stage)
    neck:    adaptive avg-pool to 4×4 -> flatten [B, 16·C_last] -> Linear -> ReLU  [B, out]

A 28×28 input gives maps of 14×14 and 7×7 with the default two stages. The stem is the
identity: the first stage's conv sees the image (its weight is the one adapted to
``in_channels`` when loading a pretrained file). ``small_input`` is accepted for a uniform
interface and ignored: this network is always a small-input one.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtl.models.backbones.registry import register_backbone
from mtl.models.base import Backbone

__all__ = ["SmallCNN", "smallcnn"]


class SmallCNN(Backbone):
    """LeNet-like CNN; ``channels`` gives the width of each stage."""

    stem_weight_key = "blocks.0.0.weight"

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (16, 32),
        out_features: int = 128,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("smallcnn needs at least one stage width")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (for 'same' padding), got {kernel_size}")
        blocks = []
        c_in = in_channels
        for c_out in channels:
            blocks.append(
                nn.Sequential(
                    # bias is redundant before BatchNorm
                    nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2, ceil_mode=True),  # ceil: odd sizes (7 -> 4) lose no pixel
                )
            )
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        # [B, C, h, w] -> [B, C, 4, 4] -> [B, 16 C] -> [B, out_features]
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(1),
            nn.Linear(16 * c_in, out_features),
            nn.ReLU(inplace=True),
        )
        self.set_structure(
            stem=nn.Identity(),
            stages=list(self.blocks),
            neck=self.head,
            stage_channels=list(channels),
            out_features=out_features,
        )


@register_backbone("smallcnn")
def smallcnn(
    in_channels: int,
    small_input: bool = True,
    channels: Sequence[int] = (16, 32),
    out_features: int = 128,
    kernel_size: int = 5,
) -> Backbone:
    """The LeNet-like default backbone (see :class:`SmallCNN`); ``small_input`` is ignored."""
    del small_input  # always a small-input network
    return SmallCNN(
        in_channels, channels=channels, out_features=out_features, kernel_size=kernel_size
    )
