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

    monkeypatch.setattr(_syrk, "_build", failing_build)
    _syrk._load_once.cache_clear()
    try:
        for _ in range(3):
            assert _syrk.available() == (False, "no compiler")
        assert len(calls) == 1
    finally:
        _syrk._load_once.cache_clear()


def test_build_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert _syrk.build_dir() == tmp_path / "ext"
    monkeypatch.delenv("NST_EXTENSIONS_DIR")
    assert torch.__version__.split("+")[0] in str(_syrk.build_dir())


def _fake_nvidia(monkeypatch, tmp_path, headers=("cuda_runtime_api.h", "cublas_v2.h"),
                 libs=("libcublas.so.12", "libcudart.so.12")):
    for pkg, names in (("cublas", [h for h in headers if "cublas" in h]),
                       ("cuda_runtime", [h for h in headers if "cublas" not in h])):
        (tmp_path / pkg / "include").mkdir(parents=True)
        (tmp_path / pkg / "lib").mkdir()
        for h in names:
            (tmp_path / pkg / "include" / h).write_text("")
    for lib in libs:
        folder = "cublas" if "cublas" in lib else "cuda_runtime"
        (tmp_path / folder / "lib" / lib).write_text("")
    module = types.ModuleType("nvidia")
    module.__path__ = [str(tmp_path)]
    monkeypatch.setitem(sys.modules, "nvidia", module)
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)


def test_build_flags_from_nvidia_pip_packages(monkeypatch, tmp_path):
    _fake_nvidia(monkeypatch, tmp_path)
    args = _syrk._build_args()
    assert args["with_cuda"] is False
    assert sorted(args["extra_include_paths"]) == [str(tmp_path / "cublas" / "include"),
                                                  str(tmp_path / "cuda_runtime" / "include")]
    flags = args["extra_ldflags"]
    assert "-l:libcublas.so.12" in flags and "-l:libcudart.so.12" in flags
    assert "-ltorch_cuda" in flags and f"-L{tmp_path / 'cublas' / 'lib'}" in flags


def test_build_flags_name_what_is_missing(monkeypatch, tmp_path):
    _fake_nvidia(monkeypatch, tmp_path, headers=("cuda_runtime_api.h",))
    with pytest.raises(_syrk.SyrkUnavailable, match="cublas_v2.h"):
        _syrk._build_args()


def test_build_flags_with_toolkit(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    assert _syrk._build_args() == {"with_cuda": True, "extra_ldflags": ["-lcublas"]}


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
