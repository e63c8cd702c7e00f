"""What ``nst-export`` writes and the runtime reads: the model I/O contract, in one place.

An exported network takes ``image`` and returns ``stylized``, both ``(N, 3, H, W)`` RGB in ``[0, 1]``,
with sides between :data:`MIN_SIDE` and :data:`MAX_SIDE` pixels, in one of :data:`PRECISION_NAMES`
(``fp16-io``: half-precision inputs and outputs as well as weights).
"""

from __future__ import annotations

__all__ = ["MAX_SIDE", "MIN_SIDE", "ONNX_INPUT", "ONNX_OUTPUT", "ONNX_STYLE", "PRECISION_NAMES", "all_finite"]

#: Image sides a style network accepts, in pixels.
MIN_SIDE, MAX_SIDE = 8, 16384
#: The graph's tensor names.
ONNX_INPUT, ONNX_OUTPUT = "image", "stylized"
#: A multistyle network's second input: the style vector, float32 ``(N, n_styles)``.
ONNX_STYLE = "style"
#: Precisions of an export.
PRECISION_NAMES = ("fp32", "fp16", "fp16-io")


def half_precision(meta: dict) -> bool:
    """Whether a file of checked metadata computes in 16-bit floats (``fp16`` or ``fp16-io``)."""
    return meta["precision"] != "fp32"


def style_count(meta: dict) -> int:
    """A multistyle network's style count (the width of its style input), else 0."""
    return int((meta.get("config") or {}).get("n_styles") or 0) if meta.get("arch") == "multistyle" else 0


def all_finite(x) -> bool:
    """Whether every value of a numpy array or a torch tensor is finite (what the runtime checks of every input
    and output). A CPU tensor is checked through numpy, without a copy: torch's ``isfinite(x).all()`` takes
    ten times longer on the CPU, more when the cores are busy (docs/performance.md)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return bool(np.isfinite(x).all())
    if x.device.type == "cpu" and str(x.dtype) != "torch.bfloat16":  # numpy has no bfloat16
        return bool(np.isfinite(x.detach().numpy()).all())
    return bool(x.isfinite().all())
