"""Tiled inference for images over a memory budget, with instance-norm statistics from a thumbnail.

A feed-forward style network normalizes every feature map by its own mean and variance over the
whole image (instance norm). Run tile by tile, each tile would be normalized by its own statistics
and the tiles would disagree: visible seams, and colours that change from tile to tile. Here:

1. a thumbnail of the image (long side ``stats_size``) runs once and every instance norm's per-channel
   mean and variance are recorded (:class:`NormStats` in record mode);
2. every tile then runs with those statistics in place of its own (:class:`NormStats` with ``given``),
   so the network computes on each tile exactly what it computes on the whole image with those
   statistics, up to the receptive field at the tile's inner edges;
3. tiles overlap by more than twice the receptive-field radius; in the overlap each tile's weight is
   zero within that radius of its inner edge and ramps linearly across the rest, and the weights of
   all tiles sum to one at every pixel (separable 1-D partitions of unity), so every output pixel
   comes from tiles whose result there is exact;
4. tile origins are multiples of the network's stride (``multiple``), so the strided convolutions
   sample the same pixels as on the whole image.

The statistics are swapped in at the dispatcher (``aten.instance_norm``), which works the same for
an eager module and a TorchScript module; ONNX graphs cannot be intercepted, so ``nst-export``
writes a second graph (:class:`StatsGraph`: image, statistics and a mix weight in; image and its own
statistics out) that the runtime uses for tiles.

Output rows are finished band by band (a band is one row of tiles), so besides the result only one
band of float accumulators is alive.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import NSTError

__all__ = ["NormStats", "StatsGraph", "TilePlan", "plan_axis", "probe", "run_tiled"]

_INSTANCE_NORM = torch.ops.aten.instance_norm.default
#: Working memory of a call over the largest single op's inputs and output, per pixel. Measured on the
#: CPU for the Johnson network (peak RSS growth of tiled calls, allocator retention included): about 2.3x
#: for eager PyTorch and 4.7x for ONNX Runtime, whose allocations stay in the heap after the thumbnail.
PEAK_FACTOR = 5.0


def _normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """Instance norm of ``x`` (N, C, H, W) with given per-(N, C) ``mean`` and ``var``."""
    y = (x - mean[:, :, None, None].to(x.dtype)) * torch.rsqrt(var + eps)[:, :, None, None].to(x.dtype)
    if weight is not None:
        y = y * weight[None, :, None, None]
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


class NormStats(TorchDispatchMode):
    """Record, or replace, the statistics of every instance norm a module runs (eager or TorchScript).

    Without ``given`` the module runs unchanged and :meth:`flat` returns what each instance norm saw:
    per layer, in call order, the per-channel means then variances, concatenated to ``(N, S)``.
    With ``given`` (such an ``(N, S)`` tensor), every instance norm normalizes by its slice of it.
    Run the module under ``torch.inference_mode()`` (the norm is seen as one op there); use a new
    instance for every call of the module.
    """

    def __init__(self, given: torch.Tensor | None = None):
        super().__init__()
        self.given = given
        self.offset = 0
        self.own: list[torch.Tensor] = []
        self.channels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not _INSTANCE_NORM:
            return func(*args, **kwargs)
        x, weight, bias = args[0], args[1], args[2]
        eps = float(args[7]) if len(args) > 7 else float(kwargs.get("eps", 1e-5))
        c = x.shape[1]
        self.channels.append(int(c))
        if self.given is None:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), correction=0)
            self.own.append(torch.cat([mean, var], 1))
            return func(*args, **kwargs)
        o = self.offset
        if o + 2 * c > self.given.shape[1]:
            raise NSTError("the instance-norm statistics do not fit this model (too few values)")
        self.offset = o + 2 * c
        g = self.given[:, o:o + 2 * c].to(x.device)
        return _normalize(x, g[:, :c], g[:, c:], weight, bias, eps)

    def flat(self) -> torch.Tensor:
        """The recorded statistics as ``(N, S)`` float32."""
        if not self.own:
            raise NSTError("no instance norm ran: this model cannot be tiled with shared statistics")
        return torch.cat(self.own, 1)


class _State:
    """Per-call state shared by the norms of a :class:`StatsGraph` (plain Python: traced through)."""

    def __init__(self):
        self.stats: torch.Tensor | None = None
        self.mix: torch.Tensor | None = None
        self.offset = 0
        self.own: list[torch.Tensor] = []


class _GraphNorm(nn.Module):
    def __init__(self, norm: nn.InstanceNorm2d, state: _State):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.eps = float(norm.eps)
        self.c = int(norm.num_features)
        self._state = (state,)  # a tuple: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self._state[0]
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
        st.own.append(torch.cat([mean, var], 1).float())
        c, o = self.c, st.offset
        st.offset = o + 2 * c
        g = st.stats[:, o:o + 2 * c].to(x.dtype)
        mix = st.mix.to(x.dtype)
        mean = mean + mix * (g[:, :c] - mean)
        var = var + mix * (g[:, c:] - var)
        return _normalize(x, mean, var, self.weight, self.bias, self.eps)


class StatsGraph(nn.Module):
    """The network with its instance-norm statistics as an input, for export (ONNX tiles graph).

    ``forward(image, stats, mix) -> (stylized, own_stats)``: every instance norm uses
    ``own + mix * (stats - own)``; ``mix = 0`` is the plain network (and returns the image's own
    statistics, as :class:`NormStats` records them), ``mix = 1`` uses ``stats``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(net)
        self._st = (_State(),)
        for mod in list(self.net.modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, nn.InstanceNorm2d):
                    setattr(mod, child_name, _GraphNorm(child, self._st[0]))

    def forward(self, image: torch.Tensor, stats: torch.Tensor, mix: torch.Tensor, style: torch.Tensor | None = None):
        st = self._st[0]
        st.stats, st.mix, st.offset, st.own = stats, mix, 0, []
        try:
            y = self.net(image) if style is None else self.net(image, style)  # style: a multistyle network's
            own = torch.cat(st.own, 1)
        finally:
            st.stats, st.mix, st.own = None, None, []
        return y, own


# -- probing a module: statistics layout, receptive field, memory per pixel


class _Peak(TorchDispatchMode):
    """The largest ``inputs + output`` element count of any single op (a proxy for peak memory)."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        n = sum(a.numel() for a in args if isinstance(a, torch.Tensor))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        n += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
        self.peak = max(self.peak, n)
        return out


def probe(module: Callable[[torch.Tensor], torch.Tensor], multiple: int = 4, size: int = 192,
          device: torch.device | str = "cpu") -> dict:
    """Measure what tiling needs from a module (eager or TorchScript) on a random ``size`` square.

    Returns ``norm_channels`` (channels of each instance norm, in call order), ``radius`` (the
    receptive-field radius in input pixels: how far a one-pixel change reaches with fixed
    statistics, plus a margin of ``multiple``), ``output_scale`` and ``peak_floats_per_pixel``
    (:data:`PEAK_FACTOR` times the largest single op's inputs plus output, per input pixel: an
    estimate of a call's working memory, calibrated against the peak RSS of tiled runs on the CPU,
    eager and ONNX Runtime, which it bounds; ``benchmarks/bench_tiling.py`` measures it).
    """
    g = torch.Generator().manual_seed(0)
    while True:
        x = torch.rand(1, 3, size, size, generator=g).to(device)
        rec = NormStats()
        peak = _Peak()
        with torch.inference_mode():
            with rec:
                y0 = module(x)
            stats = rec.flat()
            with peak:
                module(x)
            x1 = x.clone()
            c = size // 2
            x1[:, :, c, c] = 1.0 - x1[:, :, c, c]
            with NormStats(given=stats):
                y_fixed = module(x)
            with NormStats(given=stats):
                y1 = module(x1)
        scale = y0.shape[-1] // size
        diff = (y1 - y_fixed).abs().amax(dim=(0, 1)) > 0
        ys, xs = torch.nonzero(diff, as_tuple=True)
        if ys.numel() == 0:
            reach = 0
        else:
            reach = int(max((ys.float() / scale - c).abs().max(), (xs.float() / scale - c).abs().max()).ceil())
        if reach < c - multiple or size >= 1024:
            break
        size *= 2
    return {"norm_channels": rec.channels, "radius": reach + multiple, "output_scale": int(scale),
            "peak_floats_per_pixel": round(PEAK_FACTOR * peak.peak / (size * size), 1), "multiple": int(multiple)}


# -- planning and running tiles


def plan_axis(n: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """Tiles ``[(start, end)]`` covering ``0..n``: starts multiples of ``multiple``, neighbours overlapping
    by at least ``overlap``, every tile ``tile`` long except the last (which ends at ``n`` and may be up to
    ``multiple - 1`` longer)."""
    if n <= tile:
        return [(0, n)]
    step = tile - overlap - multiple
    if step < multiple:
        raise NSTError(f"tile {tile} is too small for an overlap of {overlap} pixels")
    k = 1 + math.ceil((n - tile) / step)
    last = (n - tile) // multiple * multiple
    starts = [int(round(i * last / (k - 1) / multiple)) * multiple for i in range(k)]
    return [(s, s + tile) for s in starts[:-1]] + [(last, n)]


def axis_weights(spans: list[tuple[int, int]], margin: int) -> list[torch.Tensor]:
    """Per tile, 1-D blending weights (same coordinates as ``spans``) that sum to one at every position.

    Within ``margin`` of an inner edge a tile's weight is (nearly) zero; across the rest of the
    overlap it ramps linearly to one.
    """
    raw = []
    for i, (s, e) in enumerate(spans):
        p = torch.arange(s, e, dtype=torch.float64) + 0.5
        w = torch.ones(e - s, dtype=torch.float64)
        if i > 0:
            ramp = max(spans[i - 1][1] - s - 2 * margin, 1)
            w = torch.minimum(w, ((p - s - margin) / ramp).clamp(0, 1))
        if i + 1 < len(spans):
            ramp = max(e - spans[i + 1][0] - 2 * margin, 1)
            w = torch.minimum(w, ((e - margin - p) / ramp).clamp(0, 1))
        raw.append(w.clamp_min(1e-9))
    n = spans[-1][1]
    total = torch.zeros(n, dtype=torch.float64)
    for (s, e), w in zip(spans, raw, strict=True):
        total[s:e] += w
    return [(w / total[s:e]).float() for (s, e), w in zip(spans, raw, strict=True)]


class TilePlan:
    """Tiles of an ``h x w`` input and their blending weights (output coordinates ``scale`` times larger)."""

    def __init__(self, h: int, w: int, tile: int, overlap: int, radius: int, multiple: int, scale: int = 1):
        self.rows = plan_axis(h, tile, overlap, multiple)
        self.cols = plan_axis(w, tile, overlap, multiple)
        self.scale = scale
        m = radius * scale
        self.wy = axis_weights([(s * scale, e * scale) for s, e in self.rows], m)
        self.wx = axis_weights([(s * scale, e * scale) for s, e in self.cols], m)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def run_tiled(source: Callable[[int, int, int, int], torch.Tensor], sink: Callable[[int, torch.Tensor], None],
              plan: TilePlan, run_tile: Callable[[torch.Tensor], torch.Tensor], width_out: int,
              progress: Callable[[int, int], None] | None = None) -> None:
    """Run every tile of ``plan`` and hand finished output rows to ``sink``.

    Args:
        source: ``source(y0, y1, x0, x1)`` returns the input region as float ``(N, 3, y1 - y0, x1 - x0)``.
        sink: ``sink(row0, band)`` receives finished output rows ``row0 .. row0 + band.shape[2]`` (float).
        plan: the tiles.
        run_tile: the network with the shared statistics, on one tile.
        width_out: output width.
        progress: called with ``(tiles done, tiles)``.
    """
    s = plan.scale
    band: torch.Tensor | None = None  # accumulated output rows band_y0 .. band_y0 + band.shape[2]
    band_y0 = 0
    done = 0
    for (y0, y1), wy in zip(plan.rows, plan.wy, strict=True):
        oy0, oy1 = y0 * s, y1 * s
        if band is not None and oy0 > band_y0:  # no later tile reaches above this row's start
            sink(band_y0, band[:, :, :oy0 - band_y0])
            band = band[:, :, oy0 - band_y0:]
            band_y0 = oy0
        if band is None:
            band_y0 = oy0
        for (x0, x1), wx in zip(plan.cols, plan.wx, strict=True):
            y = run_tile(source(y0, y1, x0, x1)).float().cpu()
            if y.shape[-2:] != (oy1 - oy0, (x1 - x0) * s):
                raise NSTError(f"the model returned {tuple(y.shape)} for a tile of {y1 - y0}x{x1 - x0}")
            if band is None or band.shape[2] < oy1 - band_y0:
                new = torch.zeros(y.shape[0], y.shape[1], oy1 - band_y0, width_out)
                if band is not None:
                    new[:, :, :band.shape[2]] = band
                band = new
            band[:, :, oy0 - band_y0:oy1 - band_y0, x0 * s:x1 * s].addcmul_(
                y, wy[None, None, :, None] * wx[None, None, None, :])
            done += 1
            if progress is not None:
                progress(done, len(plan))
    if band is not None:
        sink(band_y0, band)


def thumbnail_size(h: int, w: int, stats_size: int) -> tuple[int, int]:
    """The thumbnail's ``(h, w)``: long side ``stats_size`` (never larger than the image), aspect kept."""
    if max(h, w) <= stats_size:
        return h, w
    f = stats_size / max(h, w)
    return max(8, round(h * f)), max(8, round(w * f))


def thumbnail(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area (box) downsampling of a float ``(N, 3, H, W)`` tensor, like Pillow's ``BOX`` for uint8 images."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="area")


def uint8_source(arr: np.ndarray) -> Callable[[int, int, int, int], torch.Tensor]:
    """A ``source`` over an ``HxWx3`` uint8 array (converted to float one tile at a time)."""

    def source(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        t = torch.from_numpy(arr[y0:y1, x0:x1].copy())
        return t.permute(2, 0, 1)[None].float().div_(255.0)

    return source
