"""Triton kernel of the Gram matrix (imported lazily by :mod:`nst_deploy.kernels.gram`).

Importing this module imports triton; ``nst_deploy`` itself never does until a Triton op runs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._tiles_triton import store_symmetric_tile, upper_tile_split


@triton.jit
def _gram_fwd_kernel(
    f_ptr,  # features (B, C, K), K = H*W; any float dtype, strides below
    ws_ptr,  # fp32 workspace (SPLIT, B, C, C): split s writes its partial sums into ws[s]
    ti_ptr,  # int32 (T,): row-tile index of each upper-triangle tile (ti <= tj)
    tj_ptr,  # int32 (T,): column-tile index of each upper-triangle tile
    C,
    K,
    k_per_split,
    stride_fb,
    stride_fc,
    stride_fk,
    stride_ws,
    stride_wb,
    stride_wc,
    scale,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    s, b, _, _, rows, cols, row_ok, col_ok, k_start, k_end = upper_tile_split(ti_ptr, tj_ptr, C, K, k_per_split,
                                                                              BLOCK_C)
    base = f_ptr + b.to(tl.int64) * stride_fb
    acc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        a = tl.load(base + rows[:, None] * stride_fc + ks[None, :] * stride_fk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        c = tl.load(base + cols[:, None] * stride_fc + ks[None, :] * stride_fk,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(c), acc, input_precision=PRECISION)
    acc = acc * scale
    out = ws_ptr + s.to(tl.int64) * stride_ws + b.to(tl.int64) * stride_wb
    store_symmetric_tile(out, acc, rows, cols, row_ok[:, None] & col_ok[None, :], stride_wc)


def launch_gram(f, ws, ti, tj, k_per_split: int, scale: float, block_c: int, block_k: int, precision: str,
                num_warps: int = 4, num_stages: int = 3) -> None:
    """Run the kernel: ``f`` (B, C, K), ``ws`` (SPLIT, B, C, C) fp32, ``ti``/``tj`` the tile list."""
    split, b = ws.shape[0], ws.shape[1]
    grid = (ti.numel(), split, b)
    _gram_fwd_kernel[grid](
        f, ws, ti, tj, f.shape[1], f.shape[2], k_per_split,
        f.stride(0), f.stride(1), f.stride(2), ws.stride(0), ws.stride(1), ws.stride(2), scale,
        BLOCK_C=block_c, BLOCK_K=block_k, PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
    )
