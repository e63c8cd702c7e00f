"""Launch helpers shared by the Triton ops (no triton import here)."""

from __future__ import annotations

import functools

import torch

from nst_deploy.errors import KernelError

__all__ = ["PRECISIONS", "cdiv", "pow2", "precision_mode", "upper_tile_pairs"]

#: fp32 matmul precision of the Triton kernels (half inputs ignore it).
PRECISIONS = ("ieee", "tf32x3", "tf32")


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b``."""
    return -(-a // b)


def pow2(n: int, cap: int) -> int:
    """The smallest power of two ``>= n`` (at least 1), at most ``cap``: a block size."""
    return min(cap, 1 << max(0, (n - 1).bit_length()))


def precision_mode(precision: str | None) -> str:
    """``precision``, checked; ``None``: ``ieee`` when ``torch.get_float32_matmul_precision()`` is
    ``"highest"``, else ``tf32`` (matched to torch's own fp32 matmuls)."""
    if precision is None:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    if precision not in PRECISIONS:
        raise KernelError(f"unknown precision '{precision}': choose from {', '.join(PRECISIONS)}")
    return precision


@functools.lru_cache(maxsize=64)
def upper_tile_pairs(tiles: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 row/column tile indices of the upper triangle (ti <= tj) of a tiles x tiles grid."""
    idx = torch.triu_indices(tiles, tiles, device=device).to(torch.int32)
    return idx[0].contiguous(), idx[1].contiguous()
