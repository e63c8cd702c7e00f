"""One network, many styles: conditional instance normalization (Dumoulin, Shlens and Kudlur, 2017).

The layout is the Johnson network's (:mod:`nst_deploy.nets.transformer`): every convolution is shared
by all ``n_styles`` styles, and each style is a set of instance-norm scales and shifts (``gamma`` and
``beta``, one row per style in every norm). A style vector ``w`` of ``n_styles`` weights picks a style
(one-hot) or blends several: every norm uses ``gamma = w @ gammas`` and ``beta = w @ betas``, the
paper's convex combination (weights are normalized to sum to one).

``forward(x, style)``: ``x`` is ``(N, 3, H, W)`` RGB in ``[0, 1]``; ``style`` is ``(n_styles,)`` or
``(N, n_styles)``. A style is added to a trained network by :meth:`MultiStyleNet.with_style_added`
(new rows only; the training then updates those alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..controls import style_weights
from ._blocks import MARGIN, channels, check_margin, pad_margin, to_range
from .transformer import TransformerNet

__all__ = ["MultiStyleNet", "style_vector"]


class CondInstanceNorm(nn.Module):
    """Instance norm without affine parameters, then the style vector's scale and shift per channel."""

    def __init__(self, c: int, n_styles: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
        self.gamma = nn.Parameter(torch.ones(n_styles, c))
        self.beta = nn.Parameter(torch.zeros(n_styles, c))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        g = (w @ self.gamma.to(w.dtype)).to(x.dtype)
        b = (w @ self.beta.to(w.dtype)).to(x.dtype)
        return self.norm(x) * g[:, :, None, None] + b[:, :, None, None]


class ConvCIN(nn.Module):
    """Reflection pad, convolution, conditional instance norm, ReLU (optional); nearest upsampling first
    when ``up`` (a resize-convolution)."""

    def __init__(self, cin: int, cout: int, kernel: int, n_styles: int, stride: int = 1, relu: bool = True,
                 up: bool = False):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)
        self.cin = CondInstanceNorm(cout, n_styles)
        self.relu, self.up = relu, up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        y = self.cin(self.conv(self.pad(x)), w)
        return F.relu(y) if self.relu else y


class ResidualCIN(nn.Module):
    def __init__(self, c: int, n_styles: int):
        super().__init__()
        self.a = ConvCIN(c, c, 3, n_styles)
        self.b = ConvCIN(c, c, 3, n_styles, relu=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x, w), w)


def style_vector(style, n_styles: int) -> torch.Tensor:
    """A ``(n_styles,)`` float tensor summing to one (see :func:`nst_deploy.controls.style_weights`)."""
    return torch.from_numpy(style_weights(style, n_styles))


class MultiStyleNet(nn.Module):
    """The Johnson network with conditional instance norms for ``n_styles`` styles.

    Args:
        n_styles: the number of styles (rows of every norm's scale and shift).
        width: width multiplier (1.0 is the published 32/64/128 channels).
        n_residual: residual blocks.
        margin: mirrored pixels added on every side and cropped from the output.
    """

    MULTIPLE = 4
    MIN_SIZE = 8
    __constants__ = ["MULTIPLE", "MIN_SIZE"]

    def __init__(self, n_styles: int = 1, width: float = 1.0, n_residual: int = 5, margin: int = MARGIN):
        super().__init__()
        if isinstance(n_styles, bool) or not isinstance(n_styles, int) or not 1 <= n_styles <= 256:
            raise ValueError(f"n_styles must be a whole number from 1 to 256, got {n_styles!r}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        c1, c2, c3 = channels(32, width), channels(64, width), channels(128, width)
        self.n_styles, self.width, self.n_residual = n_styles, float(width), int(n_residual)
        self.margin = check_margin(margin)
        n = n_styles
        self.down = nn.ModuleList([ConvCIN(3, c1, 9, n), ConvCIN(c1, c2, 3, n, stride=2),
                                   ConvCIN(c2, c3, 3, n, stride=2)])
        self.res = nn.ModuleList([ResidualCIN(c3, n) for _ in range(n_residual)])
        self.up = nn.ModuleList([ConvCIN(c3, c2, 3, n, up=True), ConvCIN(c2, c1, 3, n, up=True)])
        self.out = nn.Sequential(nn.ReflectionPad2d(4), nn.Conv2d(c1, 3, 9))

    def config(self) -> dict:
        return {"n_styles": self.n_styles, "width": self.width, "n_residual": self.n_residual, "margin": self.margin}

    def norms(self) -> list[CondInstanceNorm]:
        return [m for m in self.modules() if isinstance(m, CondInstanceNorm)]

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        w = style.to(x.device, torch.float32)
        if w.dim() == 1:
            w = w[None].expand(x.shape[0], -1)
        m = self.margin
        x, h, wd = pad_margin(x, m, self.MULTIPLE)
        for blk in self.down:
            x = blk(x, w)
        for blk in self.res:
            x = blk(x, w)
        for blk in self.up:
            x = blk(x, w)
        y = self.out(x)
        return to_range(y[:, :, m:m + h, m:m + wd])

    def with_style_added(self, like: int | None = None) -> MultiStyleNet:
        """A copy with one more style, its scales and shifts those of style ``like`` (default: the mean
        of the existing styles'); every other weight is the same."""
        net = MultiStyleNet(self.n_styles + 1, self.width, self.n_residual, self.margin).to(
            next(self.parameters()).device)
        sd = self.state_dict()
        new = {}
        for k in net.state_dict():
            old = sd[k]
            if k.endswith(".gamma") or k.endswith(".beta"):
                row = old.mean(0, keepdim=True) if like is None else old[like:like + 1]
                new[k] = torch.cat([old, row], 0)
            else:
                new[k] = old
        net.load_state_dict(new)
        return net

    def single_style(self, k: int) -> TransformerNet:
        """The Johnson network that style ``k`` is: the shared convolutions, and style ``k``'s scales and
        shifts as its instance norms' affine parameters. Its output equals ``self(x, one-hot k)``."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n_styles:
            raise ValueError(f"style {k!r} is not one of this network's {self.n_styles} (0 to {self.n_styles - 1})")
        net = TransformerNet(self.width, self.n_residual, self.margin).to(next(self.parameters()).device)
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        norms = self.norms()
        j_convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        j_norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
        # both walk down, residual, up and out in the same order: the layouts are the same by construction
        assert len(convs) == len(j_convs) and len(norms) == len(j_norms)
        with torch.no_grad():
            for a, b in zip(convs, j_convs, strict=True):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
            for a, b in zip(norms, j_norms, strict=True):
                b.weight.copy_(a.gamma[k])
                b.bias.copy_(a.beta[k])
        return net.train(self.training)
