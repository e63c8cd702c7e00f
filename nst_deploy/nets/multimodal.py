"""The Multimodal Transfer network of Wang et al. (2017): a style, an enhance and a refine subnet.

"Multimodal Transfer: A Hierarchical Deep Convolutional Neural Network for Fast Artistic Style
Transfer" stylizes in three stages of increasing resolution; each stage outputs an image (``y1`` at
the input size, ``y2`` at 2x, ``y3`` at 4x), and training puts a loss on each of them. Layout (``w``
the width multiplier applied through :func:`~nst_deploy.nets._blocks.channels`; every non-residual
convolution except the output ones is reflection pad, conv, affine instance norm, ReLU;
"resize-conv" is nearest x2 upsampling then such a convolution; every output convolution goes
through the sigmoid of :func:`~nst_deploy.nets._blocks.to_range`, so every level is RGB in [0, 1])::

    style subnet, input x (H, W):
        RGB-block on x (3 ch):          9x9 conv -> 16w, 3x3 conv /2 -> 32w, 3x3 conv /2 -> 64w, 3 residual blocks
        L-block on luminance(x) (1 ch): the same structure, its own weights
        conv-block on the concatenation (128w): 3 residual blocks,
            resize-conv -> 64w, resize-conv -> 32w, 3x3 conv -> 3, sigmoid           => y1 (H, W)
    enhance subnet, input bilinear x2 of y1 (2H, 2W):
        9x9 conv -> 16w, 3x3 conv /2 -> 32w, 3x3 conv /2 -> 64w, 3x3 conv /2 -> 128w, 6 residual blocks,
        resize-conv -> 64w, resize-conv -> 32w, resize-conv -> 16w, 3x3 conv -> 3, sigmoid  => y2 (2H, 2W)
    refine subnet, input bilinear x2 of y2 (4H, 4W):
        3x3 conv -> 16w, 3x3 conv /2 -> 32w, 3x3 conv /2 -> 64w, 3 residual blocks,
        resize-conv -> 32w, resize-conv -> 16w, 3x3 conv -> 3, sigmoid                => y3 (4H, 4W)

Bilinear upsampling uses ``align_corners=False``. The luminance is the fixed, bias-free BT.601 luma
``0.299 R + 0.587 G + 0.114 B`` of :func:`~nst_deploy.nets._blocks.luminance`.

Widths. The style subnet has the widths of the published PyTorch code (16/32/64 in each of the
RGB- and L-blocks, 128 on their concatenation, which is the 128 of Johnson et al. at the same
stride). The published enhance (32/64/128/256, six residual blocks at 256) and refine (32/64/128)
subnets are halved here, to 16/32/64/128 and 16/32/64: at the published widths the model has about
10.4M parameters (21 MB in fp16), with 32/64/128 in each of the RGB- and L-blocks (256 on their
concatenation) 14.8M; here 3.7M (7.4 MB in fp16) at ``width=1.0``. The layer structure (kernel sizes,
strides, numbers of residual blocks) is the paper's; the published code's refine subnet also added
its (upsampled) input to its output, which the sigmoid output contract here leaves out.

Sizes. Input and outputs are ``(N, 3, H, W)`` RGB in [0, 1], any ``H, W >= 8``, odd and non-square
included. The input is reflection-padded on the bottom and right to a multiple of 4, ``(Hp, Wp)``;
the three subnets then run on ``(Hp, Wp)``, ``(2Hp, 2Wp)`` and ``(4Hp, 4Wp)``, whose strides (4, 8
and 4) divide them; their bottlenecks run at ``(Hp/4, Wp/4)``, ``(Hp/4, Wp/4)`` and ``(Hp, Wp)``
respectively. The padded image of each level feeds the next one; each returned level ``k`` (1-based)
is cropped to exactly ``(H * 2**(k-1), W * 2**(k-1))``.

Two bugs of the published code are avoided:

* Its grey conversion was a ``Conv2d(3, 1, 1)`` whose weight was set to the luma weights but whose
  bias kept its random initial value, applied to the ImageNet-normalized input: the L-block saw the
  luminance of the normalized image plus a random offset. Here the luminance is a fixed bias-free
  conversion of the RGB input in [0, 1] (no ImageNet normalization anywhere).
* Its outputs were clamped in place to the normalized range of ``[0, 1]`` with 0.299 in place of the
  ImageNet standard deviation 0.229 of the red channel, and only for the first item of the batch
  (``y[0]``): the other items were not clamped, so an image's output depended on its place in the
  batch. Here every item of every level goes through the same sigmoid, and batch items are independent
  (instance norm has no batch statistics and no running statistics).

``torch.jit.script`` compiles the network (``forward`` and ``forward_levels``); ``torch.jit.trace`` works too,
for one input size (the padding is then fixed).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import MARGIN, ConvIN, ResidualBlock, UpConv, channels, check_margin, luminance, pad_margin, to_range

__all__ = ["MultimodalNet"]

#: Base widths (at ``width=1.0``) of the feature maps at strides 1, 2, 4 (and 8 in the enhance subnet).
STYLE_BASE = (16, 32, 64)
ENHANCE_BASE = (16, 32, 64, 128)
REFINE_BASE = (16, 32, 64)

_MAX_LEVELS = 3


def _out_conv(cin: int) -> nn.Sequential:
    """The 3x3 output convolution (reflection padded, no norm, no ReLU; :func:`to_range` follows)."""
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, 3, 3))


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _encoder(cin: int, c1: int, c2: int, c3: int, first_kernel: int, n_residual: int) -> nn.Sequential:
    """``first_kernel`` conv -> c1, 3x3 conv /2 -> c2, 3x3 conv /2 -> c3, then ``n_residual`` residual blocks."""
    return nn.Sequential(ConvIN(cin, c1, first_kernel), ConvIN(c1, c2, 3, stride=2), ConvIN(c2, c3, 3, stride=2),
                         *[ResidualBlock(c3) for _ in range(n_residual)])


class StyleSubnet(nn.Module):
    """RGB-block on the image, L-block on its luminance, conv-block on their concatenation (``y1``, logits)."""

    def __init__(self, width: float):
        super().__init__()
        c1, c2, c3 = (channels(b, width) for b in STYLE_BASE)
        cc = 2 * c3
        self.rgb = _encoder(3, c1, c2, c3, 9, 3)
        self.lum = _encoder(1, c1, c2, c3, 9, 3)
        self.fuse = nn.Sequential(*[ResidualBlock(cc) for _ in range(3)], UpConv(cc, cc // 2),
                                  UpConv(cc // 2, cc // 4), _out_conv(cc // 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.rgb(x), self.lum(luminance(x))], dim=1))


class EnhanceSubnet(nn.Module):
    """9x9 conv, three stride-2 convs, six residual blocks, three resize-convs, 3x3 output conv (logits)."""

    def __init__(self, width: float, n_residual: int = 6):
        super().__init__()
        c1, c2, c3, c4 = (channels(b, width) for b in ENHANCE_BASE)
        self.down = nn.Sequential(_encoder(3, c1, c2, c3, 9, 0), ConvIN(c3, c4, 3, stride=2))
        self.res = nn.Sequential(*[ResidualBlock(c4) for _ in range(n_residual)])
        self.up = nn.Sequential(UpConv(c4, c3), UpConv(c3, c2), UpConv(c2, c1))
        self.out = _out_conv(c1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.res(self.down(x))))


class RefineSubnet(nn.Module):
    """3x3 conv, two stride-2 convs, three residual blocks, two resize-convs, 3x3 output conv (logits)."""

    def __init__(self, width: float):
        super().__init__()
        c1, c2, c3 = (channels(b, width) for b in REFINE_BASE)
        self.down = _encoder(3, c1, c2, c3, 3, 3)
        self.up = nn.Sequential(UpConv(c3, c2), UpConv(c2, c1))
        self.out = _out_conv(c1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.down(x)))


def _check_levels(levels: object) -> int:
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or not 1 <= levels <= _MAX_LEVELS:
        raise ValueError(f"levels must be 1, 2 or 3, got {levels!r}")
    return int(levels)


class MultimodalNet(nn.Module):
    """Hierarchical feed-forward stylization network (style, enhance and refine subnets).

    All three subnets are always built (one state dict for every ``levels``); ``levels`` only sets how
    many of them :meth:`forward` runs, hence its output scale (1x, 2x or 4x the input size).

    Args:
        width: width multiplier (1.0: the base widths of the module docstring, about 3.7M parameters).
        levels: number of subnets :meth:`forward` runs, 1 to 3.
        margin: mirrored input pixels added on every side and cropped from each level's output (0: none).

    Raises:
        ValueError: ``width`` not a positive finite number, or ``levels`` not 1, 2 or 3.
    """

    #: Input sizes are padded to a multiple of this: the style subnet divides its input by 4, the
    #: enhance subnet its 2x input by 8 (2 * 4 is a multiple of 8), the refine subnet its 4x input by 4.
    MULTIPLE = 4
    MIN_SIZE = 8
    __constants__ = ["MULTIPLE", "MIN_SIZE"]

    def __init__(self, width: float = 1.0, levels: int = 3, margin: int = MARGIN):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, numbers.Real) or not (width > 0 and math.isfinite(width)):
            raise ValueError(f"width must be a positive number, got {width!r}")
        self.width = float(width)
        self.levels = _check_levels(levels)
        self.margin = check_margin(margin)
        self.style = StyleSubnet(self.width)
        self.enhance = EnhanceSubnet(self.width)
        self.refine = RefineSubnet(self.width)

    def config(self) -> dict:
        """The constructor's arguments (stored in checkpoints and exported metadata)."""
        return {"width": self.width, "levels": self.levels, "margin": self.margin}

    @staticmethod
    def output_scale(levels: int) -> int:
        """Output size over input size when ``levels`` subnets run: ``2 ** (levels - 1)``."""
        return 2 ** (_check_levels(levels) - 1)

    @torch.jit.export
    def forward_levels(self, x: torch.Tensor, levels: int | None = None) -> list[torch.Tensor]:
        """The outputs ``[y1, y2, y3][:levels]`` (default ``self.levels``) of ``x`` (N, 3, H, W) in [0, 1].

        ``y_k`` is RGB in [0, 1] of size ``(H * 2**(k-1), W * 2**(k-1))``.

        Raises:
            ValueError: ``levels`` not 1, 2 or 3, ``x`` not (N, 3, H, W), or ``H`` or ``W`` under ``MIN_SIZE``.
        """
        n = self.levels if levels is None else levels
        if n < 1 or n > 3:
            raise ValueError(f"levels must be 1, 2 or 3, got {n}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) image batch, got shape {list(x.shape)}")
        if x.shape[-2] < self.MIN_SIZE or x.shape[-1] < self.MIN_SIZE:
            raise ValueError(f"image sizes must be at least {self.MIN_SIZE}, got {x.shape[-2]}x{x.shape[-1]}")
        m = self.margin
        xp, h, w = pad_margin(x, m, self.MULTIPLE)
        y = to_range(self.style(xp))
        outs = [y[:, :, m:m + h, m:m + w]]
        if n >= 2:
            y = to_range(self.enhance(_upsample2(y)))
            outs.append(y[:, :, 2 * m:2 * (m + h), 2 * m:2 * (m + w)])
        if n >= 3:
            y = to_range(self.refine(_upsample2(y)))
            outs.append(y[:, :, 4 * m:4 * (m + h), 4 * m:4 * (m + w)])
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last level's output: ``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, H * s, W * s)``, ``s = 2**(levels-1)``."""
        return self.forward_levels(x, self.levels)[-1]
