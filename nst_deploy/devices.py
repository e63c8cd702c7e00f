"""Devices: resolving a device name, the memory available on it, and telling an out-of-memory error.

One home for these facts, used by the optimization, training, synthesis and the runtime. Importing
it does not import torch (the ONNX path of the runtime runs without it).
"""

from __future__ import annotations

import os
import re
import sys

from .errors import NSTError

__all__ = ["DEVICE_TYPES", "available_memory", "gpu_present", "is_out_of_memory", "resolve_device"]

#: Device types the package runs on.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(name: str):
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu`` as a
    ``torch.device``, checked against what this machine has (one :class:`NSTError` line otherwise)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NSTError(f"unknown device '{name}'") from None
    if dev.type not in DEVICE_TYPES:
        raise NSTError(f"device '{name}' cannot run this: use cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NSTError(f"device '{name}' was asked for, but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise NSTError(f"device '{name}' was asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if dev.type == "xpu" and not (getattr(torch, "xpu", None) and torch.xpu.is_available()):
        raise NSTError(f"device '{name}' was asked for, but XPU is not available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NSTError(f"device '{name}' was asked for, but MPS is not available")
    return dev


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is there, asked of torch when it is loaded anyway, else of the driver's files
    (so that the ONNX path does not import torch to find out)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.is_available()
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def available_memory(device) -> int | None:
    """Bytes available now: free memory of a CUDA device (a ``torch.device``), ``MemAvailable`` for the
    others (None when the system does not say)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_OUT_OF_MEMORY = re.compile(r"out of memory|alloc\w* memory|memory alloc|not enough memory", re.IGNORECASE)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out (torch's CUDA and CPU errors, onnxruntime's, MemoryError)."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and bool(_OUT_OF_MEMORY.search(str(e))))
