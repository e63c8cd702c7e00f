"""Several styles, spatial guidance and the alternative style representations.

One output is matched to ``n`` styles; the total loss is
``alpha L_content + beta sum_i w_i L_style_i`` with

* **hierarchical** multi-style (the default for several styles): each style has its own subset of
  the loss network's layers. Given only images, the style layers are cut into ``n`` contiguous
  segments at the pooling layers (two styles on conv1_1..conv5_1: the first on conv1_1, conv2_1,
  the second on conv3_1, conv4_1, conv5_1);
* **blend**: every style on the same layers, their statistics blended by weight (one target per
  layer, ``sum_i w_i A_i / sum_i w_i``);
* **spatial** (each style has a mask on the output): the masks are normalized so that they sum to
  1 wherever any covers the image (soft edges blend smoothly; a lone mask is used as given), brought
  to every layer's resolution by area averaging, and each style is compared through the masked Gram
  ``G_k = (F M_k)(F M_k)^T / sum M_k`` (statistics per unit of mask area). A style may also have a
  mask on the style image: its target is then the masked Gram of the style's features.

Style representations (``rep``):

* ``gram``: ``1/(4 C^2) sum (G - A)^2`` (Gatys et al.), fused kernels;
* ``autocorr``: the per-channel spatial autocorrelation over every lag (the "spatial style
  representation"), by Parseval in the frequency domain; the style features must have the
  output's size, so the style image is scaled to cover the output and centre-cropped;
* ``local``: the localized Gram, pixel-wise (``window=0``) or windowed, for aligned images (the style
  is brought to the output's size the same way).

One loss-network pass of the output per step serves every style and the content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import NSTError
from .kernels import (
    AutocorrSpectrum,
    autocorr_spectrum,
    autocorr_style_loss,
    gram,
    gram_loss,
    local_gram_loss,
    masked_gram,
    masked_gram_style_loss,
)

__all__ = ["MULTI_STYLE", "STYLE_REPS", "Style", "StyleLoss", "assign_layers", "normalize_masks", "pool_segments"]

STYLE_REPS = ("gram", "autocorr", "local")
MULTI_STYLE = ("hierarchical", "blend")
#: Scale of the autocorrelation and localized losses relative to the mean squared difference of
#: their statistics, so that the same beta gives a comparable strength to the Gram loss (measured
#: on the bundled images, see docs/styles.md).
REP_SCALE = {"autocorr": 0.75, "local": 0.02}


@dataclass
class Style:
    """One style of a stylization.

    Attributes:
        image: path, PIL image, ``HxWx3`` uint8 array or RGB tensor.
        weight: its weight ``w_i`` (relative: beta multiplies every style).
        layers: its loss-network layers (``"conv1_1,conv2_1:0.5"``, a list or a dict); ``None``: the
            default assignment (see the module docstring).
        mask: where on the output this style applies (path, PIL image, ``(H, W)`` or ``(1, 1, H, W)``
            tensor in ``[0, 1]``), the output's aspect ratio.
        style_mask: which part of the style image gives its statistics (the style image's aspect).
    """

    image: Any
    weight: float = 1.0
    layers: Any = None
    mask: Any = None
    style_mask: Any = None


def as_styles(style) -> list[Style]:
    """A style argument (one image, a :class:`Style`, or a list of either) as a list of styles."""
    items = style if isinstance(style, (list, tuple)) else [style]
    if not items:
        raise NSTError("no style given")
    out = [s if isinstance(s, Style) else Style(s) for s in items]
    for i, s in enumerate(out, 1):
        if not (isinstance(s.weight, (int, float)) and not isinstance(s.weight, bool) and s.weight >= 0
                and s.weight == s.weight and s.weight != float("inf")):
            raise NSTError(f"style {i}: weight must be a finite number >= 0, not {s.weight!r}")
    if not any(s.weight > 0 for s in out):
        raise NSTError("every style has weight 0")
    return out


def _block_of(layer_names: tuple[str, ...]) -> dict[str, int]:
    """The pooling block of every layer: how many pooling layers come before it."""
    block, out = 0, {}
    for name in layer_names:
        out[name] = block
        if name.startswith("pool"):
            block += 1
    return out


def pool_segments(layers: dict[str, float], layer_names: tuple[str, ...]) -> list[dict[str, float]]:
    """``layers`` (in network order) grouped by pooling block: one dict per block that has any."""
    block = _block_of(layer_names)
    groups: dict[int, dict[str, float]] = {}
    for name in sorted(layers, key=layer_names.index):
        groups.setdefault(block[name], {})[name] = layers[name]
    return list(groups.values())


def assign_layers(style_layers: dict[str, float], n: int, layer_names: tuple[str, ...]) -> list[dict[str, float]]:
    """The default hierarchical assignment: ``n`` contiguous segments of the style layers, cut at pooling.

    Blocks are shared out in order, ``floor(i * blocks / n)`` being where style ``i`` starts, so with
    five blocks two styles get two and three blocks.
    """
    if n == 1:
        return [dict(style_layers)]
    blocks = pool_segments(style_layers, layer_names)
    if n > len(blocks):
        raise NSTError(f"{n} styles, but the style layers ({', '.join(style_layers)}) span only {len(blocks)} "
                       "pooling blocks: give each style its own layers, or blend them (multi-style blend)")
    cuts = [i * len(blocks) // n for i in range(n + 1)]
    return [{k: v for b in blocks[cuts[i]:cuts[i + 1]] for k, v in b.items()} for i in range(n)]


def normalize_masks(masks: torch.Tensor) -> torch.Tensor:
    """``(1, K, H, W)`` masks in ``[0, 1]`` scaled to sum to 1 wherever any is non-zero (``K >= 2``).

    Where no mask covers a pixel, every weight stays 0 (that region gets no style). A single mask
    is returned as given (it only limits where its style applies, softly at soft edges).
    """
    if masks.shape[1] < 2:
        return masks
    total = masks.sum(1, keepdim=True)
    return torch.where(total > 0, masks / total.clamp_min(1e-12), torch.zeros_like(masks))


def _mask_at(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A mask brought to a layer's resolution: the mean of the mask over each feature's footprint."""
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask
    return F.adaptive_avg_pool2d(mask, hw)


@dataclass
class _Term:
    """One style on one layer."""

    style: int
    layer: str
    weight: float  # w_i * layer weight
    layer_weight: float


class StyleLoss:
    """The style part of the perceptual loss: several styles, layer subsets, masks, representations.

    Args:
        layer_sets: per style, ``{layer: weight}``.
        weights: per style ``w_i``.
        rep: ``"gram"``, ``"autocorr"`` or ``"local"``.
        window: the localized Gram's window ``s`` (``rep="local"``; 0 = pixel-wise).
        blend: one target per layer, the weighted mean of the styles' statistics (every style must
            have the same layers).
    """

    def __init__(self, layer_sets: list[dict[str, float]], weights: list[float], *, rep: str = "gram",
                 window: int = 0, blend: bool = False):
        if rep not in STYLE_REPS:
            raise NSTError(f"unknown style representation '{rep}': choose from {', '.join(STYLE_REPS)}")
        if len(layer_sets) != len(weights):
            raise NSTError(f"{len(layer_sets)} layer sets for {len(weights)} styles")
        if blend and any(set(s) != set(layer_sets[0]) for s in layer_sets):
            raise NSTError("blend puts every style on the same layers; give the styles the same layers "
                           "(or use hierarchical multi-style)")
        if blend and rep == "local":
            raise NSTError("blend is not available with the local style representation (its target is the style's "
                           "features, which cannot be averaged meaningfully): use gram or autocorr")
        self.rep, self.window, self.blend = rep, int(window), blend
        self.n = len(weights)
        total = sum(weights)
        if blend:  # one term per layer; the blend weights only mix the targets
            self.mix = [w / total for w in weights]
            self.terms = [_Term(0, k, v, v) for k, v in layer_sets[0].items() if v > 0]
        else:
            self.mix = None
            self.terms = [_Term(i, k, w * v, v) for i, (ls, w) in enumerate(zip(layer_sets, weights, strict=True))
                          for k, v in ls.items() if v > 0 and w > 0]
        self._by_layer: dict[str, list[_Term]] = {}
        for t in self.terms:
            self._by_layer.setdefault(t.layer, []).append(t)
        self.layers = list(self._by_layer)
        # per layer, for the Gram loss: the stacked targets and weights (set with the targets)
        self._stacked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.masks: torch.Tensor | None = None
        self._mask_cache: dict[tuple[str, tuple[int, int]], torch.Tensor] = {}
        self._targets: dict[tuple[int, str], Any] = {}
        self.balance = [1.0] * self.n

    def set_masks(self, masks: torch.Tensor | None) -> None:
        """Output masks ``(1, n, H, W)`` at the output's resolution (normalized here), or ``None``."""
        if masks is not None:
            if self.rep != "gram":
                raise NSTError(f"masks need the gram style representation, not {self.rep}")
            if self.blend:
                raise NSTError("masks place each style in its own region; they cannot be combined with blend")
            if masks.dim() != 4 or masks.shape[:2] != (1, self.n):
                raise NSTError(f"expected {self.n} masks of shape (1, {self.n}, H, W), got {tuple(masks.shape)}")
            masks = normalize_masks(masks.float())
        self.masks = masks
        self._mask_cache = {}

    @torch.no_grad()
    def set_targets(self, feats: list[dict[str, torch.Tensor]],
                    style_masks: list[torch.Tensor | None] | None = None) -> None:
        """Compute the targets from each style's features (``{layer: (1, C, h, w)}``, one dict per style).

        ``style_masks``: per style ``None`` or a ``(1, 1, h, w)`` mask at the style image's resolution.
        """
        if len(feats) != self.n:
            raise NSTError(f"{len(feats)} style images for {self.n} styles")
        style_masks = style_masks or [None] * self.n
        if any(m is not None for m in style_masks) and self.rep != "gram":
            raise NSTError(f"style masks need the gram style representation, not {self.rep}")
        stats: dict[tuple[int, str], Any] = {}
        for i, f in enumerate(feats):
            for layer in self._layers_of(i):
                stats[i, layer] = self._statistic(f[layer].detach(), style_masks[i])
        if self.blend:
            self._targets = {(0, t.layer): self._mix([stats[i, t.layer] for i in range(self.n)]) for t in self.terms}
        else:
            self._targets = {(t.style, t.layer): stats[t.style, t.layer] for t in self.terms}
            self._balance({i: f for i, f in enumerate(feats)})
        if self.rep == "gram":
            self._stacked = {
                layer: (torch.stack([self._targets[t.style, t.layer] for t in terms]),
                        torch.tensor([t.weight * self.balance[t.style] for t in terms], dtype=torch.float32,
                                     device=self._targets[terms[0].style, layer].device))
                for layer, terms in self._by_layer.items()}

    def _balance(self, feats: dict[int, dict[str, torch.Tensor]]) -> None:
        """Scale each style by ``mean_j N_j / N_i``, ``N_i`` its loss at all-zero features.

        Layers differ in scale by orders of magnitude (VGG19, Gram loss at content init: about 1e6 on
        conv1_1, 1e11 on conv4_1), so a style on the low layers would barely pull against one on the
        high layers. ``N_i = sum_l w_l E_l(0)`` (``||A||^2 / 4C^2`` for the Gram loss) depends on the
        targets alone; with the balance, equal style weights mean an equal pull. One style: no change.
        """
        if self.n < 2:
            return
        norms = [0.0] * self.n
        for t in self.terms:
            f = feats[t.style][t.layer]
            zero = f.new_zeros((1, f.shape[1], 1, 1) if self.rep == "gram" else (1, *f.shape[1:]))
            norms[t.style] += t.layer_weight * float(self._term_loss(zero, t, 1.0))
        used = [v for v in norms if v > 0]
        mean = sum(used) / len(used) if used else 1.0
        self.balance = [mean / v if v > 0 else 1.0 for v in norms]

    def _layers_of(self, i: int) -> list[str]:
        if self.blend:
            return [t.layer for t in self.terms]
        return [t.layer for t in self.terms if t.style == i]

    def _statistic(self, f: torch.Tensor, style_mask: torch.Tensor | None):
        if self.rep == "gram":
            if style_mask is None:
                return gram(f, normalize="hw").mean(0)
            m = _mask_at(style_mask.to(f), tuple(f.shape[-2:]))
            if float(m.sum()) <= 0:
                raise NSTError("a style mask is empty at a loss-network layer's resolution: it must cover part "
                               "of the style image")
            return masked_gram(f, m)[:, 0].mean(0)
        if self.rep == "autocorr":
            return autocorr_spectrum(f)
        return f  # local: the aligned style features themselves

    def _mix(self, stats: list):
        assert self.mix is not None
        if isinstance(stats[0], AutocorrSpectrum):
            power = sum(w * s.power for w, s in zip(self.mix, stats, strict=True))
            for s in stats:
                if s.size != stats[0].size:
                    raise NSTError("blended autocorrelation styles must have the same feature size")
            return AutocorrSpectrum(power=power, size=stats[0].size, fft_shape=stats[0].fft_shape,
                                    normalize=stats[0].normalize)
        return sum(w * s for w, s in zip(self.mix, stats, strict=True))

    def _masks_at(self, layer: str, hw: tuple[int, int]) -> torch.Tensor:
        """The masks of ``layer``'s styles at its resolution (kept until the masks change)."""
        m = self._mask_cache.get((layer, hw))
        if m is None:
            idx = [t.style for t in self._by_layer[layer]]
            m = self._mask_cache[layer, hw] = _mask_at(self.masks, hw)[:, idx]
        return m

    def __call__(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted style loss ``sum_i w_i sum_l w_l E_l^i`` of the output's features."""
        if self.terms and not self._targets:
            raise NSTError("the style targets are not set (set_style() / set_targets())")
        total = None
        for layer in self.layers:
            loss = self._layer_loss(layer, feats[layer])
            total = loss if total is None else total + loss
        if total is None:
            return next(iter(feats.values())).new_zeros(()) if feats else torch.zeros(())
        return total

    def _layer_loss(self, layer: str, f: torch.Tensor) -> torch.Tensor:
        c = f.shape[1]
        if self.rep == "gram":
            targets, weights = self._stacked[layer]
            if self.masks is None:
                return gram_loss(f, targets, weights, normalize="hw", scale=1.0 / (4.0 * c * c))
            m = self._masks_at(layer, tuple(f.shape[-2:])).to(f)
            return masked_gram_style_loss(f, m, targets, weights)
        loss = None
        for t in self._by_layer[layer]:
            v = self._term_loss(f, t, t.weight * self.balance[t.style])
            loss = v if loss is None else loss + v
        return loss

    def _term_loss(self, f: torch.Tensor, t: _Term, weight: float) -> torch.Tensor:
        """One style's loss on one layer, unmasked."""
        target = self._targets[t.style, t.layer]
        if self.rep == "gram":
            c = f.shape[1]
            return gram_loss(f, target, [weight], normalize="hw", scale=1.0 / (4.0 * c * c))
        if self.rep == "autocorr":
            v = autocorr_style_loss(f, target, reduction="mean")
        else:
            v = local_gram_loss(f, target, window=self.window, reduction="mean")
        return (REP_SCALE[self.rep] * weight) * v


def load_style_mask(mask, hw: tuple[int, int], what: str) -> torch.Tensor:
    """A mask argument (path, PIL image, tensor) as ``(1, 1, H, W)`` in ``[0, 1]`` at ``hw``."""
    from PIL import Image

    from .images import fit_mask, from_pil, load_mask

    if isinstance(mask, (str, Path)):
        if not Path(mask).is_file():
            raise NSTError(f"{what} '{mask}' does not exist")
        return load_mask(mask, size=hw)
    if isinstance(mask, Image.Image):
        m = from_pil(mask.convert("L").convert("RGB"))[:, :1]
    elif isinstance(mask, torch.Tensor):
        m = mask.detach().float().cpu()
        while m.dim() < 4:
            m = m.unsqueeze(0)
        if m.dim() != 4 or m.shape[:2] != (1, 1):
            raise NSTError(f"{what} tensor must be (H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise NSTError(f"{what} tensor values must be in [0, 1]")
    else:
        raise NSTError(f"{what} must be a path, PIL image or tensor, not {type(mask).__name__}")
    return fit_mask(m, hw, what)
