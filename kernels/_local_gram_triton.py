"""Triton kernels of the localized Gram loss (imported lazily by :mod:`nst_deploy.kernels.local_gram`).

Importing this module imports triton; ``nst_deploy`` itself never does until a Triton op runs.

With ``E = (4s+1)^2`` offsets ``e`` and ``K^AB_e(p) = A(p) . B(p + e)`` (zero outside the map):

* ``_local_dots_kernel``: one program per (block of pixels, batch) loops over the offsets and the
  channels, reading ``F``/``S`` at ``p`` and ``p + e`` (the shifted reads of one block stay in the
  caches: ``F`` and ``S`` come from memory about once), and accumulates ``sum_e M_e(p) (K^FF^2 -
  2 K^FS^2 + K^SS^2)``; it stores ``K^FF`` and ``K^FS`` (``B x E x HW``, no channel axis) for the
  backward.
* ``_local_grad_kernel``: one program per (block of pixels, block of channels, batch) computes
  ``dF(p) = sum_e a_e(p) F(p + e) + a_e(p - e) F(p - e) + c_e(p) S(p + e)`` with
  ``a = 2 g M K^FF`` and ``c = -4 g M K^FS`` formed in the kernel from the stored ``K``, the
  multiplicity table and the scalar ``g`` (the output gradient times the reduction scale, read from
  memory: no host synchronization), and writes ``dF`` once.

The pixel blocks run on grid axis 0 (up to 2^31 - 1 programs; axes 1 and 2 stop at 65535, which
a 2048 x 2048 conv1_1 map already exceeds in blocks of 64 pixels).

``M_e(p)`` depends on ``p`` only through its distance to the borders (up to ``s``), so the kernels
read it from a table of ``E x hc x wc`` values, ``hc = min(H, 2s + 1)`` (likewise ``wc``), at the
pixel's row and column classes (:func:`_cls`): a few kB whatever the map's size.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pixels(pid, H, W, BLOCK_P: tl.constexpr):
    """The block ``pid`` of flattened pixels: indices, in-map flags, rows, columns."""
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    return p, p < H * W, p // W, p % W


@triton.jit
def _shift(y, x, dy, dx, H, W, ok):
    """Flattened index of ``(y + dy, x + dx)`` and whether it lies in the map (and ``ok``)."""
    yy = y + dy
    xx = x + dx
    return yy * W + xx, ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)


@triton.jit
def _cls(y, H, HC, S: tl.constexpr):
    """Border class of row (or column) ``y`` of a map of ``H``: ``y`` within ``s`` of the start,
    ``s`` in the interior, ``y - (H - hc)`` within ``s`` of the end (``hc = min(H, 2s + 1)``)."""
    return tl.where(y < S, y, tl.where(y >= H - S, y - (H - HC), S))


@triton.jit
def _mult(m_e, y, x, H, W, HC, WC, S: tl.constexpr, ok):
    """``M_e`` at pixels ``(y, x)`` from offset ``e``'s row ``m_e`` of the class table."""
    return tl.load(m_e + _cls(y, H, HC, S) * WC + _cls(x, W, WC, S), mask=ok, other=0.0)


@triton.jit
def _local_dots_kernel(
    f_ptr,  # features F (B, C, H*W), contiguous; any float dtype
    t_ptr,  # target S (BT, C, H*W), contiguous; BT = 1 or B (stride_tb = 0 for a shared target)
    m_ptr,  # fp32 (E, HC*WC): the multiplicities M_e by border class
    kff_ptr,  # fp32 (B, E, H*W) out: K^FF_e(p) (written when STORE)
    kfs_ptr,  # fp32 (B, E, H*W) out: K^FS_e(p) (written when STORE)
    part_ptr,  # fp32 (B, P): per-program partial loss
    C,
    H,
    W,
    HC,
    WC,
    stride_tb,
    S: tl.constexpr,  # the window s: offsets run over [-2s, 2s] in y and in x
    STORE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    S2 = 2 * S
    hw = H * W
    p, p_ok, y, x = _pixels(pid, H, W, BLOCK_P)
    chans = tl.arange(0, BLOCK_C)
    f_base = f_ptr + b.to(tl.int64) * C * hw
    t_base = t_ptr + b.to(tl.int64) * stride_tb
    side = 2 * S2 + 1
    n_off = side * side
    total = tl.zeros((BLOCK_P,), dtype=tl.float32)
    k_e = b.to(tl.int64) * n_off * hw  # offset e's row of K (64-bit)
    for e in range(n_off):
        q, q_ok = _shift(y, x, e // side - S2, e % side - S2, H, W, p_ok)
        kff = tl.zeros((BLOCK_P,), dtype=tl.float32)
        kfs = tl.zeros((BLOCK_P,), dtype=tl.float32)
        kss = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + chans
            c_ok = cs < C
            rows = cs[:, None].to(tl.int64) * hw
            m0 = c_ok[:, None] & p_ok[None, :]
            me = c_ok[:, None] & q_ok[None, :]
            f0 = tl.load(f_base + rows + p[None, :], mask=m0, other=0.0).to(tl.float32)
            t0 = tl.load(t_base + rows + p[None, :], mask=m0, other=0.0).to(tl.float32)
            fe = tl.load(f_base + rows + q[None, :], mask=me, other=0.0).to(tl.float32)
            te = tl.load(t_base + rows + q[None, :], mask=me, other=0.0).to(tl.float32)
            kff += tl.sum(f0 * fe, axis=0)
            kfs += tl.sum(f0 * te, axis=0)
            kss += tl.sum(t0 * te, axis=0)
        m = _mult(m_ptr + e * HC * WC, y, x, H, W, HC, WC, S, p_ok)
        total += m * (kff * kff - 2.0 * kfs * kfs + kss * kss)
        if STORE:
            tl.store(kff_ptr + k_e + p, kff, mask=p_ok)
            tl.store(kfs_ptr + k_e + p, kfs, mask=p_ok)
        k_e += hw
    tl.store(part_ptr + b.to(tl.int64) * tl.num_programs(0) + pid, tl.sum(total, axis=0))


@triton.jit
def _local_grad_kernel(
    f_ptr,  # features F (B, C, H*W), contiguous
    t_ptr,  # target S (BT, C, H*W), contiguous (stride_tb = 0 for a shared target)
    m_ptr,  # fp32 (E, HC*WC): the multiplicities M_e by border class
    kff_ptr,  # fp32 (B, E, H*W): K^FF_e(p) from the forward
    kfs_ptr,  # fp32 (B, E, H*W): K^FS_e(p) from the forward
    g_ptr,  # fp32 (1,): the output gradient times the reduction scale
    df_ptr,  # (B, C, H*W) out: dL/dF in F's dtype
    C,
    H,
    W,
    HC,
    WC,
    stride_tb,
    S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    b = tl.program_id(2)
    S2 = 2 * S
    hw = H * W
    p, p_ok, y, x = _pixels(pid, H, W, BLOCK_P)
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    rows = cs[:, None].to(tl.int64) * hw
    f_base = f_ptr + b.to(tl.int64) * C * hw
    t_base = t_ptr + b.to(tl.int64) * stride_tb
    side = 2 * S2 + 1
    n_off = side * side
    g = tl.load(g_ptr)
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    k_e = b.to(tl.int64) * n_off * hw  # offset e's row of K (64-bit), advanced per offset
    for e in range(n_off):
        ey = e // side - S2
        ex = e % side - S2
        q, fwd_ok = _shift(y, x, ey, ex, H, W, p_ok)  # p + e: the partner of K_e(p)
        r, bwd_ok = _shift(y, x, -ey, -ex, H, W, p_ok)  # p - e: where p is the partner, K_e(p - e)
        m_e = m_ptr + e * HC * WC
        m_here = _mult(m_e, y, x, H, W, HC, WC, S, fwd_ok)
        m_back = _mult(m_e, y - ey, x - ex, H, W, HC, WC, S, bwd_ok)
        a_here = (2.0 * g) * m_here * tl.load(kff_ptr + k_e + p, mask=fwd_ok, other=0.0)
        c_here = (-4.0 * g) * m_here * tl.load(kfs_ptr + k_e + p, mask=fwd_ok, other=0.0)
        a_back = (2.0 * g) * m_back * tl.load(kff_ptr + k_e + r, mask=bwd_ok, other=0.0)
        fe = tl.load(f_base + rows + q[None, :], mask=c_ok[:, None] & fwd_ok[None, :], other=0.0).to(tl.float32)
        te = tl.load(t_base + rows + q[None, :], mask=c_ok[:, None] & fwd_ok[None, :], other=0.0).to(tl.float32)
        fb = tl.load(f_base + rows + r[None, :], mask=c_ok[:, None] & bwd_ok[None, :], other=0.0).to(tl.float32)
        acc += a_here[None, :] * fe + c_here[None, :] * te + a_back[None, :] * fb
        k_e += hw
    out = df_ptr + b.to(tl.int64) * C * hw + rows + p[None, :]
    tl.store(out, acc.to(df_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


#: Warps per program of both kernels. 8, not Triton's default 4: on maps whose sizes are not multiples
#: of 16 (most photos' layer sizes), 4 warps spill registers on sm_90 with Triton 3.6 and 8 do not
#: (tests/kernels/test_sm90_compile.py).
NUM_WARPS = 8


def launch_dots(f, t, m, kff, kfs, part, h: int, w: int, s: int, store: bool, block_c: int, block_p: int) -> None:
    """Forward: ``f`` (B, C, HW), ``t`` (BT, C, HW), ``m`` (E, hc, wc); fills ``part`` (B, P) and, when
    ``store``, ``kff``/``kfs`` (B, E, HW)."""
    b, c, _ = f.shape
    stride_tb = 0 if t.shape[0] == 1 else t.stride(0)
    grid = (part.shape[1], b)
    _local_dots_kernel[grid](f, t, m, kff, kfs, part, c, h, w, m.shape[1], m.shape[2], stride_tb, S=s,
                             STORE=store, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=NUM_WARPS)


def launch_grad(f, t, m, kff, kfs, g, df, h: int, w: int, s: int, block_c: int, block_p: int) -> None:
    """Backward: ``dF`` (B, C, HW) from the stored ``kff``/``kfs`` (B, E, HW), the table ``m`` and
    ``g`` (a one-element fp32 tensor: the output gradient times the reduction scale)."""
    b, c, hw = f.shape
    stride_tb = 0 if t.shape[0] == 1 else t.stride(0)
    grid = (triton.cdiv(hw, block_p), triton.cdiv(c, block_c), b)
    _local_grad_kernel[grid](f, t, m, kff, kfs, g, df, c, h, w, m.shape[1], m.shape[2], stride_tb, S=s,
                             BLOCK_C=block_c, BLOCK_P=block_p, num_warps=NUM_WARPS)
