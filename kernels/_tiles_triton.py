"""Triton helpers shared by the Gram kernels (imported lazily, with the kernels that use them)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def upper_tile_split(
    ti_ptr,  # int32 (T,): row-tile index of each upper-triangle tile (ti <= tj)
    tj_ptr,  # int32 (T,): column-tile index of each upper-triangle tile
    C,
    N,
    per_split,
    BLOCK_C: tl.constexpr,
):
    # Program (tile t, split s, batch b) of a split-K symmetric product over N positions: the tile's
    # rows and columns of the C x C output, their bounds, and the split's range [start, end) of positions.
    t = tl.program_id(0)
    s = tl.program_id(1)
    b = tl.program_id(2)
    ti = tl.load(ti_ptr + t)
    tj = tl.load(tj_ptr + t)
    rows = ti * BLOCK_C + tl.arange(0, BLOCK_C)
    cols = tj * BLOCK_C + tl.arange(0, BLOCK_C)
    start = s * per_split
    end = tl.minimum(start + per_split, N)
    return s, b, ti, tj, rows, cols, rows < C, cols < C, start, end


@triton.jit
def store_symmetric_tile(
    out_ptr,  # fp32 base of one C x C output (row stride stride_wc, columns contiguous)
    acc,
    rows,
    cols,
    ok,
    stride_wc,
):
    # The upper triangle (row <= col) as computed, the strict upper triangle mirrored below the diagonal:
    # the result is exactly symmetric, also inside the diagonal tiles.
    upper = rows[:, None] <= cols[None, :]
    strict = rows[:, None] < cols[None, :]
    tl.store(out_ptr + rows[:, None] * stride_wc + cols[None, :], acc, mask=ok & upper)
    tl.store(out_ptr + cols[None, :] * stride_wc + rows[:, None], acc, mask=ok & strict)
