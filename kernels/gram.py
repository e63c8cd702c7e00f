"""Gram matrix of feature maps ``G = F F^T / norm`` and the fused Gram style loss.

``F`` is ``(B, C, K)`` with ``K = H*W``. Top to bottom: the pure-torch references (the definition,
used on CPU, while exporting and in tests); the launcher of the Triton kernel (in
``_gram_triton.py``, imported only when it runs); the autograd Functions; the public :func:`gram`
and :func:`gram_loss`.

The Triton kernel computes only the upper-triangle ``C x C`` tiles (``G`` is symmetric) and
mirrors them; it splits ``K`` across programs (style-layer features are skinny: ``C`` 64..512,
``K`` up to 10^6) into an fp32 workspace summed afterwards (deterministic, no atomics). fp32
inputs run at a precision mode (``ieee``, ``tf32x3``, ``tf32``); bf16/fp16 inputs accumulate in
fp32. Backward is one pass: ``dF = (dG + dG^T) F / norm``.

A third forward provider, ``backend="syrk"`` (or ``NST_KERNELS=syrk``), computes the same product
with cuBLAS's symmetric rank-k update through a small C++ extension (``csrc/gram_syrk.cpp``, built
on first use by :mod:`._syrk`); float32/float64 CUDA features only, the backward is shared.
"""

from __future__ import annotations

import math

import torch

from nst_deploy.errors import KernelError

from ._dispatch import choose_backend, is_exporting
from ._launch import PRECISIONS, precision_mode, upper_tile_pairs

__all__ = ["NORMS", "PRECISIONS", "gram", "gram_loss", "gram_loss_ref", "gram_ref"]

#: ``"chw"``: divide by C*H*W; ``"hw"``: divide by H*W; ``"none"``: no normalization.
NORMS = ("chw", "hw", "none")


def _norm(x: torch.Tensor, normalize: str) -> float:
    _, c, h, w = x.shape
    if normalize == "chw":
        return float(c * h * w)
    if normalize == "hw":
        return float(h * w)
    if normalize == "none":
        return 1.0
    raise KernelError(f"unknown Gram normalization '{normalize}': choose from {', '.join(NORMS)}")


def _check(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise KernelError(f"gram expects (B, C, H, W) features, got shape {tuple(x.shape)}")


# --- references ---------------------------------------------------------------------------------

def gram_ref(x: torch.Tensor, normalize: str = "hw") -> torch.Tensor:
    """Reference Gram matrix.

    Args:
        x: features ``(B, C, H, W)``.
        normalize: ``"hw"`` (default), ``"chw"`` or ``"none"``.

    Returns:
        ``(B, C, C)`` with ``G[b, i, j] = sum_k F[b, i, k] F[b, j, k] / norm``, accumulated in fp32
        for half-precision inputs.
    """
    _check(x)
    norm = _norm(x, normalize)
    f = x.flatten(2)
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    g = torch.bmm(f, f.transpose(1, 2))
    return g if norm == 0 else g / norm  # an empty map: the empty sum, 0, as the kernels give


def _targets(targets: torch.Tensor, weights, c: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    a = targets.float()
    if a.dim() == 2:
        a = a.unsqueeze(0)
    if a.dim() != 3 or a.shape[-2:] != (c, c):
        raise KernelError(f"Gram targets must be (C, C) or (T, C, C) with C = {c}, got {tuple(targets.shape)}")
    if weights is None:
        w = torch.ones(a.shape[0], device=device)
    else:
        w = torch.as_tensor(weights, dtype=torch.float32, device=device).reshape(-1)
        if w.numel() != a.shape[0]:
            raise KernelError(f"{w.numel()} weights for {a.shape[0]} Gram targets")
    return a.to(device), w


def gram_loss_ref(x: torch.Tensor, targets: torch.Tensor, weights=None, normalize: str = "hw",
                  scale: float = 1.0) -> torch.Tensor:
    """Reference fused style loss ``scale * sum_b sum_t w_t ||G_b - A_t||_F^2``.

    Args:
        x: features ``(B, C, H, W)``.
        targets: ``A``, ``(C, C)`` or ``(T, C, C)`` Gram matrices with the same normalization
            (several styles on one layer).
        weights: ``(T,)`` per-target weights (default 1).
        normalize: the Gram normalization of ``G`` (and of the targets).
        scale: a constant factor (the Gatys loss uses ``1 / (4 C^2)`` with ``normalize="hw"``).
    """
    g = gram_ref(x, normalize)
    a, w = _targets(targets, weights, x.shape[1], x.device)
    d = g.unsqueeze(1) - a.unsqueeze(0)  # (B, T, C, C)
    return scale * (w.view(1, -1, 1, 1) * d.square()).sum()


# --- Triton launcher ----------------------------------------------------------------------------

def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: few programs


#: Warps of the Triton Gram kernel, ``None``: 8 for 64-channel tiles, else 4 (a benchmark knob).
GRAM_WARPS: int | None = None


def gram_forward(x: torch.Tensor, normalize: str = "hw", precision: str | None = None) -> torch.Tensor:
    """Triton Gram of ``x`` ``(B, C, H, W)``: ``(B, C, C)`` fp32 (upper tiles, split-K, mirrored)."""
    from . import _gram_triton

    _check(x)
    b, c, h, w = x.shape
    k = h * w
    out = torch.zeros(b, c, c, device=x.device, dtype=torch.float32)
    if b == 0 or c == 0 or k == 0:
        return out
    f = x.reshape(b, c, k)
    if f.stride(2) != 1:
        f = f.contiguous()
    block_c = 16 if c <= 16 else 32 if c <= 32 else 64
    block_k = 64 if k >= 64 else 32 if k >= 32 else 16
    nt = math.ceil(c / block_c)
    ti, tj = upper_tile_pairs(nt, x.device)
    # Enough programs to fill the GPU about four times over, each with at least 4 K-blocks.
    want = 4 * _sm_count(x.device)
    split = max(1, min(math.ceil(want / (ti.numel() * b)), math.ceil(k / (4 * block_k))))
    k_per_split = math.ceil(math.ceil(k / split) / block_k) * block_k
    split = math.ceil(k / k_per_split)
    ws = out.unsqueeze(0) if split == 1 else torch.empty(split, b, c, c, device=x.device, dtype=torch.float32)
    # 64 x 64 tiles on 8 warps: fewer registers per thread than on 4, so that more warps stay resident
    # to hide memory latency (sm_90 compile check: no spill on either); bench_kernels --gram-warps 4 8
    # times both through GRAM_WARPS (docs/performance.md).
    _gram_triton.launch_gram(f, ws, ti, tj, k_per_split, 1.0 / _norm(x, normalize), block_c, block_k,
                             precision_mode(precision), num_warps=GRAM_WARPS or (8 if block_c >= 64 else 4))
    return out if split == 1 else ws.sum(0)


def gram_forward_syrk(x: torch.Tensor, normalize: str = "hw", precision: str | None = None) -> torch.Tensor:
    """cuBLAS SYRK Gram of float32/float64 CUDA ``x`` ``(B, C, H, W)``: ``(B, C, C)`` in ``x``'s dtype.

    ``precision`` ``"tf32"`` lets float32 run on the TF32 tensor cores; ``"ieee"`` and ``"tf32x3"``
    run in full float32 (cuBLAS's SYRK has no 3xTF32 mode); ``None`` as :func:`precision_mode`.
    """
    from . import _syrk

    _check(x)
    b, c, h, w = x.shape
    tf32 = precision_mode(precision) == "tf32"
    if b == 0 or c == 0 or h * w == 0:  # as the Triton path: an empty sum is 0 (the reference gives 0 / 0)
        return torch.zeros(b, c, c, device=x.device, dtype=x.dtype)
    return _syrk.gram_syrk(x.reshape(b, c, h * w), 1.0 / _norm(x, normalize), allow_tf32=tf32)


def _forward(x: torch.Tensor, normalize: str, precision: str | None, impl: str) -> torch.Tensor:
    """The forward Gram of ``x`` by ``impl`` (``"triton"``, ``"syrk"`` or ``"torch"``), no autograd."""
    if impl == "triton":
        return gram_forward(x, normalize, precision)
    if impl == "syrk":
        return gram_forward_syrk(x, normalize, precision)
    return gram_ref(x.detach(), normalize)


def _gram_backward(x: torch.Tensor, dg_sym: torch.Tensor, norm: float) -> torch.Tensor:
    """``dF = dGsym F / norm`` with ``dGsym = dG + dG^T``: one pass over ``F`` (cuBLAS/bmm)."""
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    df = torch.bmm(dg_sym.to(f.dtype), f) / norm
    return df.reshape(b, c, h, w).to(x.dtype)


# --- autograd -----------------------------------------------------------------------------------

class GramFunction(torch.autograd.Function):
    """``G = F F^T / norm`` with the Triton (or SYRK) forward; backward ``dF = (dG + dG^T) F / norm``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, normalize: str, precision: str | None, impl: str = "triton"):
        ctx.save_for_backward(x)
        ctx.norm = _norm(x, normalize)
        return _forward(x, normalize, precision, impl)

    @staticmethod
    def backward(ctx, dg: torch.Tensor):
        (x,) = ctx.saved_tensors
        dx = _gram_backward(x, dg + dg.transpose(1, 2), ctx.norm) if ctx.needs_input_grad[0] else None
        return dx, None, None, None


class GramLossFunction(torch.autograd.Function):
    """Fused ``scale * sum_b sum_t w_t ||G_b - A_t||^2``; forward keeps only ``D = sum_t w_t (G - A_t)``.

    ``dL/dG_b = 2 scale D_b``, so ``dF_b = 2 scale (D_b + D_b^T) F_b / norm`` (``4 scale D_b F_b / norm``
    for symmetric targets): one pass over F, no ``C x HW`` temporary besides ``dF``.
    """

    @staticmethod
    def forward(ctx, x, targets, weights, normalize: str, scale: float, impl: str, precision):
        g = _forward(x, normalize, precision, impl)
        d = g.unsqueeze(1) - targets.unsqueeze(0)  # (B, T, C, C): small
        wv = weights.view(1, -1, 1, 1)
        loss = scale * (wv * d.square()).sum()
        ctx.save_for_backward(x, (wv * d).sum(1))
        ctx.norm, ctx.scale = _norm(x, normalize), scale
        return loss

    @staticmethod
    def backward(ctx, dloss):
        x, dsum = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        dg = (2.0 * ctx.scale) * dloss * dsum  # dL/dG (symmetric when the targets are)
        return _gram_backward(x, dg + dg.transpose(1, 2), ctx.norm), None, None, None, None, None, None


# --- public -------------------------------------------------------------------------------------

def gram(x: torch.Tensor, normalize: str = "hw", backend: str = "auto", precision: str | None = None) -> torch.Tensor:
    """Gram matrix ``F F^T / norm`` of ``(B, C, H, W)`` features; differentiable.

    Args:
        x: features.
        normalize: ``"hw"`` (default), ``"chw"`` or ``"none"``.
        backend: ``"auto"`` (Triton on CUDA, the reference elsewhere; see
            :func:`nst_deploy.kernels.choose_backend`), ``"torch"``, ``"triton"`` or ``"syrk"``
            (cuBLAS SYRK forward for float32/float64 CUDA features, ``"auto"`` elsewhere).
        precision: fp32 matmul mode of the Triton kernel: ``"ieee"``, ``"tf32x3"``, ``"tf32"``
            (default: ``ieee`` when ``torch.get_float32_matmul_precision()`` is ``"highest"``, else
            ``tf32``). SYRK runs ``"tf32"`` on the TF32 tensor cores and the other two in full
            float32; the torch backend follows torch's own matmul settings.

    Returns:
        ``(B, C, C)``; fp32 for half inputs on either backend.
    """
    _check(x)
    _norm(x, normalize)
    impl = choose_backend(x, backend, syrk=True)
    if impl != "torch":
        return GramFunction.apply(x, normalize, precision, impl)
    return gram_ref(x, normalize)


def gram_loss(x: torch.Tensor, targets: torch.Tensor, weights=None, normalize: str = "hw", scale: float = 1.0,
              backend: str = "auto", precision: str | None = None) -> torch.Tensor:
    """Fused Gram style loss ``scale * sum_b sum_t w_t ||G(F_b) - A_t||_F^2``; differentiable in ``x``.

    One read of ``F`` forward (the Gram), one backward (``dF = 2 scale (D + D^T) F / norm`` with
    ``D = sum_t w_t (G - A_t)``); several targets (styles on one layer) cost no extra pass.
    See :func:`gram_loss_ref` for the arguments; ``backend`` and ``precision`` as in :func:`gram`.
    """
    _check(x)
    _norm(x, normalize)
    if is_exporting():
        return gram_loss_ref(x, targets, weights, normalize, scale)
    a, w = _targets(targets.detach(), weights, x.shape[1], x.device)
    impl = choose_backend(x, backend, syrk=True)
    return GramLossFunction.apply(x, a, w, normalize, float(scale), impl, precision)
