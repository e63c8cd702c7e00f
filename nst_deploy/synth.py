"""Style generation from synthetic Gram targets (``nst synth``).

There is no content term: the image starts from seeded white noise and its pixels are optimized
so that the loss network's Gram matrices approach targets that are made up rather than measured.
With ``F_l`` the features at layer ``l`` (``C_l`` channels, ``M_l = H_l W_l`` positions),
``G_l = F_l F_l^T / M_l`` (normalized as in :func:`nst_deploy.losses.gram_style_loss`) and ``A_l``
the target, the loss is

    ``L = beta * sum_l w_l E_l``,  ``E_l = 1/(4 C_l^2) sum_ij (G_l[i, j] - A_l[i, j])^2``.

Targets (symmetric, as a Gram matrix is): ``single``: ``A_l = 0`` except ``A_l[i, j] = A_l[j, i] = a``
on one layer; ``sparse``: ``A[i, j] = A[j, i] = m_ij |z_ij|`` (``i <= j``), ``z_ij ~ N(0, a^2)``,
``m_ij ~ Bernoulli(1 - s)``: a fraction ``s`` (sparsity) of zeros, half-normal values of root mean
square ``a`` (amplitude) elsewhere; ``mimic``: ``sparse`` with each layer's ``(s_l, a_l)`` measured on
a painting (:func:`painting_statistics`); ``texture``: the Gram matrices of a style image (Gatys et
al. 2015). Fixed targets: L-BFGS (see :data:`LINE_SEARCH`); targets drawn anew at each step
(``redraw``): Adam, as an L-BFGS curvature history built on one objective is meaningless for the next.

Defaults, measured with the bundled VGG19 at 96 px, 100 steps (``hf``: the fraction of the grey
image's spectral power above a quarter of the sampling rate, 0.81 for white noise; ``cos``: the
cosine between ``G_l`` and ``A_l``, start -> end):

* layers ``relu1_1..relu5_1`` for the synthetic modes: the targets are non-negative with zero
  diagonal entries (silent channels), as post-ReLU Grams can be; pre-ReLU ones are half negative
  and a zero diagonal entry asks for a feature map identically 0. relu / conv: sparse hf 0.27 /
  0.46, mimic hf 0.24 / 0.43 and cos (relu1_1 / conv1_1) 0.39 -> 0.51 / 0.02 -> 0.03. ``single``:
  ``relu3_1``, whose entry gets 0.3% to 2.3% of the Gram energy (seeds 0-2; from < 1e-5) against
  0.3% to 0.7% on ``conv3_1`` (``relu2_1`` was often flat, ``relu4_1`` blurred). ``texture`` keeps
  ``conv1_1..conv5_1`` as ``nst stylize``: the loss falls 223x, hf 0.20;
* amplitude: targets of the reference painting's energy, ``||A_l||_F = ||G_l(painting)||_F``
  (:func:`matched_amplitude`; ``mimic`` has it by construction). A single entry needs that much:
  at the optimum of ``2 (t - a)^2 + k t^2`` (``k``: the energy the other entries gain with
  ``G_ij = t``) ``t = 2a / (2 + k)``; ``t`` reached about ``a / 20``, and the painting's largest
  entry as ``a`` gave a noise-like image (hf 0.72 at 64 px);
* start ``0.5 + 0.2 (U - 0.5)`` (``noise = 0.2``), not ``U``: noise that no target constrains stays
  (texture hf 0.20 against 0.36 from ``U``, sparse 0.27 against 0.52).

Random targets are mostly not Gram matrices of any image, and no better definition of them made
their loss fall by more than 1.8x (seeds 0-2, 64 px, 100 steps; 96 px alike). A post-ReLU Gram is
doubly non-negative (PSD and ``>= 0``); :func:`realizable` gives the nearest such matrix ``A'``,
``||A' - A|| / ||A||`` = 0.71 (single: ``[[0, a], [a, 0]] -> a/2 [[1, 1], [1, 1]]``), 0.67 to 0.69
(sparse), 0.47 to 0.68 (mimic). Optimized towards ``A'``, the loss falls 1.06-1.14x (single),
1.17-1.18x (sparse), 1.64-1.65x (mimic; 1.78x at 96 px; Adam, 500 steps: 1.67x) instead of
1.03-1.06x, 1.04x, 1.29-1.30x towards ``A``, with the same picture (hf 0.26 to 0.49) and ``G``
(sparse, seed 0: cosine 0.95 to 0.995 between the two runs' Grams on relu1_1..relu4_1):
as ``A - A'`` lies in the cone's polar, ``||G - A||^2 >= ||G - A'||^2 + ||A - A'||^2`` for every realizable
``G``, so optimizing towards ``A`` already goes towards ``A'`` (the raw runs reach 1.06-1.65x
against ``A'``). ``A = B B^T / r`` with sparse half-normal ``B`` (``C x C``, a density giving the
sparsity, scaled to the energy) is doubly non-negative by construction: 1.03x (sparse), 1.14x
(mimic). The relative error ``||G - A'|| / ||A'||`` ends at 0.94 to 0.97 (single), 0.91 to 1.05
(sparse), 0.76 to 1.30 (mimic, relu5_1 the largest). The feasible set is much smaller than the cone:
the Gram of an image is nearly rank one, ``mu mu^T`` of the channel means ``mu`` (the top eigenvalue
holds 83-94% of ``||G||^2`` on the painting, 65-94% on the outputs; its eigenvector is at cosine >=
0.98 from ``mu``), along a direction that images barely move (the outputs' top eigenvector has
cosine 0.54 to 0.97 with the painting's). Against a rank-one ``G`` the relative error is at least
``sqrt(1 - lambda_1^2 / ||A'||^2)``: 0.88 to 0.90 for sparse (the top eigenvalue of ``A'`` holds
20%), 0.54 to 0.86 for mimic; ``single``'s ``A'`` is rank one but along ``e_i + e_j``, at cosine
0.06 to 0.17 from the images' direction. A target the loss can approach closely must be nearly rank
one along that direction, i.e. close to some image's Gram (``texture``). The image still takes the
targets' structure (cos on relu3_1: sparse 0.11 -> 0.19, mimic 0.22 -> 0.39). ``single`` with
``redraw`` gives a near-flat image: the mean of its targets is almost zero.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .devices import resolve_device
from .errors import NSTError
from .images import as_image_tensor, check_output, resize_longest, source_size
from .kernels import gram
from .losses import LossTerms, gram_style_loss
from .lossnets import LOSSNETS, LossNetwork, load_lossnet
from .options import DEFAULT_LR, MAX_SIZE, OPTIMIZERS
from .pixels import PixelOptimizer, StepInfo
from .presets import GATYS_STYLE, parse_layers

__all__ = [
    "DEFAULT_NOISE", "DEFAULT_PAINTING", "DEFAULT_SINGLE_LAYER", "DEFAULT_SPARSITY", "MODES", "SYNTH_LAYERS",
    "LINE_SEARCH", "ZERO_THRESHOLD", "GramStats", "GramTargetLoss", "add_synth_parser", "cmd_synth", "draw_entry",
    "DNN_MAX_ITER", "DNN_TOL", "image_grams", "matched_amplitude", "mimic_targets", "painting_statistics",
    "realizable", "realizable_targets", "single_entry_targets", "sparse_targets", "synth",
]

MODES = ("single", "sparse", "mimic", "texture")
DEFAULT_PAINTING = Path(__file__).resolve().parent / "data" / "starry_night.jpg"
#: The default layers of the synthetic modes (``texture`` uses ``conv1_1..conv5_1``, as ``nst stylize``).
SYNTH_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_SINGLE_LAYER = "relu3_1"
#: The start: ``0.5 + noise * (U - 0.5)``, ``U`` uniform white noise in ``[0, 1]``.
DEFAULT_NOISE = 0.2
DEFAULT_SPARSITY = 0.9
#: An entry counts as zero when ``|G_ij| < ZERO_THRESHOLD * max |G|`` over its layer.
ZERO_THRESHOLD = 1e-2
#: L-BFGS's line search. From the grey start the loss is concave in places (a Gram growing from about 0
#: towards ``A``), where L-BFGS without one keeps its tiny first step and barely moves.
LINE_SEARCH = "strong_wolfe"
#: :func:`realizable` stops when an iteration moves the matrix by less than ``DNN_TOL ||A||_F``, or
#: after ``DNN_MAX_ITER`` iterations.
DNN_TOL = 1e-6
DNN_MAX_ITER = 500

Targets = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GramStats:
    """One layer's Gram statistics that ``mimic`` reproduces (see :func:`painting_statistics`).

    ``channels`` is ``C``; ``sparsity`` the fraction of entries with ``|G_ij| < ZERO_THRESHOLD * max|G|``;
    ``amplitude`` the root mean square of the others, the scale ``a`` of a half-normal ``|N(0, a^2)|``.
    """

    channels: int
    sparsity: float
    amplitude: float


# --- target builders ----------------------------------------------------------------------------

def single_entry_targets(channels: Mapping[str, int], layer: str, i: int, j: int, amplitude: float) -> Targets:
    """Zero targets on every layer of ``channels`` except ``A[layer][i, j] = A[layer][j, i] = amplitude``."""
    if layer not in channels:
        raise NSTError(f"entry layer '{layer}' is not one of the layers ({', '.join(channels)})")
    c = channels[layer]
    if not (0 <= i < c and 0 <= j < c):
        raise NSTError(f"entry {i},{j} is out of range for {layer}, which has {c} channels (0..{c - 1})")
    targets = {k: torch.zeros(n, n) for k, n in channels.items()}
    targets[layer][i, j] = targets[layer][j, i] = float(amplitude)
    return targets


def draw_entry(channels: Mapping[str, int], generator: torch.Generator) -> tuple[str, int, int]:
    """A random ``(layer, i, j)``: the layer uniform over ``channels``, then ``i`` and ``j`` uniform."""
    names = list(channels)
    layer = names[int(torch.randint(len(names), (), generator=generator))]
    i, j = (int(v) for v in torch.randint(channels[layer], (2,), generator=generator))
    return layer, i, j


def _per_layer(value, names) -> dict[str, float]:  # one value for every layer, or one per layer
    return {k: float(value[k] if isinstance(value, Mapping) else value) for k in names}


def sparse_targets(channels: Mapping[str, int], amplitude: float | Mapping[str, float],
                   sparsity: float | Mapping[str, float], generator: torch.Generator) -> Targets:
    """Random symmetric sparse targets ``A[i, j] = A[j, i] = m_ij |z_ij|``, ``z ~ N(0, a^2)``, ``m ~ B(1 - s)``.

    The upper triangle (diagonal included) is drawn and mirrored, so the fraction of zeros is ``s``
    in expectation on and off the diagonal. ``amplitude`` and ``sparsity`` are one value or one per
    layer.
    """
    amps, sps = _per_layer(amplitude, channels), _per_layer(sparsity, channels)
    out: Targets = {}
    for k, c in channels.items():
        z = torch.randn(c, c, generator=generator).abs() * amps[k]
        keep = torch.rand(c, c, generator=generator) >= sps[k]
        upper = torch.triu(z * keep)
        out[k] = upper + upper.triu(1).T
    return out


def painting_statistics(grams: Mapping[str, torch.Tensor], threshold: float = ZERO_THRESHOLD) -> dict[str, GramStats]:
    """Per-layer :class:`GramStats` of Gram matrices ``(C, C)`` (or ``(1, C, C)``).

    ``s = #{|G_ij| < threshold * max |G|} / C^2`` and ``a = sqrt(mean G_ij^2)`` over the other
    entries. Gram matrices of real images have almost no exact zeros, hence the relative threshold;
    at 1e-2 the bundled Starry Night at 256 px has ``s`` = 0.21, 0.16, 0.36, 0.32, 0.63 on
    ``relu1_1..relu5_1`` (the small entries hold at most 1.2% of the energy).
    """
    out = {}
    for k, g in grams.items():
        a = g.detach().reshape(g.shape[-2:]).abs().float()
        small = a < threshold * a.max()
        big = a[~small]
        amp = float(big.square().mean().sqrt()) if big.numel() else 0.0
        out[k] = GramStats(a.shape[0], float(small.float().mean()), amp)
    return out


def matched_amplitude(gram: torch.Tensor, cells: float) -> float:
    """The amplitude ``a`` giving targets of the same energy as ``gram``: ``||G||_F / sqrt(cells)``.

    ``cells`` is the (expected) number of non-zero target entries: 2 for an off-diagonal single entry
    (1 on the diagonal), ``C^2 (1 - s)`` for sparse targets, whose expected ``||A||_F^2`` is
    ``C^2 (1 - s) a^2``.
    """
    return float(gram.detach().float().norm()) / math.sqrt(max(cells, 1e-12))


def mimic_targets(stats: Mapping[str, GramStats], generator: torch.Generator) -> Targets:
    """Sparse targets with each layer's sparsity and amplitude from ``stats`` (see :func:`sparse_targets`)."""
    return sparse_targets({k: s.channels for k, s in stats.items()}, {k: s.amplitude for k, s in stats.items()},
                          {k: s.sparsity for k, s in stats.items()}, generator)


def _project_psd(x: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(x)
    return (v * w.clamp(min=0)) @ v.T


@torch.no_grad()
def realizable(a: torch.Tensor, tol: float = DNN_TOL, max_iter: int = DNN_MAX_ITER) -> tuple[torch.Tensor, float]:
    """The nearest doubly non-negative matrix to ``a`` (Frobenius norm), and its relative change.

    A post-ReLU Gram matrix ``F F^T / M`` (``F >= 0``) is positive semi-definite *and* entrywise
    non-negative. The nearest matrix of both cones is found by Dykstra's alternating projections
    in float64: onto the PSD cone by an eigendecomposition with the negative eigenvalues set to 0,
    onto the non-negative one by clamping; stop when an iteration moves the matrix by less than
    ``tol ||a||_F``, or after ``max_iter`` iterations. The last projection is the clamp, so the
    result is exactly non-negative and symmetric; its eigenvalues are ``>= -O(tol) ||a||``.

    Returns:
        ``(a', ||a' - a||_F / ||a||_F)``, ``a'`` in ``a``'s dtype; a zero ``a`` gives ``(a, 0.0)``.
    """
    x0 = a.detach().double()
    x0 = (x0 + x0.T) / 2
    norm = float(x0.norm())
    if norm == 0:
        return a.clone(), 0.0
    x, p, q = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
    for _ in range(max_iter):
        y = _project_psd(x + p)
        p = x + p - y
        nxt = (y + q).clamp(min=0)
        q = y + q - nxt
        moved = float((nxt - x).norm())
        x = nxt
        if moved < tol * norm:
            break
    x = (x + x.T) / 2
    return x.to(a.dtype), float((x - x0).norm()) / norm


def realizable_targets(targets: Mapping[str, torch.Tensor]) -> tuple[Targets, dict[str, float]]:
    """:func:`realizable` on every layer: ``({layer: A'_l}, {layer: ||A'_l - A_l|| / ||A_l||})``."""
    out, change = {}, {}
    for k, a in targets.items():
        out[k], change[k] = realizable(a)
    return out, change


@torch.no_grad()
def image_grams(net: LossNetwork, image: torch.Tensor, layers) -> Targets:
    """The Gram matrices ``F F^T / (H W)`` of ``image`` at ``layers``, each ``(C, C)``."""
    return {k: gram(v, normalize="hw")[0] for k, v in net(image, list(layers)).items()}


class GramTargetLoss:
    """``beta * sum_l w_l E_l`` against :attr:`targets` (replace them between steps to redraw)."""

    def __init__(self, net: LossNetwork, layers: Mapping[str, float], targets: Targets, weight: float = 1.0):
        self.net, self.layers, self.weight = net, dict(layers), float(weight)
        self.names = net.resolve(list(self.layers))
        self.targets = targets

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, LossTerms]:
        feats = self.net(x, self.names)
        s = sum(w * gram_style_loss(feats[k], self.targets[k].to(x)) for k, w in self.layers.items())
        s = self.weight * s
        v = float(s.detach())
        return s, LossTerms(v, 0.0, v, 0.0)


# --- synth --------------------------------------------------------------------------------------

def _hw(size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hw):
        raise NSTError(f"size must be an integer or (height, width), not {size!r}")
    if not all(1 <= v <= MAX_SIZE for v in hw):
        raise NSTError(f"size {hw[1]}x{hw[0]} is out of range: each side must be between 1 and {MAX_SIZE}")
    return hw


def _check_options(mode, redraw, optimizer, steps, amplitude, sparsity, entry, painting, style, weight, lr):
    if mode not in MODES:
        raise NSTError(f"unknown synth mode '{mode}': choose from {', '.join(MODES)}")
    unused = {"entry": (entry, ("single",)), "sparsity": (sparsity, ("sparse",)),
              "amplitude": (amplitude, ("single", "sparse")), "painting": (painting, ("single", "sparse", "mimic")),
              "style": (style, ("texture",)), "redraw": (redraw or None, ("single", "sparse", "mimic"))}
    for name, (value, modes) in unused.items():
        if value is not None and mode not in modes:
            raise NSTError(f"{name} is not used by mode {mode} (only by {', '.join(modes)})")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise NSTError(f"unknown optimizer '{optimizer}': choose from {', '.join(OPTIMIZERS)}")
    if optimizer == "lbfgs" and redraw:
        raise NSTError("optimizer lbfgs cannot be used with redraw: the targets change at every step, which makes "
                       "the L-BFGS curvature history meaningless; use adam (the default with redraw) or sgd")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise NSTError(f"steps must be a positive integer, not {steps!r}")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise NSTError(f"sparsity must be in [0, 1) (the fraction of zero Gram entries), not {sparsity}")
    for name, v in (("amplitude", amplitude), ("weight", weight), ("lr", lr)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise NSTError(f"{name} must be a positive number, not {v}")
    if entry is not None and redraw:
        raise NSTError("entry fixes the position of the single entry; redraw draws a new one at every step: "
                       "give one or the other")
    if mode == "texture" and style is None:
        raise NSTError("mode texture needs a style image (style / --style)")
    for name, img in (("style", style), ("painting", painting)):
        if isinstance(img, (str, Path)) and not Path(img).is_file():
            raise NSTError(f"{name} image '{img}' does not exist")


def synth(
    mode: str = "sparse",
    *,
    size: int | tuple[int, int] = 256,
    steps: int = 200,
    layers: str | Mapping[str, float] | list[str] | None = None,
    amplitude: float | None = None,
    sparsity: float | None = None,
    entry: tuple[int, int] | tuple[str, int, int] | None = None,
    redraw: bool = False,
    painting=None,
    style=None,
    seed: int = 0,
    optimizer: str | None = None,
    lr: float | None = None,
    weight: float = 1.0,
    noise: float = DEFAULT_NOISE,
    net: str = "vgg19",
    weights: str | None = None,
    device: str = "auto",
    callback: Callable[[StepInfo], None] | None = None,
    return_targets: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Targets]:
    """Generate an image from white noise whose Gram matrices approach synthetic targets.

    Args:
        mode: ``single``, ``sparse``, ``mimic`` or ``texture`` (see the module docstring).
        size: ``H`` for a square image, or ``(H, W)``.
        steps: optimizer steps.
        layers: ``"relu1_1,relu2_1:0.5"``, a list or ``{layer: w_l}``; default ``relu3_1`` for
            ``single``, ``conv1_1..conv5_1`` for ``texture``, ``relu1_1..relu5_1`` otherwise, with
            equal weights ``1/n``.
        amplitude: ``a`` of every layer (``single``, ``sparse``); default per layer: the one giving
            targets of the reference painting's energy (:func:`matched_amplitude`).
        sparsity: ``s``, the fraction of zero target entries, in ``[0, 1)`` (``sparse``; default 0.9).
        entry: ``(i, j)`` on the first layer or ``(layer, i, j)`` (``single``); default drawn from
            the seed (the layer uniformly among ``layers``).
        redraw: draw new targets before every step (``single``, ``sparse``, ``mimic``).
        painting: the reference painting (path or ``(1, 3, H, W)`` tensor) for the default
            amplitude and for ``mimic``; default the bundled Starry Night, seen at the output size.
        style: the style image of ``texture`` (path or tensor), seen at the output size.
        seed: seeds the noise and the targets (one ``torch.Generator`` stream, noise first).
        optimizer: ``lbfgs`` (default for fixed targets), ``adam`` (default with ``redraw``) or ``sgd``.
        lr: learning rate (default as for ``nst stylize``: lbfgs 1, adam 0.02, sgd 1e-4).
        weight: ``beta``. L-BFGS scales the loss by its first value and Adam is scale invariant, so it
            only sets the unit of the reported loss (and the step of ``sgd``).
        noise: the start is ``0.5 + noise * (U - 0.5)`` with ``U`` uniform white noise, in ``(0, 1]``.
        net, weights, device: the loss network and where it runs.
        callback: called after every step with a :class:`~nst_deploy.optimize.StepInfo`.
        return_targets: also return the targets (the last ones drawn, with ``redraw``).

    Returns:
        The image ``(1, 3, H, W)`` in ``[0, 1]`` on the CPU: the best iterate for fixed targets,
        the last one with ``redraw`` (losses against different targets are not comparable); with
        ``return_targets``, ``(image, {layer: A_l})``.

    Raises:
        NSTError: a bad option (named in the message), an unreadable image.
    """
    _check_options(mode, redraw, optimizer, steps, amplitude, sparsity, entry, painting, style, weight, lr)
    if not 0 < noise <= 1:
        raise NSTError(f"noise must be in (0, 1] (the width of the uniform start around grey), not {noise}")
    hw = _hw(size)
    optimizer = optimizer or ("adam" if redraw else "lbfgs")
    if net.lower() not in LOSSNETS:
        raise NSTError(f"unknown loss network '{net}': choose from {', '.join(LOSSNETS)}")
    default = (DEFAULT_SINGLE_LAYER,) if mode == "single" else GATYS_STYLE if mode == "texture" else SYNTH_LAYERS
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise NSTError(f"seed must be an integer between 0 and 2^63 - 1, not {seed!r}")
    layer_w = parse_layers(layers if layers is not None else {k: 1 / len(default) for k in default}, "layers")
    if not any(layer_w.values()):
        raise NSTError("layers: every layer has weight 0")
    dev = resolve_device(device)
    lossnet = load_lossnet(net, weights, device=dev)
    names = lossnet.resolve(list(layer_w))
    need = lossnet.min_input_size(names)
    if min(hw) < need:
        raise NSTError(f"size {hw[1]}x{hw[0]} is too small for {net} up to {names[-1]}: "
                       f"each side needs at least {need} pixels")
    lossnet.truncate(names[-1])

    g = torch.Generator().manual_seed(int(seed))
    x0 = (0.5 + noise * (torch.rand(1, 3, *hw, generator=g) - 0.5)).to(dev)
    with torch.no_grad():
        channels = {k: v.shape[1] for k, v in lossnet(x0, names).items()}
    channels = {k: channels[k] for k in layer_w}

    def grams_of(img, what: str) -> Targets:
        lossnet.check_image_size(source_size(img), names, f"{what} image")
        return image_grams(lossnet, _load(img, max(hw), what).to(dev), layer_w)

    ref = None
    if mode == "mimic" or (mode in ("single", "sparse") and amplitude is None):
        ref = grams_of(painting if painting is not None else DEFAULT_PAINTING, "painting")
    draw: Callable[[], Targets]
    if mode == "texture":
        style_grams = grams_of(style, "style")
        draw = lambda: style_grams  # noqa: E731
    elif mode == "mimic":
        stats = painting_statistics(ref)
        draw = lambda: mimic_targets(stats, g)  # noqa: E731
    elif mode == "sparse":
        sp = DEFAULT_SPARSITY if sparsity is None else sparsity
        amps = {k: amplitude or matched_amplitude(ref[k], c * c * (1 - sp)) for k, c in channels.items()}
        draw = lambda: sparse_targets(channels, amps, sp, g)  # noqa: E731
    else:
        def single(e: tuple[str, int, int]) -> Targets:
            if amplitude is None and e[0] in channels:  # (an unknown layer is refused just below)
                return single_entry_targets(channels, *e, matched_amplitude(ref[e[0]], 1 if e[1] == e[2] else 2))
            return single_entry_targets(channels, *e, amplitude or 1.0)

        fixed = None if redraw else single(_entry(entry, list(channels)) if entry else draw_entry(channels, g))
        draw = (lambda: single(draw_entry(channels, g))) if redraw else (lambda: fixed)  # noqa: E731
    loss = GramTargetLoss(lossnet, layer_w, draw(), weight)
    po = PixelOptimizer(loss, x0, optimizer=optimizer, lr=lr if lr is not None else DEFAULT_LR[optimizer],
                        line_search=LINE_SEARCH if optimizer == "lbfgs" else None)
    for step in range(1, steps + 1):
        if redraw and step > 1:
            loss.targets = draw()
        t0 = time.perf_counter()
        terms = po.step()
        if callback is not None:
            callback(StepInfo(step, steps, terms, po.optimizer, po.x.detach(), seconds=time.perf_counter() - t0))
    out = (po.x.detach().clamp(0.0, 1.0) if redraw else po.result()).cpu()
    return (out, {k: v.cpu() for k, v in loss.targets.items()}) if return_targets else out


def _entry(entry, names: list[str]) -> tuple[str, int, int]:
    e = tuple(entry)
    if len(e) == 2:
        e = (names[0], *e)
    if len(e) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in e[1:]):
        raise NSTError(f"entry must be (i, j) or (layer, i, j) with integer i, j, not {entry!r}")
    return e


def _load(img, size: int, what: str) -> torch.Tensor:
    """An image (path, PIL, array or tensor, checked as :func:`nst_deploy.stylize` checks it), longest side ``size``."""
    return resize_longest(as_image_tensor(img, what, size), size)


# --- command line -------------------------------------------------------------------------------

def _parse_size(text: str) -> int | tuple[int, int]:
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
            return h, w
        return int(text)
    except ValueError:
        raise NSTError(f"--size must be N or WxH (e.g. 256 or 320x200), not '{text}'") from None


def _parse_entry(text: str) -> tuple[int, int] | tuple[str, int, int]:
    layer, _, ij = text.rpartition(":")
    try:
        i, j = (int(v) for v in ij.split(","))
    except ValueError:
        raise NSTError(f"--entry must be I,J or LAYER:I,J (e.g. 3,17 or conv3_1:3,17), not '{text}'") from None
    return (layer, i, j) if layer else (i, j)


def cmd_synth(args: argparse.Namespace) -> int:
    """``nst synth``: generate, show progress, write the image at the end; 130 after Ctrl-C."""
    from .images import save_image
    from .progress import Progress

    output = Path(args.output or f"synth-{args.mode}.png")
    check_output(output, *(x for x in (args.painting, args.style) if x))
    progress = None if args.quiet else Progress([args.steps])
    losses: list[float] = []

    def callback(info: StepInfo) -> None:
        losses.append(info.terms.total)
        if progress is not None:
            progress(info)

    t0 = time.perf_counter()
    try:
        image = synth(args.mode, size=_parse_size(args.size), steps=args.steps, layers=args.layers,
                      amplitude=args.amplitude, sparsity=args.sparsity,
                      entry=_parse_entry(args.entry) if args.entry else None, redraw=args.redraw,
                      painting=args.painting, style=args.style, seed=args.seed, optimizer=args.optimizer,
                      lr=args.lr, weight=args.weight, noise=args.noise, net=args.net, weights=args.weights,
                      device=args.device, callback=callback)
    except KeyboardInterrupt:
        newline = "\n" if progress is not None and progress.tty else ""
        print(f"{newline}nst: interrupted (nothing written)", file=sys.stderr)
        return 130
    save_image(image, output)
    if not args.quiet:
        fall = f"; loss {losses[0]:.4g} -> {losses[-1]:.4g}" if losses else ""
        if losses and losses[-1] > 0:
            fall += f" ({losses[0] / losses[-1]:.3g}x lower)"
        print(f"nst: wrote {output} ({image.shape[-1]}x{image.shape[-2]}, {args.mode}, {args.steps} steps in "
              f"{time.perf_counter() - t0:.1f} s{fall})", file=sys.stderr)
    return 0


def add_synth_parser(sub) -> argparse.ArgumentParser:
    """Register ``synth`` on an argparse subparsers object; returns its parser (``func=cmd_synth``)."""
    p = sub.add_parser(
        "synth", help="generate an image from white noise towards synthetic Gram targets (no content)",
        description="Optimize white noise so that the loss network's Gram matrices approach synthetic targets: "
        "one non-zero entry (single), random sparse matrices (sparse), sparse matrices with a painting's "
        "per-layer sparsity and amplitude (mimic), or a style image's own Grams (texture synthesis).")
    p.add_argument("mode", choices=MODES, help="single, sparse, mimic or texture")
    p.add_argument("--output", "-o", help="output image .png, .jpg or .tif (default synth-MODE.png)")
    p.add_argument("--size", default="256", help="N (square) or WxH, e.g. 320x200 (default 256)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--layers", help="e.g. conv1_1,conv2_1:0.5 (default relu3_1 for single, conv1_1..conv5_1 for "
                   "texture, relu1_1..relu5_1 otherwise)")
    p.add_argument("--entry", help="single: I,J or LAYER:I,J (default drawn from the seed)")
    p.add_argument("--amplitude", type=float, help="single, sparse: the scale a of the target values, for every "
                   "layer (default per layer: targets of the painting's Gram energy)")
    p.add_argument("--sparsity", type=float, help=f"sparse: fraction of zero entries in [0, 1) "
                   f"(default {DEFAULT_SPARSITY})")
    p.add_argument("--redraw", action="store_true", help="draw new targets at every step (uses adam)")
    p.add_argument("--painting", help="reference painting for mimic and the default amplitude "
                   "(default the bundled Starry Night)")
    p.add_argument("--style", "-s", help="texture: the style image")
    p.add_argument("--weight", type=float, default=1.0, help="style weight beta (default 1)")
    p.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="start: grey plus uniform white noise of "
                   f"this width, in (0, 1] (default {DEFAULT_NOISE}; 1: uniform in [0, 1])")
    p.add_argument("--seed", type=int, default=0, help="seed for the noise and the targets (default 0)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="lbfgs (default), adam (default with --redraw), sgd")
    p.add_argument("--lr", type=float, help="learning rate (lbfgs 1, adam 0.02, sgd 1e-4)")
    p.add_argument("--net", default="vgg19", choices=LOSSNETS, help="loss network (vgg19)")
    p.add_argument("--weights", help="loss-network weights: bundled (vgg19 default), torchvision, or a file")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=cmd_synth)
    return p
