"""Kernel dispatch rules and the lean-import promise."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from nst_deploy.kernels import choose_backend, has_triton, is_exporting


def test_auto_on_cpu_is_torch(monkeypatch):
    monkeypatch.delenv("NST_KERNELS", raising=False)
    assert choose_backend(torch.zeros(1)) == "torch"


def test_explicit_and_environment_override(monkeypatch):
    x = torch.zeros(1)
    assert choose_backend(x, "torch") == "torch"
    monkeypatch.setenv("NST_KERNELS", "torch")
    assert choose_backend(x) == "torch"
    monkeypatch.setenv("NST_KERNELS", "bogus")
    with pytest.raises(ValueError, match="NST_KERNELS"):
        choose_backend(x)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        choose_backend(x, "cuda")


@pytest.mark.skipif(not has_triton(), reason="triton is not installed")
def test_triton_forced(monkeypatch):
    monkeypatch.setenv("NST_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_backend(torch.zeros(1)) == "triton"


@pytest.mark.skipif(not has_triton(), reason="triton is not installed")
def test_triton_on_a_cpu_tensor_needs_the_interpreter(monkeypatch):
    """Outside the interpreter Triton's launcher would fail on a CPU pointer with its own words."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="on a cpu tensor: the Triton kernels run on CUDA tensors"):
        choose_backend(torch.zeros(1), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        choose_backend(torch.zeros(1), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_backend(torch.zeros(1), "triton") == "triton"


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_reference_while_exporting():
    seen = []

    def f(x):
        seen.append((is_exporting(), choose_backend(x, "auto")))
        return x + 1

    torch.jit.trace(f, torch.zeros(2))
    assert seen and seen[0] == (True, "torch")
    assert not is_exporting()


def test_import_is_lean():
    code = (
        "import sys, nst_deploy, nst_deploy.kernels, nst_deploy.export, nst_deploy.lossnets\n"
        "import torch\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialized'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_inputs_beyond_32_bit_offsets_take_the_reference(monkeypatch):
    from nst_deploy.kernels._dispatch import too_large_for_kernels

    monkeypatch.delenv("NST_KERNELS", raising=False)
    big = torch.empty(2, 64, 6000, 6000, device="meta")  # one image: 2.3e9 elements
    assert too_large_for_kernels(big) and not too_large_for_kernels(torch.empty(4, 64, 4096, 4096, device="meta"))
    assert choose_backend(big) == "torch"
    if has_triton():
        with pytest.raises(ValueError, match="32-bit"):
            choose_backend(big, "triton")
