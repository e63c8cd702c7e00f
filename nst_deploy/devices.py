"""Devices: resolving a device name, the memory available on it, and telling an out-of-memory error.

One home for these facts, used by the optimization, training, synthesis and the runtime. Importing
it does not import torch (the ONNX path of the runtime runs without it).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from .errors import NSTError

__all__ = ["DEVICE_TYPES", "available_memory", "cache_dir", "cpu_threads", "deterministic", "gpu_present",
           "is_out_of_memory", "lane_threads", "resolve_device"]

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
    (so that the ONNX path does not import torch to find out). ``CUDA_VISIBLE_DEVICES`` set empty or to
    -1 hides the GPUs, as it does from CUDA."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.is_available()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def cpu_threads() -> int | None:
    """The CPU threads one inference may use: ``OMP_NUM_THREADS`` where set to a positive number (torch
    reads it itself; ONNX Runtime sessions are given it), else None (each library's own default)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def lane_threads(lanes: int) -> int | None:
    """The CPU threads each of ``lanes`` inferences run side by side may use: ``OMP_NUM_THREADS`` where set,
    else the cores shared among them; for one lane :func:`cpu_threads` (None: each library's default)."""
    if lanes <= 1:
        return cpu_threads()
    return cpu_threads() or max(1, (os.cpu_count() or 1) // lanes)


def cache_dir(kind: str) -> str:
    """Where built artefacts of ``kind`` (e.g. ``tensorrt``: engines built for one GPU) are kept between runs:
    ``$NST_CACHE_DIR/kind``, else ``$XDG_CACHE_HOME/nst-deploy/kind``, else ``~/.cache/nst-deploy/kind``.
    Not created here."""
    root = os.environ.get("NST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nst-deploy")
    return os.path.join(root, kind)


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


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """Deterministic algorithms only (where torch has them; a warning names the others) and no cuDNN
    autotuning, while the block runs; the previous settings after it. Off (``enabled=False``) it changes
    nothing. cuBLAS needs a fixed workspace for repeatable sums: set here unless the caller set one."""
    if not enabled:
        yield
        return
    import torch

    old_det, old_bench = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.backends.cudnn.benchmark = old_bench
