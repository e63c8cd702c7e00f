"""Per-channel spatial autocorrelation of feature maps and its style loss (the "spatial style
representation": each channel's full 2-D correlation with itself).

For features ``F`` of shape ``(B, C, H, W)`` and each channel ``i``::

    R_i(dy, dx) = 1/norm * sum_{y, x} F_i(y, x) F_i(y + dy, x + dx),   |dy| <= H-1, |dx| <= W-1,

with ``F`` read as zero outside the map, over the full ``(2H-1) x (2W-1)`` lag window. The result
has shape ``(B, C, 2H-1, 2W-1)`` with lag ``(0, 0)`` at the centre ``[H-1, W-1]``; it is
point-symmetric, ``R(-d) = R(d)``.

Normalization (``normalize``): ``"hw"`` (default) divides by ``H*W``, ``"none"`` by 1. With
``"hw"`` the centre lag is the mean square of the channel, i.e. the diagonal of the ``"hw"`` Gram
matrix of :mod:`nst_deploy.kernels.gram`, and for a stationary texture
``R(d) ~ E[F(p) F(p + d)] (1 - |dy|/H)(1 - |dx|/W)``: the value at a fixed lag does not grow with
the resolution, so a style weight tuned at one image size carries over to another (the
unnormalized sum grows like ``H*W``). It is the same convention as the Gram default.

Two ways to compute it:

* ``"direct"``: the sum over positions for every lag, ``O(H^2 W^2)`` per channel. On CUDA a Triton
  kernel (one program: one channel and a block of lags; only half the lags are computed, the
  other half mirrored); the reference :func:`autocorr_ref` (a grouped ``conv2d``) otherwise.
* ``"fft"`` (:func:`autocorr_fft`): zero-pad to ``(NH, NW) >= (2H-1, 2W-1)`` (sizes with prime
  factors 2, 3, 5 only, ``NW`` even), ``P = |rfft2(F)|^2``, ``r = irfft2(P)`` is then the circular
  autocorrelation of the padded map, which holds every lag exactly (no wrap-around at that size)
  at index ``d mod (NH, NW)``; the lag window is gathered from it. ``O(HW log HW)``.

``method="auto"`` picks ``"direct"`` when ``H*W <= DIRECT_MAX_HW`` (256, i.e. up to 16 x 16) and
``"fft"`` above. The threshold is a guess until the GPU benchmarks (direct work grows like
``4 (HW)^2`` per channel; the FFT pipeline is a handful of launches, so it should win from
moderate sizes on); it is one constant to change.

The style loss :func:`autocorr_style_loss` compares ``R(F)`` with a style's ``R(S)`` without
computing either: by Parseval on the padded grid (``N = NH * NW``; the circular autocorrelation is
zero outside the lag window, so the sum over lags is the sum over the whole grid)::

    sum_d (R_F(d) - R_S(d))^2 = 1/N * sum_{k in full spectrum} (P_F(k) - Q(k))^2

with ``P_F = |rfft2(pad F)|^2 / norm`` and ``Q`` the style's, precomputed once
(:func:`autocorr_spectrum`). Only the ``rfft2`` half spectrum (``NW // 2 + 1`` columns) is stored;
``P`` and ``Q`` are real and even (``P(k) = P(-k)``), so column 0 (and column ``NW/2`` when ``NW`` is
even: its own mirror) is counted once and every other column twice. Content and style features
must have the same ``H x W`` (:func:`require_same_feature_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nst_deploy.errors import KernelError

from ._dispatch import choose_backend
from ._launch import cdiv, pow2

__all__ = [
    "DIRECT_MAX_HW",
    "METHODS",
    "NORMS",
    "REDUCTIONS",
    "AutocorrDirectFunction",
    "AutocorrSpectralLossFunction",
    "AutocorrSpectrum",
    "autocorr",
    "autocorr_direct_backward",
    "autocorr_direct_forward",
    "autocorr_fft",
    "autocorr_ref",
    "autocorr_spectrum",
    "autocorr_style_loss",
    "autocorr_style_loss_ref",
    "choose_method",
    "fft_shape_for",
    "good_fft_size",
    "require_same_feature_size",
    "spectral_loss_backward",
    "spectral_loss_forward",
]

#: ``"hw"``: divide by H*W (default, resolution-friendly); ``"none"``: the plain sum.
NORMS = ("hw", "none")
METHODS = ("auto", "direct", "fft")
#: ``"sum"``: the sum over batch, channels and lags; ``"mean"``: divided by ``B*C*(2H-1)*(2W-1)``.
REDUCTIONS = ("sum", "mean")
#: ``method="auto"`` uses the direct sum up to this many pixels per map, the FFT above (a guess
#: until GPU benchmarks).
DIRECT_MAX_HW = 256


# --------------------------------------------------------------------------------------------
# helpers


def _check_features(x: torch.Tensor, what: str = "autocorr") -> None:
    if x.dim() != 4:
        raise KernelError(f"{what} expects (B, C, H, W) features, got shape {tuple(x.shape)}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise KernelError(f"{what} needs H, W >= 1, got shape {tuple(x.shape)}")


def _scale(h: int, w: int, normalize: str) -> float:
    if normalize == "hw":
        return 1.0 / float(h * w)
    if normalize == "none":
        return 1.0
    raise KernelError(f"unknown autocorrelation normalization '{normalize}': choose from {', '.join(NORMS)}")


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 are computed (and returned) in fp32, like :func:`gram_ref`; fp32/fp64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def good_fft_size(n: int, even: bool = False) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (``m`` even if ``even``).

    Such sizes are fast for cuFFT and pocketfft alike; an even last dimension keeps the ``rfft``
    half spectrum regular (a Nyquist column).
    """
    if n < 1:
        raise KernelError(f"FFT size must be >= 1, got {n}")
    m = max(n, 2) if even else n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1 and (not even or m % 2 == 0):
            return m
        m += 1


def fft_shape_for(h: int, w: int) -> tuple[int, int]:
    """The padded FFT grid for an ``h x w`` map: ``(NH, NW) >= (2h-1, 2w-1)``, 5-smooth, ``NW`` even."""
    return good_fft_size(2 * h - 1), good_fft_size(2 * w - 1, even=True)


def _check_fft_shape(h: int, w: int, fft_shape: tuple[int, int]) -> tuple[int, int]:
    nh, nw = (int(v) for v in fft_shape)
    if nh < 2 * h - 1 or nw < 2 * w - 1:
        raise KernelError(
            f"fft_shape {(nh, nw)} is too small for {h}x{w} maps: it needs at least {(2 * h - 1, 2 * w - 1)} "
            "so that the circular autocorrelation does not wrap around"
        )
    return nh, nw


def choose_method(h: int, w: int, method: str = "auto") -> str:
    """``"direct"`` or ``"fft"``: ``method`` itself, or for ``"auto"`` direct iff ``h*w <= DIRECT_MAX_HW``."""
    if method not in METHODS:
        raise KernelError(f"unknown autocorrelation method '{method}': choose from {', '.join(METHODS)}")
    if method != "auto":
        return method
    return "direct" if h * w <= DIRECT_MAX_HW else "fft"


# --------------------------------------------------------------------------------------------
# 1. reference


def autocorr_ref(x: torch.Tensor, normalize: str = "hw") -> torch.Tensor:
    """Reference autocorrelation (the definition), as one grouped ``conv2d``.

    Each channel, zero-padded by ``(H-1, W-1)`` on every side, is cross-correlated with itself as
    the kernel: ``out[dy + H-1, dx + W-1] = sum_{y,x} F(y + dy, x + dx) F(y, x)``. ``O(H^2 W^2)`` per
    channel; differentiable (autograd adds the input and the kernel contributions).

    Args:
        x: features ``(B, C, H, W)``.
        normalize: ``"hw"`` (default) or ``"none"``.

    Returns:
        ``(B, C, 2H-1, 2W-1)``, lag ``(0, 0)`` at ``[H-1, W-1]``; fp32 for fp16/bf16 inputs. (On CUDA
        cuDNN may use TF32 for fp32 unless ``torch.backends.cudnn.allow_tf32`` is off; compare in
        fp64 there.)
    """
    _check_features(x)
    b, c, h, w = x.shape
    scale = _scale(h, w, normalize)
    f = _compute_dtype(x)
    if b * c == 0:
        return f.new_zeros(b, c, 2 * h - 1, 2 * w - 1)
    n = b * c
    inp = F.pad(f.reshape(1, n, h, w), (w - 1, w - 1, h - 1, h - 1))
    out = F.conv2d(inp, f.reshape(n, 1, h, w), groups=n)
    return out.reshape(b, c, 2 * h - 1, 2 * w - 1) * scale


def _lag_index(n: int, length: int, device: torch.device) -> torch.Tensor:
    """Indices of lags ``-(n-1) .. n-1`` on a circular grid of ``length``."""
    return torch.arange(-(n - 1), n, device=device) % length


def autocorr_fft(x: torch.Tensor, normalize: str = "hw", fft_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """The FFT path: ``irfft2(|rfft2(pad F)|^2)`` gathered at the centred lag window.

    Args:
        x: features ``(B, C, H, W)``.
        normalize: ``"hw"`` (default) or ``"none"``.
        fft_shape: the padded grid ``(NH, NW)``, at least ``(2H-1, 2W-1)``; default
            :func:`fft_shape_for` (5-smooth sizes, ``NW`` even).

    Returns:
        The same as :func:`autocorr_ref` (to rounding); differentiable by torch autograd through
        the FFTs. Computed in fp32 for fp16/bf16 (cuFFT has no bf16, and half precision would lose
        the small lags).
    """
    _check_features(x)
    b, c, h, w = x.shape
    scale = _scale(h, w, normalize)
    nh, nw = _check_fft_shape(h, w, fft_shape or fft_shape_for(h, w))
    f = _compute_dtype(x)
    spec = torch.fft.rfft2(f, s=(nh, nw))
    power = torch.view_as_real(spec).square().sum(-1) * scale
    r = torch.fft.irfft2(power, s=(nh, nw))
    iy = _lag_index(h, nh, x.device)
    ix = _lag_index(w, nw, x.device)
    return r[..., iy[:, None], ix[None, :]]


# --------------------------------------------------------------------------------------------
# 2. the @triton.jit kernels live in ._autocorr_triton (imported only inside the launchers below)
# 3. launchers


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _kernel_scale(out: torch.Tensor, scale: float) -> float:
    """The scale to pass to a kernel: compiled Triton passes Python floats as fp32, which would
    round ``1/(H*W)`` in the fp64 path; there the kernel gets 1 and :func:`_finish_scale` applies it."""
    return 1.0 if out.dtype == torch.float64 else float(scale)


def _finish_scale(out: torch.Tensor, scale: float) -> torch.Tensor:
    return out.mul_(scale) if out.dtype == torch.float64 and scale != 1.0 else out


def autocorr_direct_forward(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Direct Triton autocorrelation ``(B, C, H, W) -> (B, C, 2H-1, 2W-1)`` times ``scale``.

    One program per (channel, block of lags), summing over all positions; only the first half of
    the flattened lags (up to the centre) is computed and each value is also stored at its mirror.
    Accumulates in fp32 (fp64 for fp64 input).
    """
    from ._autocorr_triton import xcorr2d_kernel

    b, c, h, w = x.shape
    oh, ow = 2 * h - 1, 2 * w - 1
    out = torch.empty(b, c, oh, ow, device=x.device, dtype=_acc_dtype(x))
    n = b * c
    if n == 0:
        return out
    f = x.contiguous()
    n_q = (oh * ow + 1) // 2  # up to and including the centre lag
    block_q = pow2(n_q, 64)
    block_k = pow2(h * w, 64)
    grid = (n, cdiv(n_q, block_q))
    xcorr2d_kernel[grid](
        f, f, out, h, w, h, w, oh, ow, h - 1, w - 1, n_q, _kernel_scale(out, scale),
        MIRROR=True, SYM_A=False, BLOCK_Q=block_q, BLOCK_K=block_k,
    )  # fmt: skip
    return _finish_scale(out, scale)


def autocorr_direct_backward(x: torch.Tensor, grad_r: torch.Tensor, scale: float) -> torch.Tensor:
    """Gradient of the direct autocorrelation: ``dF(p) = scale * sum_d (dR(d) + dR(-d)) F(p + d)``.

    (``R(d) = scale * sum_p F(p) F(p + d)`` uses ``F(q)`` once as ``F(p)`` with ``d`` and once as
    ``F(p + d)`` with ``-d``.) The same correlation kernel, with ``dR`` as the kernel, symmetrized as
    it is loaded; returns ``x``'s dtype.
    """
    from ._autocorr_triton import xcorr2d_kernel

    b, c, h, w = x.shape
    oh, ow = 2 * h - 1, 2 * w - 1
    out = torch.empty(b, c, h, w, device=x.device, dtype=_acc_dtype(x))
    n = b * c
    if n == 0:
        return out.to(x.dtype)
    f = x.contiguous()
    g = grad_r.contiguous()
    block_q = pow2(h * w, 64)
    block_k = pow2(oh * ow, 64)
    grid = (n, cdiv(h * w, block_q))
    xcorr2d_kernel[grid](
        g, f, out, oh, ow, h, w, h, w, h - 1, w - 1, h * w, _kernel_scale(out, scale),
        MIRROR=False, SYM_A=True, BLOCK_Q=block_q, BLOCK_K=block_k,
    )  # fmt: skip
    return _finish_scale(out, scale).to(x.dtype)


_SPECTRAL_BLOCK = 1024


def spectral_loss_forward(spec: torch.Tensor, q: torch.Tensor, nw: int, p_scale: float) -> torch.Tensor:
    """``sum_k w_k (p_scale |spec_k|^2 - q_k)^2`` over an ``rfft2`` half spectrum, fused.

    ``spec``: complex ``(B, C, NH, NW//2+1)``; ``q``: real, ``(1 or B, C, NH, NW//2+1)``; ``w_k`` is 1 on
    column 0 and the Nyquist column (``NW`` even), 2 elsewhere. Returns a 0-dim tensor (the sum of
    per-program partial sums, deterministic).
    """
    from ._autocorr_triton import spectral_loss_fwd_kernel

    fr = torch.view_as_real(spec.contiguous())
    numel = spec.numel()
    partial = torch.empty(max(1, cdiv(numel, _SPECTRAL_BLOCK)), device=spec.device, dtype=fr.dtype)
    if numel == 0:
        return partial.zero_().sum()
    exact = fr.dtype == torch.float64  # fp64: keep the fp32 kernel scalar out (see _kernel_scale)
    qc = (q.to(fr.dtype) / p_scale if exact else q.to(fr.dtype)).contiguous()
    wh = spec.shape[-1]
    nyq = nw // 2 if nw % 2 == 0 else -1
    spectral_loss_fwd_kernel[(partial.numel(),)](
        fr, qc, partial, numel, qc.numel(), wh, nyq, 1.0 if exact else float(p_scale), BLOCK=_SPECTRAL_BLOCK
    )
    return partial.sum() * (p_scale * p_scale) if exact else partial.sum()


def spectral_loss_backward(
    spec: torch.Tensor, q: torch.Tensor, grad_out: torch.Tensor, p_scale: float, coef: float
) -> torch.Tensor:
    """The spectral gradient ``coef * grad_out * (p_scale |spec|^2 - q) * spec`` (complex, fused)."""
    from ._autocorr_triton import spectral_loss_bwd_kernel

    sc = spec.contiguous()
    fr = torch.view_as_real(sc)
    out = torch.empty_like(fr)
    numel = sc.numel()
    if numel == 0:
        return torch.view_as_complex(out)
    exact = fr.dtype == torch.float64  # fp64: coef * p_scale is applied here, not in the kernel
    qc = (q.to(fr.dtype) / p_scale if exact else q.to(fr.dtype)).contiguous()
    g = grad_out.reshape(1).contiguous()
    grid = (cdiv(numel, _SPECTRAL_BLOCK),)
    spectral_loss_bwd_kernel[grid](
        fr, qc, g, out, numel, qc.numel(), 1.0 if exact else float(p_scale), 1.0 if exact else float(coef),
        BLOCK=_SPECTRAL_BLOCK,
    )  # fmt: skip
    if exact:
        out.mul_(coef * p_scale)
    return torch.view_as_complex(out)


# --------------------------------------------------------------------------------------------
# 4. autograd Functions


class AutocorrDirectFunction(torch.autograd.Function):
    """Direct (Triton) autocorrelation with its Triton backward; ``apply(x, scale)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.scale = scale
        return autocorr_direct_forward(x, scale)

    @staticmethod
    def backward(ctx, grad_r: torch.Tensor):
        (x,) = ctx.saved_tensors
        grad = autocorr_direct_backward(x, grad_r, ctx.scale) if ctx.needs_input_grad[0] else None
        return grad, None


class AutocorrSpectralLossFunction(torch.autograd.Function):
    """The Parseval autocorrelation loss with fused Triton spectral kernels.

    ``apply(x, q, fft_shape, p_scale, red)`` returns ``red / N * sum_k w_k (P_k - q_k)^2`` with
    ``P = p_scale |rfft2(pad x)|^2`` (``N = NH * NW``). Backward, for real ``F``::

        dL/dF = 4 * red * p_scale * irfft2((P - q) * F^)[:H, :W]

    (``d|F^_k|^2 / dF(p) = 2 Re(conj(F^_k) e^{-2 pi i k.p / N})``; ``(P - q) F^`` is Hermitian, so
    the sum over the full spectrum is ``N`` times its inverse FFT, which ``irfft2`` takes from the
    half spectrum). ``q`` is a constant (no gradient).
    """

    @staticmethod
    def forward(ctx, x, q, fft_shape, p_scale, red):
        nh, nw = fft_shape
        spec = torch.fft.rfft2(_compute_dtype(x), s=(nh, nw))
        total = spectral_loss_forward(spec, q, nw, p_scale)
        ctx.save_for_backward(spec, q)
        ctx.meta = (x.shape, x.dtype, (nh, nw), p_scale, red)
        return total * (red / (nh * nw))

    @staticmethod
    def backward(ctx, grad_out):
        spec, q = ctx.saved_tensors
        shape, dtype, (nh, nw), p_scale, red = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        ghat = spectral_loss_backward(spec, q, grad_out, p_scale, 4.0 * red * p_scale)
        grad = torch.fft.irfft2(ghat, s=(nh, nw))[..., : shape[-2], : shape[-1]]
        return grad.to(dtype), None, None, None, None


# --------------------------------------------------------------------------------------------
# 5. public functions


def autocorr(x: torch.Tensor, normalize: str = "hw", method: str = "auto", backend: str = "auto") -> torch.Tensor:
    """Per-channel autocorrelation ``(B, C, H, W) -> (B, C, 2H-1, 2W-1)``, lag 0 at the centre.

    Args:
        x: features.
        normalize: ``"hw"`` (default; divide by H*W) or ``"none"``.
        method: ``"direct"``, ``"fft"`` or ``"auto"`` (direct iff ``H*W <= DIRECT_MAX_HW``).
        backend: :func:`nst_deploy.kernels.choose_backend`. ``"direct"`` runs the Triton kernel on
            the ``"triton"`` backend and :func:`autocorr_ref` on ``"torch"``; ``"fft"`` is torch.fft
            on both.

    Returns:
        fp32 for fp16/bf16 inputs, else ``x``'s dtype; differentiable on every path.
    """
    _check_features(x)
    b, c, h, w = x.shape
    scale = _scale(h, w, normalize)
    chosen = choose_method(h, w, method)
    be = choose_backend(x, backend)
    if chosen == "fft":
        return autocorr_fft(x, normalize)
    if be == "triton":
        return AutocorrDirectFunction.apply(x, scale)
    return autocorr_ref(x, normalize)


@dataclass(frozen=True)
class AutocorrSpectrum:
    """A precomputed style target for :func:`autocorr_style_loss`.

    Attributes:
        power: ``Q = |rfft2(pad S)|^2 / norm``, real ``(B_s, C, NH, NW//2+1)`` (``B_s`` is 1 or the
            batch of the features it is compared with).
        size: the style features' ``(H, W)``; the loss needs features of the same size.
        fft_shape: the padded grid ``(NH, NW)``.
        normalize: the normalization it was computed with.
    """

    power: torch.Tensor
    size: tuple[int, int]
    fft_shape: tuple[int, int]
    normalize: str

    @property
    def channels(self) -> int:
        return int(self.power.shape[1])


def autocorr_spectrum(
    style: torch.Tensor, normalize: str = "hw", fft_shape: tuple[int, int] | None = None
) -> AutocorrSpectrum:
    """The style target of :func:`autocorr_style_loss`, computed once (detached).

    Args:
        style: style features ``(B_s, C, H, W)``, at the size of the features they will be compared
            with.
        normalize: ``"hw"`` (default) or ``"none"``; must match the loss.
        fft_shape: the padded grid; default :func:`fft_shape_for` ``(H, W)``. Any grid of at least
            ``(2H-1, 2W-1)`` gives the same loss (odd ``NW`` has no Nyquist column).
    """
    _check_features(style, "autocorr_spectrum")
    _, _, h, w = style.shape
    scale = _scale(h, w, normalize)
    nh, nw = _check_fft_shape(h, w, fft_shape or fft_shape_for(h, w))
    with torch.no_grad():
        spec = torch.fft.rfft2(_compute_dtype(style.detach()), s=(nh, nw))
        power = torch.view_as_real(spec).square().sum(-1) * scale
    return AutocorrSpectrum(power=power, size=(h, w), fft_shape=(nh, nw), normalize=normalize)


def require_same_feature_size(x: torch.Tensor, target: torch.Tensor | AutocorrSpectrum) -> None:
    """Raise ``ValueError`` unless the style target matches the features ``x`` in size and channels.

    The autocorrelation loss compares ``R(F)`` and ``R(S)`` lag by lag over the full
    ``(2H-1) x (2W-1)`` window (and by Parseval, frequency by frequency on the same padded grid), so
    both must come from maps of the same ``H x W``: compute the style features from a style image
    resized so that its feature maps have the generated image's size.
    """
    if isinstance(target, AutocorrSpectrum):
        size, channels, batch = target.size, target.channels, int(target.power.shape[0])
    else:
        _check_features(target, "autocorr_style_loss")
        size, channels, batch = tuple(target.shape[-2:]), int(target.shape[1]), int(target.shape[0])
    _check_features(x, "autocorr_style_loss")
    if tuple(x.shape[-2:]) != tuple(size):
        raise KernelError(
            f"autocorrelation style loss: the style features are {size[0]}x{size[1]} but the generated "
            f"features are {x.shape[-2]}x{x.shape[-1]}; the loss compares every lag of the full (2H-1) x (2W-1) "
            "window, so both need the same spatial size (resize the style image so that its features match)"
        )
    if channels != x.shape[1]:
        raise KernelError(f"autocorrelation style loss: {channels} style channels but {x.shape[1]} feature channels")
    if batch not in (1, x.shape[0]):
        raise KernelError(f"autocorrelation style loss: a style batch of {batch} for features of batch {x.shape[0]}")


def _reduction_scale(x: torch.Tensor, reduction: str) -> float:
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        b, c, h, w = x.shape
        return 1.0 / max(1, b * c * (2 * h - 1) * (2 * w - 1))
    raise KernelError(f"unknown reduction '{reduction}': choose from {', '.join(REDUCTIONS)}")


def autocorr_style_loss_ref(
    x: torch.Tensor, style: torch.Tensor, normalize: str = "hw", reduction: str = "sum"
) -> torch.Tensor:
    """The definition, in the lag domain: ``sum (R(x) - R(style))^2`` over batch, channels and lags.

    Materializes both ``(B, C, 2H-1, 2W-1)`` autocorrelations (by :func:`autocorr_ref`); ``style``
    (batch 1 or ``B``) is detached. ``"mean"`` divides by ``B*C*(2H-1)*(2W-1)``.
    """
    require_same_feature_size(x, style)
    red = _reduction_scale(x, reduction)
    r_s = autocorr_ref(style.detach(), normalize)
    return (autocorr_ref(x, normalize) - r_s).square().sum() * red


def autocorr_style_loss(
    x: torch.Tensor,
    target: torch.Tensor | AutocorrSpectrum,
    normalize: str = "hw",
    reduction: str = "sum",
    backend: str = "auto",
) -> torch.Tensor:
    """``sum_{b,c,d} (R_x(d) - R_S(d))^2`` by Parseval, without computing any autocorrelation.

    ``L = red / N * sum_k w_k (P_k - Q_k)^2`` on the ``rfft2`` half spectrum of the padded features
    (module docstring), ``N = NH * NW``, ``w_k`` 1 on column 0 and the Nyquist column, 2 elsewhere.
    Memory: one half spectrum of ``x`` (``B*C*NH*(NW/2+1)`` complex, about ``2 H W`` per channel);
    no inverse FFT.

    Args:
        x: generated features ``(B, C, H, W)``.
        target: an :class:`AutocorrSpectrum` from :func:`autocorr_spectrum` (precompute it once), or
            style features ``(1 or B, C, H, W)`` (its spectrum is then computed on the fly). Always
            a constant: no gradient flows into it.
        normalize: ``"hw"`` (default) or ``"none"``; must match the target's.
        reduction: ``"sum"`` (default) or ``"mean"`` (divided by ``B*C*(2H-1)*(2W-1)``, the MSE of
            the autocorrelations).
        backend: ``"triton"`` fuses the spectral power, difference, weighting and reduction (and the
            backward's spectral gradient) into one kernel each around the FFTs; ``"torch"`` is the
            same formula in eager torch with autograd.

    Raises:
        ValueError: the style target is not of the features' size (:func:`require_same_feature_size`),
            channels or batch, or was computed with another normalization.
    """
    require_same_feature_size(x, target)
    if not isinstance(target, AutocorrSpectrum):
        target = autocorr_spectrum(target, normalize)
    if target.normalize != normalize:
        raise KernelError(
            f"autocorrelation style loss: the target was computed with normalize='{target.normalize}', "
            f"the loss asks for '{normalize}'"
        )
    _, _, h, w = x.shape
    p_scale = _scale(h, w, normalize)
    red = _reduction_scale(x, reduction)
    nh, nw = target.fft_shape
    q = target.power.detach()
    be = choose_backend(x, backend)
    if be == "triton":
        return AutocorrSpectralLossFunction.apply(x, q, (nh, nw), p_scale, red)
    spec = torch.fft.rfft2(_compute_dtype(x), s=(nh, nw))
    d = torch.view_as_real(spec).square().sum(-1) * p_scale - q.to(spec.real.dtype)
    col_w = torch.full((spec.shape[-1],), 2.0, dtype=d.dtype, device=d.device)
    col_w[0] = 1.0
    if nw % 2 == 0:
        col_w[nw // 2] = 1.0
    return (d.square() * col_w).sum() * (red / (nh * nw))
