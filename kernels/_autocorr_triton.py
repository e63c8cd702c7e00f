"""Triton kernels for :mod:`nst_deploy.kernels.autocorr` (imported lazily, only by its launchers).

* :func:`xcorr2d_kernel`: a direct per-channel 2-D cross-correlation
  ``out[n, q] = scale * sum_k a[n, k] * b[n, q + k - off]`` (``b`` read as zero outside its map).
  With ``a = b = F`` and ``off = (H-1, W-1)`` it is the autocorrelation over the full lag window
  (forward); with ``a = dR`` (symmetrized in-kernel) and ``b = F`` it is the gradient (backward).
* :func:`spectral_loss_fwd_kernel` / :func:`spectral_loss_bwd_kernel`: the Parseval form of the
  autocorrelation loss on an ``rfft2`` half spectrum, fused (power, difference, half-spectrum
  weight, reduction; and the spectral gradient ``(P - Q) F^``).

All accumulate in the output's element type (fp32 for fp32/fp16/bf16 inputs, fp64 for fp64).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def xcorr2d_kernel(
    a_ptr,  # (N, KH, KW) contiguous: the correlation kernel of each channel (F, or dR for the backward)
    b_ptr,  # (N, BH, BW) contiguous: the signal of each channel (F); read as zero outside BH x BW
    out_ptr,  # (N, OH, OW) contiguous, written: scale * sum_k a[n, k] b[n, q + k - off]
    KH,
    KW,
    BH,
    BW,
    OH,
    OW,
    OFF_Y,
    OFF_X,
    n_q,  # how many flattened outputs q this launch computes (OH*OW, or half of it with MIRROR)
    scale,
    MIRROR: tl.constexpr,  # also store each value at OH*OW-1-q (the output is point-symmetric)
    SYM_A: tl.constexpr,  # use a[k] + a[KH*KW-1-k] as the kernel (the symmetrized dR of the backward)
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < n_q
    qy = q // OW
    qx = q % OW
    n_k = KH * KW
    a_base = a_ptr + n * n_k
    b_base = b_ptr + n * (BH * BW)
    out_base = out_ptr + n * (OH * OW)
    acc = tl.zeros((BLOCK_Q,), dtype=out_ptr.dtype.element_ty)
    for k0 in range(0, n_k, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < n_k
        a = tl.load(a_base + k, mask=k_mask, other=0.0).to(acc.dtype)
        if SYM_A:
            a += tl.load(a_base + (n_k - 1 - k), mask=k_mask, other=0.0).to(acc.dtype)
        ky = k // KW
        kx = k % KW
        by = qy[:, None] + ky[None, :] - OFF_Y
        bx = qx[:, None] + kx[None, :] - OFF_X
        m = q_mask[:, None] & k_mask[None, :] & (by >= 0) & (by < BH) & (bx >= 0) & (bx < BW)
        b = tl.load(b_base + by * BW + bx, mask=m, other=0.0).to(acc.dtype)
        acc += tl.sum(a[None, :] * b, axis=1)
    acc = acc * scale
    tl.store(out_base + q, acc, mask=q_mask)
    if MIRROR:
        tl.store(out_base + (OH * OW - 1 - q), acc, mask=q_mask)


@triton.jit
def _power_difference(fhat_ptr, q_ptr, numel, q_numel, p_scale, BLOCK: tl.constexpr):
    # This program's block of the half spectrum: offsets, bounds, F^ (re, im) and d = P - Q.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    re = tl.load(fhat_ptr + 2 * offs, mask=mask, other=0.0)
    im = tl.load(fhat_ptr + 2 * offs + 1, mask=mask, other=0.0)
    qv = tl.load(q_ptr + offs % q_numel, mask=mask, other=0.0).to(re.dtype)
    return offs, mask, re, im, (re * re + im * im) * p_scale - qv


@triton.jit
def spectral_loss_fwd_kernel(
    fhat_ptr,  # (numel, 2) contiguous: rfft2 of the zero-padded features as (re, im) pairs
    q_ptr,  # (q_numel,) contiguous: the target power spectrum, repeated over the batch (index mod q_numel)
    partial_ptr,  # (num_programs,) written: this program's sum of w * (P - Q)^2
    numel,  # B * C * NH * WH half-spectrum entries
    q_numel,  # C * NH * WH (a target shared by the batch) or numel
    WH,  # NW // 2 + 1, the half-spectrum width
    NYQ,  # NW // 2 when NW is even (the Nyquist column, counted once), else -1
    p_scale,  # P = p_scale * |F^|^2 (1 / (H*W) for normalize="hw")
    BLOCK: tl.constexpr,
):
    offs, mask, re, im, d = _power_difference(fhat_ptr, q_ptr, numel, q_numel, p_scale, BLOCK)
    col = offs % WH
    w = tl.where((col == 0) | (col == NYQ), 1.0, 2.0).to(re.dtype)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.where(mask, w * d * d, 0.0), axis=0))


@triton.jit
def spectral_loss_bwd_kernel(
    fhat_ptr,  # (numel, 2) contiguous: rfft2 of the zero-padded features as (re, im) pairs
    q_ptr,  # (q_numel,) contiguous: the target power spectrum, repeated over the batch
    gout_ptr,  # (1,): the upstream gradient of the scalar loss (read on device, no host sync)
    ghat_ptr,  # (numel, 2) contiguous, written: coef * gout * (P - Q) * F^ as (re, im) pairs
    numel,
    q_numel,
    p_scale,
    coef,
    BLOCK: tl.constexpr,
):
    offs, mask, re, im, d = _power_difference(fhat_ptr, q_ptr, numel, q_numel, p_scale, BLOCK)
    g = tl.load(gout_ptr).to(re.dtype)
    f = (coef * g) * d
    tl.store(ghat_ptr + 2 * offs, f * re, mask=mask)
    tl.store(ghat_ptr + 2 * offs + 1, f * im, mask=mask)
