"""The cuBLAS SYRK Gram provider: dispatch rules and build flags everywhere, values on CUDA."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from nst_deploy.kernels import _syrk, choose_backend, gram, gram_loss, gram_loss_ref, gram_ref

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_source_is_installed():
    text = _syrk.SOURCE.read_text()
    assert "cublasSsyrk" in text and "PYBIND11_MODULE" in text


def test_syrk_means_auto_where_it_does_not_apply(monkeypatch):
    monkeypatch.delenv("NST_KERNELS", raising=False)
    x = torch.zeros(1, 2, 3, 3)
    assert choose_backend(x, "syrk", syrk=True) == "torch"  # CPU tensor
    assert choose_backend(x, "syrk") == "torch"  # an op without a SYRK path
    monkeypatch.setenv("NST_KERNELS", "syrk")
    assert choose_backend(x, syrk=True) == "torch"
    y = torch.randn(1, 3, 4, 5)
    torch.testing.assert_close(gram(y, backend="syrk"), gram_ref(y))


def test_unknown_backend_lists_syrk(monkeypatch):
    monkeypatch.setenv("NST_KERNELS", "cublas")
    with pytest.raises(ValueError, match="syrk"):
        choose_backend(torch.zeros(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_unavailable_without_cuda():
    ok, why = _syrk.available()
    assert not ok and "CUDA" in why
    with pytest.raises(_syrk.SyrkUnavailable, match="CUDA"):
        _syrk.gram_syrk(torch.zeros(1, 2, 3), 1.0)


def test_failure_is_remembered(monkeypatch):
    calls = []

    def failing_build():
        calls.append(1)
        raise _syrk.SyrkUnavailable("no compiler")

    monkeypatch.setattr(_syrk, "build_or_load", failing_build)
    _syrk.load_once.cache_clear()
    try:
        for _ in range(3):
            assert _syrk.available() == (False, "no compiler")
        assert len(calls) == 1
    finally:
        _syrk.load_once.cache_clear()


def test_build_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert _syrk.build_dir() == tmp_path / "ext"
    monkeypatch.delenv("NST_EXTENSIONS_DIR")
    assert torch.__version__.split("+")[0] in str(_syrk.build_dir())


_HEADERS = ("cuda_runtime_api.h", "crt/host_defines.h", "cublas_v2.h", "cublas_api.h", "cublasLt.h",
            "cusparse.h", "cusolverDn.h", "nv/target")


def _tree(root, major, headers=_HEADERS, libs=("cudart", "cublas"), lib="lib", versioned=True):
    """A CUDA header folder ``root/include`` of CUDA ``major`` with ``root/<lib>`` beside it."""
    (root / "include" / "crt").mkdir(parents=True)
    (root / "include" / "nv").mkdir()
    (root / lib).mkdir()
    for h in headers:
        text = {"cuda_runtime_api.h": f"#define CUDART_VERSION {major}000\n",
                "cublas_api.h": f"#define CUBLAS_VER_MAJOR {major}\n"}.get(h, "")
        (root / "include" / h).write_text(text)
    for stem in libs:
        (root / lib / (f"lib{stem}.so.{major}" if versioned else f"lib{stem}.so")).write_text("")
    return root


@pytest.fixture
def cuda_env(monkeypatch, tmp_path):
    """No toolkit, no pip packages, torch of CUDA 13; tests add what they need."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(_syrk, "DEFAULT_TOOLKIT", None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    nvidia = types.ModuleType("nvidia")
    nvidia.__path__ = [str(tmp_path / "nvidia")]
    (tmp_path / "nvidia").mkdir()
    monkeypatch.setitem(sys.modules, "nvidia", nvidia)
    return tmp_path


def test_build_flags_from_cuda13_pip_packages(cuda_env):
    """CUDA 13's pip packages share one folder, ``nvidia/cu13``, with versioned libraries only."""
    cu13 = _tree(cuda_env / "nvidia" / "cu13", 13)
    args = _syrk.build_args()
    assert args["extra_include_paths"] == [str(cu13 / "include")]
    flags = args["extra_ldflags"]
    assert "-l:libcublas.so.13" in flags and "-l:libcudart.so.13" in flags
    assert f"-Wl,-rpath,{cu13 / 'lib'}" in flags and "-ltorch_cuda" in flags and "-lc10_cuda" in flags


def test_build_flags_from_cuda12_pip_packages(cuda_env, monkeypatch):
    """CUDA 12's pip packages: one folder per library, the compiler headers in ``cuda_nvcc``."""
    monkeypatch.setattr(torch.version, "cuda", "12.9")
    nv = cuda_env / "nvidia"
    _tree(nv / "cuda_runtime", 12, headers=("cuda_runtime_api.h",), libs=("cudart",))
    _tree(nv / "cuda_nvcc", 12, headers=("crt/host_defines.h",), libs=())
    _tree(nv / "cuda_cccl", 12, headers=("nv/target",), libs=())
    _tree(nv / "cublas", 12, headers=("cublas_v2.h", "cublas_api.h", "cublasLt.h"), libs=("cublas",))
    _tree(nv / "cusparse", 12, headers=("cusparse.h",), libs=())
    _tree(nv / "cusolver", 12, headers=("cusolverDn.h",), libs=())
    args = _syrk.build_args()
    # in the pip packages' (sorted) order, which is also the order the compiler searches them
    assert args["extra_include_paths"] == [str(nv / p / "include") for p in
                                           ("cublas", "cuda_cccl", "cuda_nvcc", "cuda_runtime", "cusolver", "cusparse")]
    flags = args["extra_ldflags"]
    assert f"-L{nv / 'cublas' / 'lib'}" in flags and "-l:libcublas.so.12" in flags
    assert f"-L{nv / 'cuda_runtime' / 'lib'}" in flags and "-l:libcudart.so.12" in flags


def test_toolkit_without_cublas_is_completed_by_pip_packages(cuda_env, monkeypatch):
    """A toolkit of nvcc and the runtime alone (no cuBLAS): its headers first, cuBLAS from pip."""
    from torch.utils import cpp_extension

    kit = _tree(cuda_env / "cuda", 13, headers=("cuda_runtime_api.h", "crt/host_defines.h"), libs=("cudart",),
                lib="lib64", versioned=False)
    (kit / "include" / "cccl" / "nv").mkdir(parents=True)  # CUDA 13's toolkit layout of CCCL
    (kit / "include" / "cccl" / "nv" / "target").write_text("")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(kit))
    cu13 = _tree(cuda_env / "nvidia" / "cu13", 13)
    args = _syrk.build_args()
    assert args["extra_include_paths"] == [str(kit / "include"), str(kit / "include" / "cccl"), str(cu13 / "include")]
    flags = args["extra_ldflags"]
    assert flags[flags.index("-l:libcudart.so") - 1] == f"-Wl,-rpath,{kit / 'lib64'}"
    assert flags[flags.index("-l:libcublas.so.13") - 1] == f"-Wl,-rpath,{cu13 / 'lib'}"


def test_headers_of_another_cuda_major_are_skipped(cuda_env, monkeypatch):
    """A CUDA 12 toolkit beside torch's CUDA 13 pip packages: the toolkit is passed over."""
    from torch.utils import cpp_extension

    kit = _tree(cuda_env / "cuda-12", 12, lib="lib64", versioned=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(kit))
    cu13 = _tree(cuda_env / "nvidia" / "cu13", 13)
    assert _syrk.build_args()["extra_include_paths"] == [str(cu13 / "include")]
    # with nothing of CUDA 13 the error says what was found and why it was skipped
    import shutil

    shutil.rmtree(cu13)
    with pytest.raises(_syrk.SyrkUnavailable, match=r"cuda_runtime_api.h .*CUDA 13.0.*skipped .*cuda-12.*\(CUDA 12\)"):
        _syrk.build_args()


def test_build_flags_name_what_is_missing(cuda_env):
    with pytest.raises(_syrk.SyrkUnavailable, match="no CUDA toolkit, no nvidia pip packages"):
        _syrk.build_args()
    _tree(cuda_env / "nvidia" / "cu13", 13, headers=[h for h in _HEADERS if h != "crt/host_defines.h"])
    with pytest.raises(_syrk.SyrkUnavailable, match=r"crt/host_defines.h .*nvidia-cuda-crt"):
        _syrk.build_args()


def test_missing_library_is_named(cuda_env):
    _tree(cuda_env / "nvidia" / "cu13", 13, libs=("cudart",))
    with pytest.raises(_syrk.SyrkUnavailable, match="no libcublas.so beside the CUDA headers"):
        _syrk.build_args()


def test_cpu_torch_cannot_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(_syrk.SyrkUnavailable, match="CUDA build of torch"):
        _syrk.compile_extension()


@pytest.mark.skipif(not torch.version.cuda, reason="needs a CUDA build of torch (no device needed)")
def test_extension_compiles_links_and_imports():
    """Where torch is a CUDA build, the extension builds and loads, device or not (the first build
    takes about a minute; later runs find it in the build folder)."""
    try:
        module = _syrk.compile_extension()
    except _syrk.SyrkUnavailable as exc:
        if "not found" in str(exc) or "needs ninja" in str(exc):
            pytest.skip(str(exc))  # no CUDA headers or ninja here: nothing to build with
        raise
    assert callable(module.gram_syrk)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        module.gram_syrk(torch.zeros(1, 2, 3), 1.0)


# --- CUDA ------------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 64, 17, 9), (1, 513, 6, 5), (1, 4, 0, 3)])
def test_syrk_matches_reference(shape, dtype):
    ok, why = _syrk.available()
    if not ok:
        pytest.skip(why)
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(shape, device="cuda", dtype=dtype)
    for norm in ("hw", "chw", "none"):
        g = gram(x, norm, backend="syrk")
        assert g.dtype == dtype
        torch.testing.assert_close(g, gram_ref(x, norm), rtol=1e-5, atol=1e-5)
        assert torch.equal(g, g.transpose(1, 2))


@needs_cuda
def test_syrk_gradients_and_loss():
    ok, why = _syrk.available()
    if not ok:
        pytest.skip(why)
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(2, 64, 13, 11, device="cuda", requires_grad=True)
    dg = torch.randn(2, 64, 64, device="cuda")
    (gram(x, backend="syrk") * dg).sum().backward()
    got = x.grad.clone()
    x.grad = None
    (gram_ref(x) * dg).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-4, atol=1e-5)
    a = gram_ref(torch.randn(2, 64, 13, 11, device="cuda"))[0]
    loss = gram_loss(x, a, scale=0.25, backend="syrk")
    ref = gram_loss_ref(x, a, scale=0.25)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    (gx,) = torch.autograd.grad(loss, x)
    (rx,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-6)


@needs_cuda
def test_syrk_precision_modes():
    """``ieee`` (and ``tf32x3``) run in full float32 whatever torch's TF32 flag; ``tf32`` within TF32's error."""
    ok, why = _syrk.available()
    if not ok:
        pytest.skip(why)
    x = torch.randn(1, 64, 64, 64, device="cuda")
    ref = gram_ref(x.double()).float()
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # torch's handle in TF32 mode: ours must override it
        for precision in ("ieee", "tf32x3"):
            torch.testing.assert_close(gram(x, backend="syrk", precision=precision), ref, rtol=1e-5, atol=1e-5)
        # whether cuBLAS's SYRK takes the tensor cores in TF32 mode is cuBLAS's choice: only bounded here
        torch.testing.assert_close(gram(x, backend="syrk", precision="tf32"), ref, rtol=1e-2, atol=1e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_build_failure_names_the_first_error_and_keeps_the_log(tmp_path):
    # as torch's cpp_extension.load words it: its own prefix, then ninja's output
    log = ("Error building extension 'nst_gram_syrk': [1/2] c++ -MMD -MF gram_syrk.o.d -c gram_syrk.cpp\n"
           "FAILED: gram_syrk.o\nc++ -MMD -c gram_syrk.cpp -o gram_syrk.o\n"
           "gram_syrk.cpp:12:10: fatal error: cublas_v2.h: No such file or directory\n"
           "compilation terminated.\nninja: build stopped: subcommand failed.\n")
    line = _syrk.build_failure(log, tmp_path)
    assert "cublas_v2.h: No such file or directory" in line and "ninja: build stopped" not in line
    assert "Error building extension" not in line
    log_path = tmp_path / "build-error.log"
    assert log_path.read_text() == log and str(log_path) in line
    assert "\n" not in line
    # a log without a recognizable error line: its last line; an unwritable folder: no log path
    line = _syrk.build_failure("something odd\nlast words\n", tmp_path / "missing" / "dir")
    assert line.endswith("last words")
    link = "Error building extension 'x': [2/2] c++ gram_syrk.o -o x.so\n/usr/bin/ld: cannot find -lcublas\n"
    assert _syrk.build_failure(link, tmp_path).endswith(f"/usr/bin/ld: cannot find -lcublas (full log: {log_path})")
