"""The Johnson et al. (2016) image transformation network, with instance norm and resize-convolutions.

Layout (``w`` the width multiplier, base widths 32, 64, 128)::

    9x9 conv 3 -> 32w       IN, ReLU
    3x3 conv 32w -> 64w /2  IN, ReLU
    3x3 conv 64w -> 128w /2 IN, ReLU
    5 residual blocks (128w)
    resize-conv x2 128w -> 64w  IN, ReLU
    resize-conv x2 64w -> 32w   IN, ReLU
    9x9 conv 32w -> 3, sigmoid

Input and output: RGB in ``[0, 1]``, ``(N, 3, H, W)``, any ``H, W >= 8``. Inside, the image gets a mirrored
margin (:data:`~nst_deploy.nets._blocks.MARGIN` px on every side, where the network's border fringe falls)
and is reflection-padded to a multiple of 4; the output is cropped back to the input's size.
"""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import MARGIN, ConvIN, ResidualBlock, UpConv, channels, check_margin, pad_margin, to_range

__all__ = ["TransformerNet"]


class TransformerNet(nn.Module):
    """Johnson-style feed-forward stylization network.

    Args:
        width: width multiplier (1.0 is the published 32/64/128 channels; 0.5 a 4x cheaper model).
        n_residual: number of residual blocks (5 in the paper).
        margin: mirrored pixels added on every side and cropped from the output (0: none).
    """

    #: Input sizes are padded to a multiple of this (two stride-2 convolutions).
    MULTIPLE = 4
    MIN_SIZE = 8

    def __init__(self, width: float = 1.0, n_residual: int = 5, margin: int = MARGIN):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        c1, c2, c3 = channels(32, width), channels(64, width), channels(128, width)
        self.width = float(width)
        self.n_residual = int(n_residual)
        self.margin = check_margin(margin)
        self.down = nn.Sequential(ConvIN(3, c1, 9), ConvIN(c1, c2, 3, stride=2), ConvIN(c2, c3, 3, stride=2))
        self.res = nn.Sequential(*[ResidualBlock(c3) for _ in range(n_residual)])
        self.up = nn.Sequential(UpConv(c3, c2), UpConv(c2, c1))
        self.out = nn.Sequential(nn.ReflectionPad2d(4), nn.Conv2d(c1, 3, 9))

    def config(self) -> dict:
        """The constructor's arguments (stored in checkpoints and exported metadata)."""
        return {"width": self.width, "n_residual": self.n_residual, "margin": self.margin}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.margin
        x, h, w = pad_margin(x, m, 4)
        y = self.out(self.up(self.res(self.down(x))))
        return to_range(y[:, :, m:m + h, m:m + w])
