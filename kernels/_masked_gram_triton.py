"""Triton kernel of the masked Gram matrices (imported lazily by :mod:`nst_deploy.kernels.masked_gram`).

One program per (upper-triangle tile pair ``ti <= tj`` of the C x C output, split of the H*W axis,
batch element). For each chunk of H*W it loads the two feature tiles once and the chunk of every
mask of its group, then accumulates ``(F_i * M_k^2) F_j^T`` into one fp32 accumulator per mask
(up to :data:`MAX_MASKS` masks, unrolled through the constexpr ``NUM_MASKS``). So F is read once
for all the masks of a group; masks are small (K x H*W against C x H*W).

Importing this module imports triton; ``nst_deploy`` itself never does until a Triton op runs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from nst_deploy.errors import KernelError

from ._tiles_triton import store_symmetric_tile, upper_tile_split

#: Masks handled by one launch (one accumulator each); more masks run in groups of this many.
MAX_MASKS = 4


@triton.jit
def _masked_gram_fwd_kernel(
    f_ptr,  # features (B, C, P), P = H*W; fp32/fp16/bf16, element (b, c, p) at the strides below
    m_ptr,  # masks (BM, K, P) of this group (already offset to its first mask); stride_mb = 0 when shared
    inv_ptr,  # fp32 (BM, K) of this group: 1 / sum_p M_k(p), or 0 for an empty mask; stride_ib = 0 when shared
    ws_ptr,  # fp32 workspace (SPLIT, B, K, C, C) of this group: split s writes its partial sums into ws[s]
    ti_ptr,  # int32 (T,): row-tile index of each upper-triangle tile pair (ti <= tj)
    tj_ptr,  # int32 (T,): column-tile index of each upper-triangle tile pair
    C,
    P,
    p_per_split,
    stride_fb,
    stride_fc,
    stride_fp,
    stride_mb,
    stride_mk,
    stride_mp,
    stride_ib,
    stride_ik,
    stride_ws,
    stride_wb,
    stride_wk,
    stride_wc,
    NUM_MASKS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    s, b, _, _, rows, cols, row_ok, col_ok, p_start, p_end = upper_tile_split(ti_ptr, tj_ptr, C, P, p_per_split,
                                                                              BLOCK_C)
    f_base = f_ptr + b.to(tl.int64) * stride_fb
    m_base = m_ptr + b.to(tl.int64) * stride_mb
    acc0 = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        p_ok = ps < p_end
        # F tiles, loaded once per chunk for all the masks: a = F[rows, ps], c = F[cols, ps]^T.
        a = tl.load(f_base + rows[:, None] * stride_fc + ps[None, :] * stride_fp,
                    mask=row_ok[:, None] & p_ok[None, :], other=0.0)
        c = tl.load(f_base + ps[:, None] * stride_fp + cols[None, :] * stride_fc,
                    mask=p_ok[:, None] & col_ok[None, :], other=0.0)
        af = a.to(tl.float32)
        m = tl.load(m_base + ps * stride_mp, mask=p_ok, other=0.0).to(tl.float32)
        acc0 = tl.dot((af * (m * m)[None, :]).to(a.dtype), c, acc0, input_precision=PRECISION)
        if NUM_MASKS > 1:
            m = tl.load(m_base + stride_mk + ps * stride_mp, mask=p_ok, other=0.0).to(tl.float32)
            acc1 = tl.dot((af * (m * m)[None, :]).to(a.dtype), c, acc1, input_precision=PRECISION)
        if NUM_MASKS > 2:
            m = tl.load(m_base + 2 * stride_mk + ps * stride_mp, mask=p_ok, other=0.0).to(tl.float32)
            acc2 = tl.dot((af * (m * m)[None, :]).to(a.dtype), c, acc2, input_precision=PRECISION)
        if NUM_MASKS > 3:
            m = tl.load(m_base + 3 * stride_mk + ps * stride_mp, mask=p_ok, other=0.0).to(tl.float32)
            acc3 = tl.dot((af * (m * m)[None, :]).to(a.dtype), c, acc3, input_precision=PRECISION)
    ok = row_ok[:, None] & col_ok[None, :]
    inv_base = inv_ptr + b.to(tl.int64) * stride_ib
    out = ws_ptr + s.to(tl.int64) * stride_ws + b.to(tl.int64) * stride_wb
    store_symmetric_tile(out, acc0 * tl.load(inv_base), rows, cols, ok, stride_wc)
    if NUM_MASKS > 1:
        store_symmetric_tile(out + stride_wk, acc1 * tl.load(inv_base + stride_ik), rows, cols, ok, stride_wc)
    if NUM_MASKS > 2:
        store_symmetric_tile(out + 2 * stride_wk, acc2 * tl.load(inv_base + 2 * stride_ik), rows, cols, ok, stride_wc)
    if NUM_MASKS > 3:
        store_symmetric_tile(out + 3 * stride_wk, acc3 * tl.load(inv_base + 3 * stride_ik), rows, cols, ok, stride_wc)


def launch_masked_gram(f, m, inv, ws, ti, tj, p_per_split: int, block_c: int, block_p: int, precision: str,
                       num_warps: int = 4, num_stages: int = 3) -> None:
    """Run the kernel for one group of at most :data:`MAX_MASKS` masks.

    ``f`` (B, C, P); ``m`` (BM, K, P) with BM in {1, B} (stride 0 or a real batch); ``inv`` (BM, K) fp32;
    ``ws`` (SPLIT, B, K, C, C) fp32, written completely (every split, every tile); ``ti``/``tj`` the tile list.
    """
    split, b, k = ws.shape[0], ws.shape[1], ws.shape[2]
    if not 1 <= k <= MAX_MASKS:
        raise KernelError(f"one launch handles 1 to {MAX_MASKS} masks, got {k}")
    stride_mb = m.stride(0) if m.shape[0] > 1 else 0
    stride_ib = inv.stride(0) if inv.shape[0] > 1 else 0
    grid = (ti.numel(), split, b)
    _masked_gram_fwd_kernel[grid](
        f, m, inv, ws, ti, tj, f.shape[1], f.shape[2], p_per_split,
        f.stride(0), f.stride(1), f.stride(2), stride_mb, m.stride(1), m.stride(2), stride_ib, inv.stride(1),
        ws.stride(0), ws.stride(1), ws.stride(2), ws.stride(3),
        NUM_MASKS=k, BLOCK_C=block_c, BLOCK_P=block_p, PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
