"""Building blocks shared by the feed-forward networks.

Every convolution pads by reflection (no zero borders), every normalization is an affine instance
norm without running statistics (the same computation in training, inference and export), and
upsampling is a resize-convolution (nearest upsample, reflection pad, convolution), which has no
checkerboard artefacts, unlike a transposed convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MARGIN", "ConvIN", "ResidualBlock", "UpConv", "channels", "check_margin", "luminance", "pad_margin",
           "to_range"]

#: ITU-R BT.601 luma weights (a fixed, bias-free grey conversion).
LUMA = (0.299, 0.587, 0.114)


def channels(base: int, width: float) -> int:
    """``base`` channels scaled by the width multiplier (at least 4, a multiple of 4)."""
    return max(4, int(round(base * width / 4.0)) * 4)


def instance_norm(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, affine=True, track_running_stats=False)


class ConvIN(nn.Sequential):
    """Reflection pad, convolution, instance norm and (by default) ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True):
        layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride),
                                   instance_norm(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` with 3x3 convolutions (same size: reflection padding)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(ConvIN(c, c, 3), ConvIN(c, c, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpConv(nn.Module):
    """Resize-convolution: nearest upsampling by ``scale``, then :class:`ConvIN` (or a bare conv)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, scale: int = 2, norm: bool = True):
        super().__init__()
        self.scale = scale
        self.conv = ConvIN(cin, cout, kernel) if norm else nn.Sequential(
            nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=float(self.scale), mode="nearest"))


#: Pixels of mirrored image the networks add on every side and crop from their output. A trained
#: network draws a fringe along the borders of what it is given (a flat grey input gets 1.7-2.6x the
#: interior's gradient in its outermost 2 px, bundled starry_night); given a mirrored margin, the
#: fringe falls in the margin and is cropped: 16 px brought the border bands back to the photo's own
#: (docs/feed-forward.md, "The border fringe").
MARGIN = 16


def check_margin(margin: object) -> int:
    if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin <= 64 or margin % 4:
        raise ValueError(f"margin must be a multiple of 4 from 0 to 64, got {margin!r}")
    return margin


def pad_margin(x: torch.Tensor, margin: int, m: int) -> tuple[torch.Tensor, int, int]:
    """Reflection-pad ``x`` by ``margin`` on every side and on the bottom and right to a multiple of ``m``;
    also return ``(H, W)``. Two reflections (7 px, then the rest) so that inputs down to 8 px can give
    a 16-px margin (one reflection cannot exceed the side it reflects)."""
    h, w = x.shape[-2], x.shape[-1]
    ph = (m - h % m) % m
    pw = (m - w % m) % m
    first = min(7, margin)
    if first:
        x = F.pad(x, [first, first, first, first], mode="reflect")
    rest = margin - first
    # always pad (possibly by 0): a Python branch on the size would be frozen by export tracing
    x = F.pad(x, [rest, rest + pw, rest, rest + ph], mode="reflect")
    return x, h, w


def to_range(z: torch.Tensor) -> torch.Tensor:
    """The output contract: RGB in ``[0, 1]`` by a sigmoid, identical in training, inference and export."""
    return torch.sigmoid(z)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of RGB ``(N, 3, H, W)`` as ``(N, 1, H, W)`` (no bias)."""
    # literals, not LUMA: TorchScript does not read module-level tuples
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
