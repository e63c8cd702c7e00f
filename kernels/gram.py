"""Gram matrix of feature maps: ``G = F F^T / norm`` for ``F`` of shape ``(B, C, H*W)``.

This file follows the one-file-per-op pattern; it holds the pure-torch reference (the definition,
used on CPU, while exporting and in tests). The fused Triton kernel (symmetric tiles, split-K)
plugs into :func:`gram` without changing its callers.
"""

from __future__ import annotations

import torch

from ._dispatch import choose_backend

__all__ = ["NORMS", "gram", "gram_ref"]

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
    raise ValueError(f"unknown Gram normalization '{normalize}': choose from {', '.join(NORMS)}")


def gram_ref(x: torch.Tensor, normalize: str = "hw") -> torch.Tensor:
    """Reference Gram matrix.

    Args:
        x: features ``(B, C, H, W)``.
        normalize: ``"hw"`` (default), ``"chw"`` or ``"none"``.

    Returns:
        ``(B, C, C)`` with ``G[b, i, j] = sum_k F[b, i, k] F[b, j, k] / norm``, accumulated in fp32
        for half-precision inputs.
    """
    if x.dim() != 4:
        raise ValueError(f"gram expects (B, C, H, W) features, got shape {tuple(x.shape)}")
    norm = _norm(x, normalize)
    f = x.flatten(2)
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    return torch.bmm(f, f.transpose(1, 2)) / norm


def gram(x: torch.Tensor, normalize: str = "hw", backend: str = "auto") -> torch.Tensor:
    """Gram matrix ``F F^T / norm`` of ``(B, C, H, W)`` features; differentiable.

    ``backend`` follows :func:`nst_deploy.kernels.choose_backend`; until the fused kernel is
    registered, every backend computes the reference.
    """
    choose_backend(x, backend)  # validates the backend name and the NST_KERNELS override
    return gram_ref(x, normalize)
