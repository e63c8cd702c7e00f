"""Masked Gram matrices: ``G_k = (F * M_k)(F * M_k)^T / sum(M_k)`` for K masks, and the masked style loss.

For features ``F`` of shape ``(B, C, H*W)`` and masks ``M`` of shape ``(B or 1, K, H, W)`` (already at
the layer's resolution; one mask set may be shared by the whole batch)::

    G[b, k, i, j] = sum_p M[b, k, p]^2 F[b, i, p] F[b, j, p] / S[b, k],    S[b, k] = sum_p M[b, k, p]

Masks are meant to be non-negative (hard 0/1 or soft). A mask with ``S <= eps`` (an empty mask; default
``eps = 1e-12``) gives a zero Gram matrix and zero gradients for it and for the features through it: no
NaN, no division by zero. (At an empty mask G is not differentiable; zero is the chosen subgradient.)
Half-precision inputs are accumulated in fp32 and give fp32 Gram matrices (like :func:`gram_ref`).

This file follows the one-file-per-op pattern, top to bottom:

1. :func:`masked_gram_ref` / :func:`masked_gram_style_loss_ref`: the pure-torch references;
2. the Triton kernel lives in ``_masked_gram_triton.py``, imported only when a Triton op runs, so that
   importing ``nst_deploy`` never imports triton. One program per (upper-triangle C-tile pair, split of
   H*W, batch element) loads each F tile once per H*W chunk and accumulates the products of all the masks
   of a group (up to 4) into unrolled fp32 accumulators; partial sums per split go to an fp32 workspace
   that is summed over splits (deterministic, no atomics); the upper triangle is mirrored (exactly symmetric);
3. the launchers :func:`masked_gram_forward` / :func:`masked_gram_backward` (backward in torch ops);
4. :class:`MaskedGramFunction` and :class:`MaskedGramStyleLossFunction`;
5. the public :func:`masked_gram` and :func:`masked_gram_style_loss`.

Gradients (``H_k = (dG_k + dG_k^T) / S_k``, zero for an empty mask)::

    dF[:, p]  = sum_k M_k(p)^2 H_k F[:, p]
    dM_k(p)   = M_k(p) F[:, p]^T H_k F[:, p] - <dG_k, G_k> / S_k

(the second term is the derivative through the normalization ``1 / S_k``; every pixel of the mask
receives it, also where ``M_k(p) = 0``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from nst_deploy.errors import KernelError

from ._dispatch import choose_backend
from ._launch import PRECISIONS, precision_mode, upper_tile_pairs

__all__ = [
    "EPS",
    "MaskedGramFunction",
    "MaskedGramStyleLossFunction",
    "PRECISIONS",
    "masked_gram",
    "masked_gram_backward",
    "masked_gram_forward",
    "masked_gram_ref",
    "masked_gram_style_loss",
    "masked_gram_style_loss_ref",
]

#: A mask whose sum is at most this counts as empty (zero Gram matrix, zero gradients).
EPS = 1e-12
#: Masks per kernel launch (one fp32 accumulator each); more masks run in groups (F is read once per group).
GROUP = 4
_HALF = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------------
# 1. References


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _HALF else x.dtype


def _check(x: torch.Tensor, masks: torch.Tensor) -> None:
    if x.dim() != 4:
        raise KernelError(f"masked_gram expects (B, C, H, W) features, got shape {tuple(x.shape)}")
    if masks.dim() != 4:
        raise KernelError(f"masked_gram expects (B or 1, K, H, W) masks, got shape {tuple(masks.shape)}")
    b, _, h, w = x.shape
    if masks.shape[0] not in (1, b) or masks.shape[2:] != x.shape[2:] or masks.shape[1] < 1:
        raise KernelError(f"masks of shape {tuple(masks.shape)} do not fit features {tuple(x.shape)}: "
                         f"expected ({b} or 1, K >= 1, {h}, {w}); resize the masks to the layer first")
    if masks.device != x.device:
        raise KernelError(f"masks are on {masks.device}, features on {x.device}")


def _as_float_masks(masks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bool/integer masks as floats (in the features' dtype)."""
    return masks if masks.is_floating_point() else masks.to(x.dtype if x.is_floating_point() else torch.float32)


def _inv_sums(masks: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """``(BM, K)``: ``1 / sum_p M_k(p)``, or 0 for an empty mask (sum <= eps)."""
    s = masks.to(dtype).sum((-2, -1))
    valid = s > eps
    return torch.where(valid, 1.0 / torch.where(valid, s, torch.ones_like(s)), torch.zeros_like(s))


def masked_gram_ref(x: torch.Tensor, masks: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Reference masked Gram matrices.

    Args:
        x: features ``(B, C, H, W)``.
        masks: ``(B or 1, K, H, W)`` non-negative masks at the features' resolution.
        eps: a mask whose sum is at most ``eps`` is empty: its Gram matrix is zero, with zero gradients.

    Returns:
        ``(B, K, C, C)`` with ``G[b, k] = sum_p M_k(p)^2 F(p) F(p)^T / sum_p M_k(p)``, accumulated (and
        returned) in fp32 for half-precision inputs.
    """
    _check(x, masks)
    masks = _as_float_masks(masks, x)
    acc = _acc_dtype(x)
    f = x.flatten(2).to(acc)  # (B, C, P)
    m = masks.flatten(2).to(acc)  # (BM, K, P)
    w = (m * m).unsqueeze(2)  # (BM, K, 1, P)
    num = torch.matmul(f.unsqueeze(1) * w, f.unsqueeze(1).transpose(-1, -2))  # (B, K, C, C)
    s = m.sum(-1)  # (BM, K)
    valid = (s > eps)[..., None, None]
    s_safe = torch.where(valid, s[..., None, None], torch.ones_like(s)[..., None, None])
    return torch.where(valid, num / s_safe, torch.zeros_like(num))


def _loss_inputs(x: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
                 weights: torch.Tensor | Sequence[float] | None) -> torch.Tensor | None:
    """Checks the loss's arguments; returns the weights as a ``(K,)`` tensor (or None)."""
    _check(x, masks)
    k, c = masks.shape[1], x.shape[1]
    if targets.shape[-3:] != (k, c, c) or targets.dim() not in (3, 4) or (
            targets.dim() == 4 and targets.shape[0] not in (1, x.shape[0])):
        raise KernelError(f"targets of shape {tuple(targets.shape)}: expected ({k}, {c}, {c}) or "
                         f"({x.shape[0]} or 1, {k}, {c}, {c}) Gram matrices (normalized like masked_gram)")
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(weights, dtype=_acc_dtype(x), device=x.device)
    if weights.shape != (k,):
        raise KernelError(f"weights of shape {tuple(weights.shape)}: expected one weight per mask, ({k},)")
    return weights


def masked_gram_style_loss_ref(x: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
                               weights: torch.Tensor | Sequence[float] | None = None,
                               eps: float = EPS) -> torch.Tensor:
    """Reference masked style loss ``sum_b sum_k w_k ||G_bk - A_k||^2 / (4 C^2)``.

    ``targets`` ``A``: ``(K, C, C)`` (or ``(B or 1, K, C, C)``) Gram matrices normalized like
    :func:`masked_gram` (by the mask sum); the same normalization as
    :func:`nst_deploy.losses.gram_style_loss`, which this equals for one all-ones mask.
    """
    weights = _loss_inputs(x, masks, targets, weights)
    g = masked_gram_ref(x, masks, eps)
    per = (g - targets.to(g.dtype)).square().sum((-2, -1))  # (B, K)
    if weights is not None:
        per = per * weights.to(g.dtype)
    c = x.shape[1]
    return per.sum() / (4.0 * c * c)


# --------------------------------------------------------------------------------------------------
# 3. Launchers


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


#: Choose the GPU's tile sizes and warps for CPU tensors too: set by ``tests/kernels/sm90_compile.py``,
#: which records the launches on the CPU and compiles them for the H100.
GPU_TILES = False


def _config(x: torch.Tensor, c: int, p: int, batch: int, k: int, num_splits: int | None,
            block_c: int | None, block_p: int | None) -> tuple[int, int, int, int, int]:
    """(block_c, block_p, p_per_split, num_warps, num_stages) for C channels, P = H*W pixels, K masks."""
    if x.is_cuda or GPU_TILES:
        bc = block_c or (16 if c <= 16 else 32 if c <= 32 else 64)
        # fp32 tiles of 32 pixels spill to local memory on sm_90 (tests/kernels/test_sm90_compile.py); 16 do not
        bp = block_p or (64 if x.dtype in _HALF else 16)
        warps = 8 if bc >= 64 else 4
    else:  # Triton's interpreter: fewer, larger programs run faster
        bc = block_c or min(max(_next_pow2(c), 16), 64)
        bp = block_p or min(max(_next_pow2(p), 16), 128)
        warps = 4
    tiles = -(-c // bc)
    programs = tiles * (tiles + 1) // 2 * batch
    if num_splits is None:
        if x.is_cuda:
            # enough programs for every SM, each split at least 8 chunks long, and the fp32 workspace
            # (splits x K x C^2) at most a quarter of F (C x P) so that summing it stays cheap (untuned)
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            num_splits = max(1, min(-(-2 * sms // programs), -(-p // (8 * bp)), p // (4 * k * c)))
        else:
            num_splits = 1
    chunks = -(-p // bp)
    p_per_split = -(-chunks // max(1, min(num_splits, chunks))) * bp
    return bc, bp, p_per_split, warps, 3


def masked_gram_forward(x: torch.Tensor, masks: torch.Tensor, eps: float = EPS, *, precision: str | None = None,
                        num_splits: int | None = None, block_c: int | None = None,
                        block_p: int | None = None) -> torch.Tensor:
    """All K masked Gram matrices with the Triton kernel (no autograd); same result as :func:`masked_gram_ref`.

    ``precision``: see :data:`PRECISIONS`. ``num_splits`` / ``block_c`` / ``block_p`` override the split
    count of H*W and the tile sizes (tests, tuning). float64 (which the kernel does not take) falls back to
    the reference. Returns fp32 for half inputs, else the input dtype.
    """
    _check(x, masks)
    masks = _as_float_masks(masks, x)
    if x.dtype not in _KERNEL_DTYPES:
        return masked_gram_ref(x, masks, eps)
    prec = precision_mode(precision)
    b, c, h, w = x.shape
    p, k = h * w, masks.shape[1]
    if b == 0 or c == 0 or p == 0:
        return torch.zeros((b, k, c, c), dtype=torch.float32, device=x.device)
    from . import _masked_gram_triton as kt  # lazy: importing nst_deploy never imports triton

    f = x.flatten(2)  # (B, C, P), a view when H and W merge (also channels-last); the kernel takes strides
    m = masks.flatten(2)  # (BM, K, P)
    inv = _inv_sums(masks, eps, torch.float32)  # (BM, K)
    bc, bp, p_per_split, warps, stages = _config(x, c, p, b, min(k, GROUP), num_splits, block_c, block_p)
    split = -(-p // p_per_split)
    ws = torch.empty((split, b, k, c, c), dtype=torch.float32, device=x.device)  # every element is written
    ti, tj = upper_tile_pairs(-(-c // bc), x.device)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        for k0 in range(0, k, GROUP):  # groups of up to 4 masks: F is read once per group
            k1 = min(k0 + GROUP, k)
            kt.launch_masked_gram(f, m[:, k0:k1], inv[:, k0:k1], ws[:, :, k0:k1], ti, tj, p_per_split,
                                  bc, bp, prec, num_warps=warps, num_stages=stages)
    g = ws[0] if split == 1 else ws.sum(0)
    return g  # fp32 (the kernel dtypes are fp16, bf16 and fp32)


def masked_gram_backward(x: torch.Tensor, masks: torch.Tensor, grad_g: torch.Tensor, g: torch.Tensor | None,
                         eps: float = EPS, need_x: bool = True,
                         need_masks: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dx, dmasks)`` of ``<grad_g, G>`` in torch ops (one bmm per group of 4 masks).

    ``g`` (the forward's Gram matrices) is needed only for ``dmasks`` (the ``1 / S_k`` term). Masks
    shared by the batch (``BM = 1``) get the gradient summed over the batch.
    """
    acc = _acc_dtype(x)
    bsz, c, h, w = x.shape
    p, k, bm = h * w, masks.shape[1], masks.shape[0]
    f = x.flatten(2).to(acc)  # (B, C, P)
    m = masks.flatten(2).to(acc)  # (BM, K, P)
    inv = _inv_sums(masks, eps, acc)  # (BM, K)
    dg = grad_g.to(acc)
    hk = (dg + dg.transpose(-1, -2)) * inv[..., None, None]  # (B, K, C, C)
    dx = torch.zeros_like(f) if need_x else None
    dm = torch.empty((bsz, k, p), dtype=acc, device=x.device) if need_masks else None
    if need_masks:
        # <dG_k, G_k> / S_k: the derivative through the normalization, the same for every pixel
        dm_s = (dg * g.to(acc)).sum((-2, -1)) * inv  # (B, K)
    for k0 in range(0, k, GROUP):
        k1 = min(k0 + GROUP, k)
        y = torch.bmm(hk[:, k0:k1].reshape(bsz, (k1 - k0) * c, c), f).view(bsz, k1 - k0, c, p)  # H_k F
        for j in range(k1 - k0):
            mj = m[:, k0 + j]  # (BM, P)
            if need_x:
                dx.addcmul_(y[:, j], (mj * mj).unsqueeze(1))
            if need_masks:
                dm[:, k0 + j] = mj * (y[:, j] * f).sum(1) - dm_s[:, k0 + j, None]
        del y
    if dx is not None:
        dx = dx.view_as(x).to(x.dtype)
    if dm is not None:
        if bm == 1 and bsz > 1:
            dm = dm.sum(0, keepdim=True)
        dm = dm.view(masks.shape).to(masks.dtype)
    return dx, dm


# --------------------------------------------------------------------------------------------------
# 4. Autograd Functions


class MaskedGramFunction(torch.autograd.Function):
    """Masked Gram matrices with the Triton forward and the torch backward (saves x, masks and G)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, masks: torch.Tensor, eps: float) -> torch.Tensor:
        g = masked_gram_forward(x, masks, eps)
        ctx.eps = eps
        ctx.save_for_backward(x, masks, g)
        return g

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_g: torch.Tensor):
        x, masks, g = ctx.saved_tensors
        need_x, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx, dm = masked_gram_backward(x, masks, grad_g, g, ctx.eps, need_x, need_m)
        return dx, dm, None


class MaskedGramStyleLossFunction(torch.autograd.Function):
    """Fused masked style loss; keeps only ``R = G - A`` from the forward (G is rebuilt as ``R + A``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                eps: float) -> torch.Tensor:
        r = masked_gram_forward(x, masks, eps)  # our own fresh tensor: G - A in place
        r.sub_(targets.to(r.dtype))
        per = r.square().sum((-2, -1))  # (B, K)
        if weights is not None:
            per = per * weights.to(r.dtype)
        c = x.shape[1]
        ctx.eps = eps
        ctx.save_for_backward(x, masks, targets, weights, r)
        return per.sum() / (4.0 * c * c)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, masks, targets, weights, r = ctx.saved_tensors
        need_x, need_m, need_t, need_w = ctx.needs_input_grad[:4]
        c = x.shape[1]
        dg = r * (grad.to(r.dtype) / (2.0 * c * c))  # d/dG of ||G - A||^2 / (4 C^2)
        if weights is not None:
            dg = dg * weights.to(r.dtype)[:, None, None]
        dx = dm = dt = dw = None
        if need_x or need_m:
            g = r + targets.to(r.dtype) if need_m else None
            dx, dm = masked_gram_backward(x, masks, dg, g, ctx.eps, need_x, need_m)
        if need_t:
            dt = -dg
            while dt.dim() > targets.dim():
                dt = dt.sum(0)
            if dt.shape != targets.shape:  # targets (1, K, C, C) shared by the batch
                dt = dt.sum(0, keepdim=True)
            dt = dt.to(targets.dtype)
        if need_w:
            dw = (r.square().sum((-2, -1)).sum(0) * (grad.to(r.dtype) / (4.0 * c * c))).to(weights.dtype)
        return dx, dm, dt, dw, None


# --------------------------------------------------------------------------------------------------
# 5. Public functions


def masked_gram(x: torch.Tensor, masks: torch.Tensor, backend: str = "auto", *, eps: float = EPS) -> torch.Tensor:
    """Masked Gram matrices ``(B, K, C, C)`` of ``(B, C, H, W)`` features and ``(B or 1, K, H, W)`` masks.

    Differentiable in ``x`` and in every mask. ``backend`` follows
    :func:`nst_deploy.kernels.choose_backend` (``"triton"``: the fused kernel, ``"torch"``: the reference).
    """
    _check(x, masks)
    masks = _as_float_masks(masks, x)
    if choose_backend(x, backend) == "triton":
        return MaskedGramFunction.apply(x, masks, eps)
    return masked_gram_ref(x, masks, eps)


def masked_gram_style_loss(x: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor | Sequence[float] | None = None, backend: str = "auto", *,
                           eps: float = EPS) -> torch.Tensor:
    """Masked style loss ``sum_b sum_k w_k ||G_bk - A_k||^2 / (4 C^2)`` (a scalar).

    ``targets``: ``(K, C, C)`` (or ``(B or 1, K, C, C)``) target Gram matrices normalized like
    :func:`masked_gram`; ``weights``: ``(K,)`` (default all ones). For one all-ones mask this is
    :func:`nst_deploy.losses.gram_style_loss`. The Triton backend runs the fused kernel and a custom
    backward that keeps only ``G - A`` from the forward; gradients reach x, masks, targets and weights.
    """
    weights = _loss_inputs(x, masks, targets, weights)
    masks = _as_float_masks(masks, x)
    if choose_backend(x, backend) == "triton":
        return MaskedGramStyleLossFunction.apply(x, masks, targets, weights, eps)
    return masked_gram_style_loss_ref(x, masks, targets, weights, eps)
