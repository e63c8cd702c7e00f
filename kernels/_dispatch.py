"""Backend choice for the fused ops: Triton or the pure-torch reference."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from nst_deploy.errors import KernelError

__all__ = ["BACKENDS", "choose_backend", "has_triton", "is_exporting", "too_large_for_kernels", "triton_interpreted"]

BACKENDS = ("auto", "torch", "triton", "syrk")
ENV_VAR = "NST_KERNELS"


@functools.lru_cache(maxsize=1)
def has_triton() -> bool:
    """Whether triton can be imported (checked once, imported only on first use)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def triton_interpreted() -> bool:
    """Whether Triton runs its kernels in its CPU interpreter (``TRITON_INTERPRET``, read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def is_exporting() -> bool:
    """True while torch.jit scripting/tracing, torch.export or ONNX export is running."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and hasattr(onnx, "is_in_onnx_export") and onnx.is_in_onnx_export())


def choose_backend(x: torch.Tensor, backend: str = "auto", syrk: bool = False) -> str:
    """``"triton"``, ``"torch"`` or ``"syrk"`` for an op on ``x``.

    Args:
        x: the op's main input.
        backend: ``"auto"`` (the rule above), ``"torch"``, ``"triton"`` or ``"syrk"``; the
            ``NST_KERNELS`` environment variable, when set, overrides ``"auto"``.
        syrk: whether the op has a cuBLAS SYRK path (the Gram forward). ``"syrk"`` applies to such
            ops on float32/float64 CUDA tensors; everywhere else it means ``"auto"``.

    Raises:
        ValueError: an unknown backend name, ``"triton"`` asked for without triton or on a non-CUDA
            tensor outside Triton's interpreter, or
            ``"syrk"`` asked for where its extension cannot be built (the reason is given).
    """
    if backend not in BACKENDS:
        raise KernelError(f"unknown kernel backend '{backend}': choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env not in ("auto",):
            if env not in BACKENDS:
                raise KernelError(f"{ENV_VAR}={env!r} is not one of {', '.join(BACKENDS)}")
            backend = env
    if is_exporting():
        return "torch"
    if backend == "syrk":
        if not (syrk and x.is_cuda and x.dtype in (torch.float32, torch.float64)):
            backend = "auto"
        else:
            from . import _syrk

            ok, why = _syrk.available()
            if not ok:
                raise KernelError(f"kernel backend 'syrk' was asked for, but {why}")
            return "syrk"
    if backend == "triton":
        if not has_triton():
            raise KernelError("kernel backend 'triton' was asked for, but triton cannot be imported")
        if too_large_for_kernels(x):
            raise KernelError(f"kernel backend 'triton' was asked for, but one image's features have "
                             f"{x[:1].numel()} elements, more than its 32-bit offsets reach (2^31 - 1)")
        if not x.is_cuda and not triton_interpreted():
            # Triton's launcher would refuse the pointer with a message about 'cpu tensor?'.
            raise KernelError(f"kernel backend 'triton' was asked for on a {x.device.type} tensor: the Triton kernels "
                             f"run on CUDA tensors (TRITON_INTERPRET=1 runs them on the CPU, slowly)")
        return "triton"
    if backend == "torch":
        return "torch"
    return "triton" if x.is_cuda and has_triton() and not too_large_for_kernels(x) else "torch"


def too_large_for_kernels(x: torch.Tensor) -> bool:
    """Whether one image of ``x`` has ``2^31`` elements or more: the Triton kernels offset within an
    image with 32-bit integers (a 64-channel map of about 5800 x 5800), so such inputs take the
    reference."""
    return x.dim() > 0 and x.shape[0] > 0 and x.numel() // x.shape[0] >= 2**31
