"""Localized Gram matrices of feature maps and their loss, without materializing ``C^2 H W``.

Pixel-wise (``window=0``): for features ``F`` of shape ``(B, C, H, W)``::

    G_ij(p) = F_i(p) F_j(p),        G(p) = F(p) F(p)^T  (a rank-1 C x C matrix per pixel p)

Windowed (``window=s >= 1``): the pixel-wise Grams of a ``(2s+1) x (2s+1)`` neighbourhood, weighted::

    G^s(p) = sum_{|dy|, |dx| <= s} w(d) F(p + d) F(p + d)^T,    w(d) = (1 / (1 + dy^2 + dx^2)) / Z

with ``Z`` the sum of ``1 / (1 + dy^2 + dx^2)`` over the window, so that the weights sum to 1: a
constant map has the same ``G^s`` as ``G`` in the interior, whatever ``s``, and ``s = 0`` is the
pixel-wise Gram. Borders: ``F`` is zero outside the map (zero padding), so at a border the
weights that fall outside simply drop (``G^s`` fades towards the edge rather than being
re-normalized); this keeps ``G^s`` a linear filter of the pixel-wise products, which the loss
expansion below relies on.

No spatial normalization is applied (each ``G(p)`` is already a per-pixel quantity); use
``reduction="mean"`` for a resolution-independent loss.

Memory. :func:`local_gram_ref` materializes ``(B, C, C, H, W)``: ``C^2 H W`` values per image, i.e.
``512^2 * 32 * 32 * 4`` bytes = 1 GiB for one 32 x 32 map of 512 channels, quadratic in ``C``. The loss
:func:`local_gram_loss_ref` never forms it: per pixel ``<u u^T, v v^T>_F = (u . v)^2``, so::

    ||G_F(p) - G_S(p)||_F^2 = |F(p)|^4 - 2 (F(p) . S(p))^2 + |S(p)|^4        (window 0)

three channel reductions, ``O(C H W)``. For a window, ``G^s(p)`` is a weighted sum of rank-1 terms,
and with ``e = d' - d``, ``q = p + d``::

    sum_p ||G^s_F(p) - G^s_S(p)||^2
      = sum_e sum_q M_e(q) [ K^FF_e(q)^2 - 2 K^FS_e(q)^2 + K^SS_e(q)^2 ],
    K^AB_e(q) = A(q) . B(q + e),   M_e(q) = sum_{d, d + e in window, q - d in the map} w(d) w(d + e)

over the ``(4s+1)^2`` offsets ``e`` and ``q`` in the map grown by ``s``: ``3 (4s+1)^2`` channel
reductions, ``O((4s+1)^2 C H W)`` time and ``O(C H W + (4s+1)^2 H W)`` memory (against
``O((2s+1)^2 C^2 H W)`` to materialize), differentiable by autograd.

The loss has a Triton path (``backend="triton"``, the default on CUDA; ``_local_gram_triton.py``):
one kernel accumulates the loss over the offsets and channels for a block of pixels, reading ``F``
and ``S`` at ``p`` and ``p + e`` (the shifted reads stay in the caches) and keeping ``K^FF_e(p)``
and ``K^FS_e(p)`` (``B x (4s+1)^2 x H W``, no channel axis; only when a gradient is wanted) for the
backward, which is one more kernel writing ``dF`` once: ``dF(p) = sum_e 2 M_e(p) K^FF_e(p) F(p + e)
+ 2 M_e(p - e) K^FF_e(p - e) F(p - e) - 4 M_e(p) K^FS_e(p) S(p + e)``. The torch path loops over the
offsets with three channel reductions each (``3 (4s+1)^2`` passes over ``F``); on the CPU the
windowed loss (``s = 2``) costs 90-330x the pixel-wise one
(``benchmarks/results/kernels-local-amd-epyc.json``). float64 inputs always take the torch path. The
materialized :func:`local_gram` has no kernel.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from nst_deploy.errors import KernelError

from ._dispatch import choose_backend
from ._launch import cdiv, pow2

__all__ = [
    "REDUCTIONS",
    "local_gram",
    "local_gram_loss",
    "local_gram_loss_ref",
    "local_gram_ref",
    "window_weights",
]

#: ``"sum"``: over batch, pixels and both channel indices; ``"mean"``: divided by ``B*C*C*H*W``.
REDUCTIONS = ("sum", "mean")


def _check_features(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise KernelError(f"{what} expects (B, C, H, W) features, got shape {tuple(x.shape)}")


def _check_window(window: int) -> int:
    if isinstance(window, bool) or int(window) != window or window < 0:
        raise KernelError(f"local Gram window must be an integer >= 0, got {window!r}")
    return int(window)


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 are computed (and returned) in fp32, like :func:`gram_ref`."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def window_weights(window: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``(2s+1, 2s+1)`` weights ``w(dy, dx) = (1 / (1 + dy^2 + dx^2)) / Z``, summing to 1.

    ``[s + dy, s + dx]`` holds ``w(dy, dx)``; ``window=0`` gives ``[[1]]``.
    """
    s = _check_window(window)
    d = torch.arange(-s, s + 1, dtype=torch.float64)
    w = 1.0 / (1.0 + d[:, None] ** 2 + d[None, :] ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def local_gram_ref(x: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Reference localized Gram ``(B, C, H, W) -> (B, C, C, H, W)`` (the definition).

    ``out[b, i, j, y, x] = G^s_ij(y, x)``: the pixel-wise products ``F_i F_j`` for ``window=0``, else
    their weighted ``(2s+1)^2`` neighbourhood sum with zero padding (module docstring). Materializes
    ``C^2 H W`` values; see :func:`local_gram_loss_ref` for the loss without them. fp32 for
    fp16/bf16 inputs; differentiable.
    """
    _check_features(x, "local_gram")
    s = _check_window(window)
    f = _compute_dtype(x)
    b, c, h, w = f.shape
    g = f[:, :, None] * f[:, None]
    if s == 0 or g.numel() == 0:
        return g
    k = window_weights(s, f.dtype, f.device)
    out = F.conv2d(g.reshape(b * c * c, 1, h, w), k[None, None], padding=s)
    return out.reshape(b, c, c, h, w)


def _require_same_size(x: torch.Tensor, target: torch.Tensor) -> None:
    _check_features(x, "local_gram_loss")
    _check_features(target, "local_gram_loss")
    if tuple(x.shape[-2:]) != tuple(target.shape[-2:]):
        raise KernelError(
            f"localized Gram loss: the target features are {target.shape[-2]}x{target.shape[-1]} but the "
            f"features are {x.shape[-2]}x{x.shape[-1]}; it compares the Grams pixel by pixel, so both need the "
            "same spatial size"
        )
    if target.shape[1] != x.shape[1]:
        raise KernelError(f"localized Gram loss: {target.shape[1]} target channels but {x.shape[1]} feature channels")
    if target.shape[0] not in (1, x.shape[0]):
        raise KernelError(f"localized Gram loss: a target batch of {target.shape[0]} for features of batch "
                          f"{x.shape[0]}")


def _reduction_scale(x: torch.Tensor, reduction: str) -> float:
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        b, c, h, w = x.shape
        return 1.0 / max(1, b * c * c * h * w)
    raise KernelError(f"unknown reduction '{reduction}': choose from {', '.join(REDUCTIONS)}")


def multiplicity(h: int, w: int, s: int, e: tuple[int, int], wts: torch.Tensor) -> torch.Tensor:
    """``M_e(q)`` on the grown grid ``q in [-s, H+s) x [-s, W+s)`` (index ``q + s``)."""
    ey, ex = e
    m = wts.new_zeros(h + 2 * s, w + 2 * s)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            if abs(dy + ey) > s or abs(dx + ex) > s:
                continue
            m[s + dy : s + dy + h, s + dx : s + dx + w] += wts[s + dy, s + dx] * wts[s + dy + ey, s + dx + ex]
    return m


def local_gram_loss_ref(x: torch.Tensor, target: torch.Tensor, window: int = 0, reduction: str = "sum") -> torch.Tensor:
    """``sum_{b, p, i, j} (G^s_x(p) - G^s_t(p))_ij^2`` by the inner-product expansion (module docstring).

    Equals ``(local_gram_ref(x, s) - local_gram_ref(target, s)).square().sum()`` without forming the
    ``C^2 H W`` Grams: ``O((4s+1)^2 C H W)`` time, ``O(C H W)`` memory beyond the inputs.

    Args:
        x: features ``(B, C, H, W)``.
        target: features ``(1 or B, C, H, W)`` of the same size (the loss is pixel by pixel);
            detached (no gradient flows into it).
        window: ``s >= 0``; 0 is the pixel-wise Gram.
        reduction: ``"sum"`` (default) or ``"mean"`` (divided by ``B*C*C*H*W``).

    Raises:
        ValueError: different spatial size, channel count or batch.
    """
    _require_same_size(x, target)
    s = _check_window(window)
    red = _reduction_scale(x, reduction)
    f = _compute_dtype(x)
    t = _compute_dtype(target.detach()).to(f.dtype)
    b, c, h, w = f.shape
    if s == 0:
        ff = f.square().sum(1)
        ss = t.square().sum(1)
        fs = (f * t).sum(1)
        return (ff.square() - 2.0 * fs.square() + ss.square()).sum() * red
    wts = window_weights(s, f.dtype, f.device)
    p = 3 * s  # q in [-s, H+s), q + e in [-3s, H+3s)
    fp = F.pad(f, (p, p, p, p))
    tp = F.pad(t, (p, p, p, p))
    hq, wq = h + 2 * s, w + 2 * s

    def at(a: torch.Tensor, ey: int, ex: int) -> torch.Tensor:  # a(q + e) for q on the grown grid
        return a[..., 2 * s + ey : 2 * s + ey + hq, 2 * s + ex : 2 * s + ex + wq]

    f0, t0 = at(fp, 0, 0), at(tp, 0, 0)
    total = f.new_zeros(())
    for ey in range(-2 * s, 2 * s + 1):
        for ex in range(-2 * s, 2 * s + 1):
            fe, te = at(fp, ey, ex), at(tp, ey, ex)
            k_ff = (f0 * fe).sum(1)
            k_fs = (f0 * te).sum(1)
            k_ss = (t0 * te).sum(1)
            m = multiplicity(h, w, s, (ey, ex), wts)
            total = total + ((k_ff.square() - 2.0 * k_fs.square() + k_ss.square()) * m).sum()
    return total * red


def multiplicities(h: int, w: int, s: int, device: torch.device) -> torch.Tensor:
    """``M_e(p)`` for the ``(4s+1)^2`` offsets ``e`` (row-major, ``e = (-2s, -2s) .. (2s, 2s)``) and
    the map's pixels ``p``: ``(E, H*W)`` fp32, one convolution of the map's indicator.

    ``M_e(p) = sum_d k_e(d) [p - d in the map]`` with ``k_e(d) = w(d) w(d + e)``; the torch path
    builds the same values on the grown grid (:func:`multiplicity`).
    """
    wts = window_weights(s, torch.float64)
    side, big = 2 * s + 1, 4 * s + 1
    k = torch.zeros(big * big, 1, side, side, dtype=torch.float64)
    for i, (ey, ex) in enumerate((ey, ex) for ey in range(-2 * s, 2 * s + 1) for ex in range(-2 * s, 2 * s + 1)):
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                if abs(dy + ey) <= s and abs(dx + ex) <= s:
                    # conv2d correlates: weight at -d multiplies the indicator at p - d
                    k[i, 0, s - dy, s - dx] = wts[s + dy, s + dx] * wts[s + dy + ey, s + dx + ex]
    ones = torch.ones(1, 1, h, w, dtype=torch.float64)
    m = F.conv2d(ones, k, padding=s)[0]  # (E, H, W)
    return m.reshape(big * big, h * w).to(device=device, dtype=torch.float32).contiguous()


def border_class(n: int, s: int) -> torch.Tensor:
    """Class of each row (or column) ``0 .. n-1`` of a map of ``n``, as the kernels' ``_cls``: ``y``
    within ``s`` of the start, ``s`` in the interior, ``y - (n - min(n, 2s + 1))`` within ``s`` of
    the end. ``M_e`` depends on ``p`` only through these classes (whether ``p - d`` lies in the map
    for ``|d| <= s``), so row ``cls(y)`` of :func:`multiplicity_table` holds ``M_e`` of row ``y``."""
    y = torch.arange(n)
    nc = min(n, 2 * s + 1)
    return torch.where(y < s, y, torch.where(y >= n - s, y - (n - nc), torch.full_like(y, s)))


@functools.lru_cache(maxsize=16)
def multiplicity_table(h: int, w: int, s: int, device: torch.device) -> torch.Tensor:
    """``M_e`` by border class: ``(E, hc, wc)`` fp32 with ``hc = min(H, 2s + 1)``, ``wc = min(W, 2s + 1)``,
    i.e. :func:`multiplicities` of an ``hc x wc`` map (at most ``(4s+1)^2 (2s+1)^2`` values: 8 kB for
    ``s = 2``, so the cache pins nothing of note). The Triton kernels read ``M_e(y, x)`` at
    ``[e, cls(y), cls(x)]`` (:func:`border_class`)."""
    hc, wc = min(h, 2 * s + 1), min(w, 2 * s + 1)
    return multiplicities(hc, wc, s, device).reshape(-1, hc, wc).contiguous()


class LocalGramLossFunction(torch.autograd.Function):
    """The localized Gram loss on the Triton kernels (module docstring); ``x`` gets the gradient.

    ``store``: keep ``K^FF``/``K^FS`` (``B x (4s+1)^2 x HW`` fp32 each) for the backward; the caller
    passes ``x.requires_grad and torch.is_grad_enabled()`` so that a loss evaluated without
    gradients allocates nothing beyond the partial sums.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, target: torch.Tensor, s: int, red: float, store: bool):
        from . import _local_gram_triton

        b, c, h, w = x.shape
        hw = h * w
        f = x.detach().contiguous().reshape(b, c, hw)
        t = target.detach().contiguous().reshape(target.shape[0], c, hw)
        m = multiplicity_table(h, w, s, x.device)
        n_off = m.shape[0]
        block_c, block_p = pow2(c, 32), pow2(hw, 64)
        part = torch.empty(b, cdiv(hw, block_p), device=x.device, dtype=torch.float32)
        shape = (b, n_off, hw) if store else (1,)
        kff = torch.empty(shape, device=x.device, dtype=torch.float32)
        kfs = torch.empty(shape, device=x.device, dtype=torch.float32)
        _local_gram_triton.launch_dots(f, t, m, kff, kfs, part, h, w, s, store, block_c, block_p)
        if store:
            ctx.save_for_backward(f, t, m, kff, kfs)
        ctx.geometry = (x.shape, h, w, s, red, store)
        return part.sum() * red

    @staticmethod
    def backward(ctx, grad):
        from . import _local_gram_triton

        shape, h, w, s, red, store = ctx.geometry
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if not store:
            raise RuntimeError("local_gram_loss: the forward ran without gradients and kept nothing to differentiate")
        f, t, m, kff, kfs = ctx.saved_tensors
        g = (grad.float() * red).reshape(1).contiguous()  # stays on the device: no synchronization
        df = torch.empty_like(f)
        c = f.shape[1]
        _local_gram_triton.launch_grad(f, t, m, kff, kfs, g, df, h, w, s, pow2(c, 32), pow2(h * w, 64))
        return df.reshape(shape), None, None, None, None


def local_gram(x: torch.Tensor, window: int = 0, backend: str = "auto") -> torch.Tensor:
    """Localized Gram ``(B, C, C, H, W)`` (:func:`local_gram_ref`); differentiable.

    ``backend`` follows :func:`nst_deploy.kernels.choose_backend`; there is no fused kernel, every
    backend computes the reference.
    """
    choose_backend(x, backend)  # validates the backend name and the NST_KERNELS override
    return local_gram_ref(x, window)


def local_gram_loss(
    x: torch.Tensor, target: torch.Tensor, window: int = 0, reduction: str = "sum", backend: str = "auto"
) -> torch.Tensor:
    """Localized Gram loss (:func:`local_gram_loss_ref`, ``O(C H W)`` memory); differentiable in ``x``.

    ``backend``: ``"triton"`` runs the two kernels of the module docstring (the default on CUDA),
    ``"torch"`` the reference; float64 and empty inputs always take the reference.
    """
    use_triton = choose_backend(x, backend) == "triton"
    if not use_triton or x.dtype == torch.float64 or x.numel() == 0:
        return local_gram_loss_ref(x, target, window, reduction)
    _require_same_size(x, target)
    s = _check_window(window)
    red = _reduction_scale(x, reduction)
    store = x.requires_grad and torch.is_grad_enabled()
    return LocalGramLossFunction.apply(x, target, s, red, store)
