"""Gram matrix and fused Gram style loss: Triton (interpreter without a GPU) against the reference."""

from __future__ import annotations

import pytest
import torch
from nst_deploy.kernels import gram, gram_loss, gram_loss_ref, gram_ref, has_triton
from nst_deploy.kernels.gram import gram_forward

needs_triton = pytest.mark.skipif(not has_triton(), reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, C, H, W): C = 3, 64, 513; odd H and W; K = H*W below, at and above the tile size
SHAPES = [(1, 3, 5, 7), (2, 64, 9, 11), (1, 65, 3, 3), (1, 513, 3, 5), (2, 17, 31, 33), (1, 40, 1, 1)]


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE, dtype)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", ["hw", "chw", "none"])
def test_triton_gram_matches_reference(shape, normalize):
    x = _x(shape)
    ref = gram_ref(x.double(), normalize).float()
    out = gram(x, normalize, backend="triton", precision="ieee")
    assert out.shape == (shape[0], shape[1], shape[1]) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(out, out.transpose(1, 2), rtol=0, atol=0)  # mirrored exactly


@needs_triton
def test_triton_gram_split_k_and_strides():
    x = _x((2, 24, 40, 50))  # K = 2000: several K splits
    ref = gram_ref(x)
    torch.testing.assert_close(gram_forward(x), ref, rtol=1e-5, atol=1e-4)
    xt = _x((2, 50, 40, 24)).permute(0, 3, 2, 1)  # a non-contiguous view
    torch.testing.assert_close(gram(xt, backend="triton"), gram_ref(xt), rtol=1e-5, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 64, 9, 11), (1, 513, 3, 5)])
def test_triton_gram_gradient(shape):
    x = _x(shape).requires_grad_(True)
    dg = _x((shape[0], shape[1], shape[1]), seed=1)
    (gx,) = torch.autograd.grad((gram(x, backend="triton") * dg).sum(), x)
    xr = x.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad((gram_ref(xr) * dg).sum(), xr)
    torch.testing.assert_close(gx, gr, rtol=1e-5, atol=1e-5 * gr.abs().max().item())


@needs_triton
@pytest.mark.parametrize("targets", [1, 3])
def test_fused_loss_matches_reference(targets):
    x = _x((2, 40, 7, 9)).requires_grad_(True)
    a = _x((targets, 40, 40), seed=2)  # not symmetric: the backward must not assume it
    w = torch.rand(targets, generator=torch.Generator().manual_seed(3))
    ref = gram_loss_ref(x, a, w, scale=0.1)
    (gr,) = torch.autograd.grad(ref, x)
    for backend in ("torch", "triton"):
        out = gram_loss(x, a, w, scale=0.1, backend=backend)
        (gx,) = torch.autograd.grad(out, x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(gx, gr, rtol=1e-5, atol=1e-6 * gr.abs().max().item())


def test_fused_loss_second_call_and_errors():
    x = _x((1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"\(C, C\) or \(T, C, C\)"):
        gram_loss(x, torch.zeros(7, 7))
    with pytest.raises(ValueError, match="2 weights for 1"):
        gram_loss(x, torch.zeros(8, 8), weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="unknown Gram normalization"):
        gram(x, "cw")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gram(x[0])


def test_reference_gradcheck_float64():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 5, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: gram_ref(t, "chw"), (x,))
    assert torch.autograd.gradcheck(lambda t: gram_loss(t, a, [0.3, 0.7], scale=0.2, backend="torch"), (x,))


def test_closed_form_and_invariance():
    x = torch.ones(1, 4, 6, 5)
    torch.testing.assert_close(gram_ref(x, "none"), torch.full((1, 4, 4), 30.0))
    torch.testing.assert_close(gram_ref(x, "hw"), torch.ones(1, 4, 4))
    # the H*W-normalized Gram of a nearest-upsampled map equals the original's
    y = torch.randn(1, 6, 5, 7)
    up = torch.nn.functional.interpolate(y, scale_factor=3, mode="nearest")
    torch.testing.assert_close(gram_ref(up, "hw"), gram_ref(y, "hw"), rtol=1e-5, atol=1e-5)
    # permuting positions leaves the Gram unchanged
    perm = torch.randperm(35)
    yp = y.flatten(2)[..., perm].reshape(1, 6, 5, 7)
    torch.testing.assert_close(gram_ref(yp), gram_ref(y), rtol=1e-5, atol=1e-6)


@needs_triton
def test_empty_inputs():
    assert gram(torch.zeros(0, 4, 3, 3, device=DEVICE), backend="triton").shape == (0, 4, 4)
    assert gram(torch.zeros(2, 0, 3, 3, device=DEVICE), backend="triton").shape == (2, 0, 0)
    # an empty map (H*W = 0): the empty sum, 0, from the reference and the kernel alike (not 0 / 0)
    x = torch.zeros(1, 4, 0, 3, device=DEVICE)
    for norm in ("hw", "chw", "none"):
        assert torch.equal(gram(x, norm, backend="torch"), torch.zeros(1, 4, 4, device=DEVICE))
        assert torch.equal(gram(x, norm, backend="triton"), torch.zeros(1, 4, 4, device=DEVICE))


@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_on_gpu(dtype):
    x = _x((2, 256, 32, 48), dtype).requires_grad_(True)
    ref = gram_ref(x.detach().float())
    out = gram(x, backend="triton")
    assert out.dtype == torch.float32
    # error vs the fp32 reference no more than twice torch's own half-precision error, plus atol
    own = (gram_ref(x.detach()).float() - ref).abs().max()
    assert (out - ref).abs().max() <= 2 * own + 1e-3
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.dtype == dtype


@needs_cuda
@needs_triton
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_precision_modes_on_gpu(precision):
    x = _x((1, 128, 64, 64))
    ref = gram_ref(x.double()).float()
    tol = {"ieee": 1e-5, "tf32x3": 1e-5, "tf32": 5e-3}[precision]
    torch.testing.assert_close(gram(x, backend="triton", precision=precision), ref, rtol=tol,
                               atol=tol * ref.abs().max().item())


@needs_triton
def test_optimization_loop_runs_on_the_fused_kernels(monkeypatch):
    """The loss dispatches to the Triton kernels with no change to the loop: same steps, same losses."""
    from nst_deploy.images import load_image
    from nst_deploy.optimize import stylize

    from ..conftest import DATA

    c, s = load_image(DATA / "chelsea.jpg", size=32), load_image(DATA / "starry_night.jpg", size=32)
    runs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("NST_KERNELS", backend)
        log = []
        runs[backend] = (stylize(c, s, size=32, steps=3, callback=lambda i, log=log: log.append(i.terms.total)), log)
    (a, la), (b, lb) = runs["torch"], runs["triton"]
    assert la == pytest.approx(lb, rel=1e-4)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)


@needs_triton
def test_warps_knob_reaches_the_launch(monkeypatch):
    import importlib

    from nst_deploy.kernels import _gram_triton

    module = importlib.import_module("nst_deploy.kernels.gram")
    warps = []
    real = _gram_triton.launch_gram
    monkeypatch.setattr(_gram_triton, "launch_gram", lambda *a, **kw: warps.append(kw["num_warps"]) or real(*a, **kw))
    x = torch.randn(1, 64, 5, 6).to(DEVICE)
    for knob in (None, 4):
        monkeypatch.setattr(module, "GRAM_WARPS", knob)
        torch.testing.assert_close(gram_forward(x), gram_ref(x), rtol=1e-5, atol=1e-5)
    assert warps == [8, 4]


@needs_triton
def test_fp16_kernel_path():
    """Half inputs: fp16 tiles into the dot, fp32 accumulation and output (in the interpreter too; bf16,
    whose dots the interpreter does not support (triton-lang/triton#11584), only on a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 70, 9, 7, generator=torch.Generator().manual_seed(2)).to(device, torch.float16)
    ref = gram_ref(x.double()).float()
    got = gram_forward(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    torch.testing.assert_close(got, got.transpose(1, 2), rtol=0, atol=0)
    a = gram_ref(torch.randn(1, 70, 9, 7, generator=torch.Generator().manual_seed(3)).to(device))[0]
    loss = gram_loss(x, a, backend="triton")
    torch.testing.assert_close(loss.double(), gram_loss_ref(x.double(), a.double()), rtol=1e-3, atol=0)
