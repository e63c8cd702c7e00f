"""The cuBLAS SYRK Gram provider: a small C++ extension (``csrc/gram_syrk.cpp``) built on first use.

``G = alpha F F^T`` by cuBLAS's symmetric rank-k update (``cublasSsyrk``/``cublasDsyrk``), which
computes exactly one triangle of the product (half the FLOPs of ``bmm``) and is mirrored after.
It serves float32 and float64 CUDA features; the Gram ops use it for their forward when the
``syrk`` backend is chosen (``backend="syrk"`` or ``NST_KERNELS=syrk``); their backward is the same
one-pass ``bmm`` as the other backends'. Precision: the ops' ``precision`` sets cuBLAS's math mode
for the call: ``tf32`` lets float32 run on the TF32 tensor cores, ``ieee`` and ``tf32x3`` (which
cuBLAS's SYRK does not offer; full float32 is at least as accurate) run in full float32.

The extension is compiled by :func:`torch.utils.cpp_extension.load` with ninja into
``$NST_EXTENSIONS_DIR`` (default ``~/.cache/nst-deploy/extensions/<torch>-<cuda>``), once per
torch/CUDA version; later processes load the built library. Headers and libraries come from
``CUDA_HOME`` when torch finds a CUDA toolkit, otherwise from the ``nvidia-*`` pip packages that a
pip-installed CUDA torch brings along (``nvidia/*/include``, ``nvidia/*/lib``). Nothing here is
imported or built unless the ``syrk`` backend is asked for.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
from pathlib import Path

import torch

__all__ = ["SyrkUnavailable", "build_dir", "gram_syrk", "load"]

NAME = "nst_gram_syrk"
SOURCE = Path(__file__).resolve().parent / "csrc" / "gram_syrk.cpp"


class SyrkUnavailable(RuntimeError):
    """The SYRK extension cannot be built or loaded here (the message says why)."""


def build_dir() -> Path:
    """Where the extension is built: ``$NST_EXTENSIONS_DIR`` or a per torch/CUDA version cache."""
    env = os.environ.get("NST_EXTENSIONS_DIR")
    if env:
        return Path(env)
    cuda = (torch.version.cuda or "nocuda").replace(".", "")
    tag = f"torch{torch.__version__.split('+')[0]}-cu{cuda}"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nst-deploy" / "extensions" / tag


def _nvidia_wheel_paths() -> tuple[list[str], list[str]]:
    """Include and library folders of the ``nvidia-*`` pip packages (CUDA from pip, no toolkit)."""
    try:
        import nvidia  # the namespace package of the nvidia-* wheels
    except ImportError:
        return [], []
    includes, libs = [], []
    for root in getattr(nvidia, "__path__", []):
        includes += sorted(p for p in glob.glob(os.path.join(root, "*", "include")) if os.path.isdir(p))
        libs += sorted(p for p in glob.glob(os.path.join(root, "*", "lib")) if os.path.isdir(p))
    return includes, libs


def _shared_lib(libs: list[str], stem: str) -> str | None:
    """``-l:`` argument for the first ``lib<stem>.so*`` in ``libs`` (the versioned names pip ships)."""
    for folder in libs:
        found = sorted(glob.glob(os.path.join(folder, f"lib{stem}.so*")), key=len)
        if found:
            return f"-l:{os.path.basename(found[0])}"
    return None


def _build_args() -> dict:
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME:
        return {"with_cuda": True, "extra_ldflags": ["-lcublas"]}
    includes, libs = _nvidia_wheel_paths()
    have = {os.path.basename(p) for inc in includes for p in glob.glob(os.path.join(inc, "*.h"))}
    missing = [h for h in ("cuda_runtime_api.h", "cublas_v2.h") if h not in have]
    if missing:
        raise SyrkUnavailable(f"no CUDA toolkit (CUDA_HOME) and no nvidia pip headers ({', '.join(missing)} missing)")
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    ldflags = [f"-L{torch_lib}", "-lc10_cuda", "-ltorch_cuda"]
    for folder in libs:
        ldflags += [f"-L{folder}", f"-Wl,-rpath,{folder}"]
    for stem in ("cublas", "cudart"):
        flag = _shared_lib(libs, stem)
        if flag is None:
            raise SyrkUnavailable(f"no CUDA toolkit (CUDA_HOME) and no lib{stem}.so in the nvidia pip packages")
        ldflags.append(flag)
    return {"with_cuda": False, "extra_include_paths": includes, "extra_ldflags": ldflags,
            "extra_cflags": ["-DUSE_CUDA"]}


def load():
    """Build (first time) and import the extension module; :class:`SyrkUnavailable` when impossible.

    The outcome is remembered for the process: a failed build is not retried on every call.
    """
    outcome = _load_once()
    if isinstance(outcome, SyrkUnavailable):
        raise outcome
    return outcome


@functools.lru_cache(maxsize=1)
def _load_once():
    try:
        return _build()
    except SyrkUnavailable as exc:
        return exc


def _build():
    if not torch.cuda.is_available():
        raise SyrkUnavailable("the SYRK Gram needs CUDA (torch.cuda.is_available() is False)")
    if torch.version.hip:
        raise SyrkUnavailable("the SYRK Gram calls cuBLAS; this is a ROCm build of torch")
    if not SOURCE.is_file():
        raise SyrkUnavailable(f"the extension source {SOURCE} is missing from the installation")
    if shutil.which("ninja") is None:
        raise SyrkUnavailable("building the SYRK extension needs ninja (pip install ninja)")
    from torch.utils import cpp_extension

    args = _build_args()
    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(NAME, [str(SOURCE)], build_directory=str(folder), extra_cflags=["-O3"]
                                  + args.pop("extra_cflags", []), verbose=False, **args)
    except Exception as exc:  # compiler or linker output
        raise SyrkUnavailable(build_failure(str(exc) or type(exc).__name__, folder)) from exc


#: Lines of a compiler or linker log that say what went wrong, most specific first (ninja's own
#: last line does not, nor torch's "Error building extension '...':" prefix of the first line).
_ERROR_MARKERS = (": error:", "fatal error", "undefined reference", "cannot find -l", "error:")
_WRAPPERS = ("error building extension", "error compiling objects", "ninja:")


def build_failure(log: str, folder: Path) -> str:
    """One line for a failed build: the log's first error line (else its last line), and where the
    whole log was written (``build-error.log`` in ``folder``, when it can be written)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    own = [ln for ln in lines if not ln.lower().startswith(_WRAPPERS)]
    first = next((ln for m in _ERROR_MARKERS for ln in own if m in ln.lower()), lines[-1] if lines else "no output")
    from ..fsutil import atomic_write

    where = ""
    try:
        path = folder / "build-error.log"
        with atomic_write(path, "w") as fh:
            fh.write(log)
        where = f" (full log: {path})"
    except OSError:
        pass
    return f"building the SYRK extension failed: {first[:300]}{where}"


def available() -> tuple[bool, str]:
    """``(True, "")`` when the extension loads, else ``(False, why)``."""
    try:
        load()
    except SyrkUnavailable as exc:
        return False, str(exc)
    return True, ""


def gram_syrk(f: torch.Tensor, alpha: float, allow_tf32: bool = False) -> torch.Tensor:
    """``alpha F F^T`` of ``(B, C, K)`` float32/float64 CUDA features: ``(B, C, C)`` in ``F``'s dtype.

    ``allow_tf32``: float32 products may use the TF32 tensor cores (cuBLAS's
    ``CUBLAS_TF32_TENSOR_OP_MATH``, set for this call only); otherwise full float32.
    """
    return load().gram_syrk(f, float(alpha), bool(allow_tf32))
