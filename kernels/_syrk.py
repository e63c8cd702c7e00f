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
torch/CUDA version; later processes load the built library. cuBLAS's and the CUDA runtime's
headers and libraries come from the first place that has them for torch's CUDA major version:
the toolkit torch finds (``CUDA_HOME``), then the ``nvidia-*`` pip packages that a pip-installed
CUDA torch brings along (``nvidia/*/include`` with ``lib`` beside it). Nothing here is imported or
built unless the ``syrk`` backend is asked for; :func:`compile_extension` builds it without a GPU.
"""

from __future__ import annotations

import functools
import glob
import os
import re
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


def _nvidia_wheel_paths() -> list[str]:
    """Include folders of the ``nvidia-*`` pip packages (``nvidia/cublas/include`` for CUDA 12,
    ``nvidia/cu13/include`` for CUDA 13), the CUDA that a pip-installed torch brings along."""
    try:
        import nvidia  # the namespace package of the nvidia-* wheels
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += sorted(p for p in glob.glob(os.path.join(root, "*", "include")) if os.path.isdir(p))
    return found


def _include_candidates() -> list[str]:
    """Where to look for the CUDA headers, in order: the toolkit torch found (``CUDA_HOME``; when
    that is a folder of a ``bin/nvcc`` shim, ``/usr/local/cuda`` too), then the nvidia pip packages.
    A toolkit may lack cuBLAS (some images ship nvcc and the runtime alone), and pip packages may be
    of another CUDA major version than torch: :func:`build_args` sorts that out."""
    from torch.utils import cpp_extension

    roots = [r for r in (cpp_extension.CUDA_HOME, os.environ.get("CUDA_PATH"), DEFAULT_TOOLKIT) if r]
    dirs = []
    for root in roots:
        dirs += [os.path.join(root, "include")] + sorted(glob.glob(os.path.join(root, "targets", "*", "include")))
    dirs += _nvidia_wheel_paths()
    dirs = [x for d in dirs for x in (d, os.path.join(d, "cccl"))]  # CUDA 13 keeps CCCL in include/cccl
    return [d for d in dict.fromkeys(os.path.realpath(d) for d in dirs) if os.path.isdir(d)]


#: Where CUDA toolkits install themselves; searched after ``CUDA_HOME``.
DEFAULT_TOOLKIT = "/usr/local/cuda"
#: Headers the build includes (directly or through ATen's CUDA context), with where they come from.
_NEEDED = {"cuda_runtime_api.h": "the CUDA runtime",
           "crt/host_defines.h": "the CUDA compiler's headers (pip: nvidia-cuda-crt for CUDA 13, "
                                 "nvidia-cuda-nvcc-cu12 for CUDA 12)",
           "cublas_v2.h": "cuBLAS", "cublasLt.h": "cuBLAS", "cusparse.h": "cuSPARSE",
           "cusolverDn.h": "cuSOLVER",
           "nv/target": "CCCL (pip: nvidia-cuda-cccl for CUDA 13, nvidia-cuda-cccl-cu12 for CUDA 12)"}
#: Headers that give a folder's CUDA major version: the macro and its scale (``CUDART_VERSION 13000``).
_VERSIONS = (("cuda_runtime_api.h", "CUDART_VERSION", 1000), ("cublas_api.h", "CUBLAS_VER_MAJOR", 1))


def _majors(folder: str) -> set[int]:
    """The CUDA major versions a header folder's version macros name (empty when it has none)."""
    found = set()
    for header, macro, scale in _VERSIONS:
        try:
            text = Path(folder, header).read_text(errors="replace")
        except OSError:
            continue
        match = re.search(rf"#\s*define\s+{macro}\s+(\d+)", text)
        if match:
            found.add(int(match.group(1)) // scale)
    return found


def _shared_lib(folder: str, stem: str) -> str | None:
    """``-l:`` argument for ``lib<stem>.so`` or its shortest versioned name (pip ships only those)."""
    found = sorted(glob.glob(os.path.join(folder, f"lib{stem}.so*")), key=len)
    return f"-l:{os.path.basename(found[0])}" if found else None


def build_args() -> dict:
    """Compiler and linker flags. Header folders of another CUDA major version than torch's are
    skipped; each needed header comes from the first remaining folder that has it, and cuBLAS and
    the CUDA runtime from the first ``lib64``/``lib`` folder beside such a header folder."""
    torch_major = int((torch.version.cuda or "0").split(".")[0])
    candidates = _include_candidates()
    other = {d: m for d in candidates if torch_major and (m := _majors(d)) and torch_major not in m}
    usable = [d for d in candidates if d not in other]
    includes = []
    for header, what in _NEEDED.items():
        folder = next((d for d in usable if os.path.isfile(os.path.join(d, header))), None)
        if folder is None:
            skipped = "".join(f"; skipped {d} (CUDA {'/'.join(map(str, sorted(m)))})" for d, m in other.items())
            raise SyrkUnavailable(f"{header} ({what}) not found for torch's CUDA {torch.version.cuda} "
                                  f"(searched: {', '.join(usable) or 'no CUDA toolkit, no nvidia pip packages'}"
                                  f"{skipped})")
        if folder not in includes:
            includes.append(folder)
    includes.sort(key=usable.index)  # the compiler searches them in this order too
    ldflags = []
    lib_dirs = [os.path.join(os.path.dirname(d), sub) for d in includes for sub in ("lib64", "lib")]
    for stem in ("cudart", "cublas"):
        flag, where = next(((f, d) for d in lib_dirs if (f := _shared_lib(d, stem))), (None, None))
        if flag is None:
            raise SyrkUnavailable(f"no lib{stem}.so beside the CUDA headers (searched: {', '.join(lib_dirs)})")
        ldflags += [f"-L{where}", f"-Wl,-rpath,{where}", flag]
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    return {"extra_include_paths": includes, "extra_cflags": ["-DUSE_CUDA"],
            "extra_ldflags": [f"-L{torch_lib}", "-lc10_cuda", "-ltorch_cuda", *ldflags]}


def load():
    """Build (first time) and import the extension module; :class:`SyrkUnavailable` when impossible.

    The outcome is remembered for the process: a failed build is not retried on every call.
    """
    outcome = load_once()
    if isinstance(outcome, SyrkUnavailable):
        raise outcome
    return outcome


@functools.lru_cache(maxsize=1)
def load_once():
    try:
        return build_or_load()
    except SyrkUnavailable as exc:
        return exc


def build_or_load():
    """The extension, built if needed (see :func:`compile_extension`)."""
    if not torch.cuda.is_available():
        raise SyrkUnavailable("the SYRK Gram needs CUDA (torch.cuda.is_available() is False)")
    if torch.version.hip:
        raise SyrkUnavailable("the SYRK Gram calls cuBLAS; this is a ROCm build of torch")
    return compile_extension()


def compile_extension(folder: Path | None = None):
    """Compile (ninja; nothing when up to date), link and import the extension into ``folder``
    (default :func:`build_dir`). Needs a CUDA build of torch and the CUDA headers, not a device:
    a machine without a GPU can check the build. :class:`SyrkUnavailable` when it fails."""
    if not torch.version.cuda:
        raise SyrkUnavailable("the SYRK Gram needs a CUDA build of torch (this one is CPU only)")
    if not SOURCE.is_file():
        raise SyrkUnavailable(f"the extension source {SOURCE} is missing from the installation")
    if shutil.which("ninja") is None:
        raise SyrkUnavailable("building the SYRK extension needs ninja (pip install ninja)")
    from torch.utils import cpp_extension

    args = build_args()
    folder = build_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(NAME, [str(SOURCE)], build_directory=str(folder), with_cuda=False,
                                  extra_cflags=["-O3", *args["extra_cflags"]],
                                  extra_include_paths=args["extra_include_paths"],
                                  extra_ldflags=args["extra_ldflags"], verbose=False)
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
    from nst_deploy.fsutil import atomic_write

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


if __name__ == "__main__":  # python -m nst_deploy.kernels._syrk: build ahead of use (no GPU needed)
    import sys

    try:
        module = compile_extension()
    except SyrkUnavailable as exc:
        sys.exit(f"nst-deploy: {exc}")
    print(f"built {module.__file__}")
