"""Perceptual losses of Gatys et al.: content, Gram style, total variation.

With ``F`` the output's features at a layer (``N`` channels, ``M = H*W`` positions), ``P`` the
content's and ``A`` the style's Gram matrix:

* content: ``L_c = 1/2 sum (F - P)^2``;
* style: ``E_l = 1/(4 N^2 M^2) sum (G - A)^2`` with ``G = F F^T``; computed as
  ``1/(4 N^2) sum (G' - A')^2`` on Gram matrices normalized by ``M`` (the same value, better
  conditioned);
* total: ``alpha * sum_l w_l L_c^l + beta * sum_l w_l E_l + tv * R_TV``.

Every style statistic goes through :mod:`nst_deploy.kernels`, so fused kernels plug in here
without changing the loop. Targets are computed once (:class:`PerceptualLoss` caches them); one
loss-network pass of the output per step serves every term. Layers of weight 0 are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import NSTError
from .kernels import gram, gram_loss
from .lossnets import LossNetwork
from .styles import StyleLoss

__all__ = ["LossTerms", "PerceptualLoss", "balanced_style_layers", "content_loss", "gram_style_loss", "tv_loss"]


def content_loss(f: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``1/2 sum (F - P)^2`` (summed over the batch too)."""
    return 0.5 * (f - p).square().sum()


def gram_style_loss(f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1/(4 N^2 M^2) sum (F F^T - A)^2`` for features ``f`` and ``target = A / M`` (Gram / HW).

    Computed by the fused :func:`nst_deploy.kernels.gram_loss` (Triton on CUDA): the forward keeps
    only ``G - A``, the backward is one pass over ``F``.
    """
    n = f.shape[1]
    return gram_loss(f, target, normalize="hw", scale=1.0 / (4.0 * n * n))


@torch.no_grad()
def balanced_style_layers(net: LossNetwork, style: torch.Tensor, layers: dict[str, float]) -> dict[str, float]:
    """``layers`` with each weight divided by the style term the painting's own Gram ``A`` sets the scale of:
    ``w_l * 4 N^2 / ||A'||^2`` (``A' = A / M``), so that each layer's ``E_l`` becomes its squared relative Gram
    error ``||G' - A'||^2 / ||A'||^2``.

    Why: plain ``E_l`` differ by orders of magnitude between layers (on a photo against Starry Night at 384 px,
    relu3_3 and relu1_2 make about 90% of the relu1_2..relu4_3 term, relu5_1 under 0.1% of the relu*_1 one), so
    training serves one or two layers and leaves the rest, where the relative error weighs every layer alike.
    """
    feats = net(style, list(layers))
    out = {}
    for name, w in layers.items():
        a = gram(feats[name][:1].double(), normalize="hw")[0]
        n = a.shape[0]
        out[name] = float(w * 4.0 * n * n / a.square().sum().clamp_min(1e-30))
    return out


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation ``sum (x[i+1, j] - x[i, j])^2 + (x[i, j+1] - x[i, j])^2``, mean over pixels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).square().sum()
    dw = (x[..., :, 1:] - x[..., :, :-1]).square().sum()
    return (dh + dw) / x[..., 0, :, :].numel()


@dataclass
class LossTerms:
    """The weighted loss terms of one step (plain floats, for logs and progress)."""

    total: float
    content: float
    style: float
    tv: float
    #: deformable transfer: the weighted keypoint and flow-smoothness terms (0 otherwise)
    warp: float = 0.0

    def as_dict(self) -> dict[str, float]:
        d = {"total": self.total, "content": self.content, "style": self.style, "tv": self.tv}
        if self.warp:
            d["warp"] = self.warp
        return d


@dataclass
class PerceptualLoss:
    """Content + style + TV loss with targets computed once.

    Args:
        net: the loss network.
        content_layers: ``{layer: weight}`` for the content term.
        style_layers: ``{layer: weight}`` for the style term (one Gram style), unless ``style`` is given.
        content_weight, style_weight, tv_weight: alpha, beta and the TV weight.
        style: a :class:`~nst_deploy.styles.StyleLoss` (several styles, masks, other representations);
            by default one Gram style on ``style_layers``.
    """

    net: LossNetwork
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 0.0
    style: StyleLoss | None = None
    _content_targets: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _style_set: bool = field(default=False, repr=False)

    def __post_init__(self):
        self.content_layers = {k: float(v) for k, v in self.content_layers.items() if v != 0}
        self.style_layers = {k: float(v) for k, v in self.style_layers.items() if v != 0}
        if self.style is None:
            self.style = StyleLoss([self.style_layers], [1.0])
        if self.content_weight == 0:
            self.content_layers = {}
        if self.style_weight == 0 or not self.style.layers:
            self.style = None
        if not self.content_layers and self.style is None and self.tv_weight == 0:
            raise NSTError("nothing to optimize: every content and style layer has weight 0")
        wanted = list(self.content_layers) + (self.style.layers if self.style else [])
        self.layers = self.net.resolve(wanted) if wanted else []

    @torch.no_grad()
    def set_content(self, image: torch.Tensor) -> None:
        """Compute and keep the content targets ``P`` of ``image``."""
        if not self.content_layers:
            return
        feats = self.net(image, list(self.content_layers))
        self._content_targets = {k: v.detach().clone() for k, v in feats.items()}

    @torch.no_grad()
    def set_style(self, image: torch.Tensor | list[torch.Tensor], style_masks: list | None = None) -> None:
        """Compute and keep the style targets of ``image`` (one per style; see :class:`StyleLoss`)."""
        if self.style is None:
            return
        images = image if isinstance(image, (list, tuple)) else [image]
        if len(images) != self.style.n:
            raise NSTError(f"{len(images)} style images for {self.style.n} styles")
        feats = [self.net(img, self.style.layers) for img in images]
        self.style.set_targets(feats, style_masks)
        self._style_set = True

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, LossTerms]:
        """The total loss of ``x`` (differentiable) and its weighted terms."""
        if self.content_layers and not self._content_targets:
            raise NSTError("set_content() must be called before computing the loss")
        if self.style is not None and not self._style_set:
            raise NSTError("set_style() must be called before computing the loss")
        feats = self.net(x, self.layers) if self.layers else {}
        zero = x.new_zeros(())
        c = sum((w * content_loss(feats[k], self._content_targets[k]) for k, w in self.content_layers.items()),
                zero)
        s = self.style(feats) if self.style is not None else zero
        t = tv_loss(x) if self.tv_weight else zero
        c, s, t = self.content_weight * c, self.style_weight * s, self.tv_weight * t
        total = c + s + t
        return total, LossTerms(float(total.detach()), float(c.detach()), float(s.detach()), float(t.detach()))
