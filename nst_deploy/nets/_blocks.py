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

__all__ = ["ConvIN", "ResidualBlock", "UpConv", "channels", "luminance", "pad_to_multiple", "to_range"]

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


def pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int]:
    """Reflection-pad ``x`` on the bottom and right to a multiple of ``m``; also return ``(H, W)``."""
    h, w = x.shape[-2], x.shape[-1]
    ph = (m - h % m) % m
    pw = (m - w % m) % m
    # always pad (possibly by 0): a Python branch on the size would be frozen by export tracing
    x = F.pad(x, [0, pw, 0, ph], mode="reflect")
    return x, h, w


def to_range(z: torch.Tensor) -> torch.Tensor:
    """The output contract: RGB in ``[0, 1]`` by a sigmoid, identical in training, inference and export."""
    return torch.sigmoid(z)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of RGB ``(N, 3, H, W)`` as ``(N, 1, H, W)`` (no bias)."""
    # literals, not LUMA: TorchScript does not read module-level tuples
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
