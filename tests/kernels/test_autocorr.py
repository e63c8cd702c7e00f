"""Per-channel spatial autocorrelation: reference, FFT path, direct Triton kernel, Parseval loss.

Without a GPU the Triton kernels run in the interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py``) on the CPU, at small shapes; bf16 runs only on CUDA.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from nst_deploy.kernels import has_triton
from nst_deploy.kernels.autocorr import (
    DIRECT_MAX_HW,
    AutocorrSpectrum,
    autocorr,
    autocorr_fft,
    autocorr_ref,
    autocorr_spectrum,
    autocorr_style_loss,
    autocorr_style_loss_ref,
    choose_method,
    fft_shape_for,
    good_fft_size,
    require_same_feature_size,
)
from nst_deploy.kernels.gram import gram_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not has_triton(), reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# Odd shapes: C = 3, 64, 513 (at tiny H*W for the interpreter), odd and mixed H, W.
SHAPES = [(1, 3, 5, 7), (2, 64, 3, 5), (1, 513, 3, 3), (2, 3, 1, 4), (1, 3, 6, 1)]


def _rand(*shape, dtype=torch.float32, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def _brute(x: torch.Tensor, normalize: str = "hw") -> torch.Tensor:
    """The definition, literally: a loop over lags and positions (tiny sizes only)."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, 2 * h - 1, 2 * w - 1, dtype=torch.float64)
    xd = x.double().cpu()
    for dy in range(-(h - 1), h):
        for dx in range(-(w - 1), w):
            acc = torch.zeros(b, c, dtype=torch.float64)
            for y in range(h):
                for xx in range(w):
                    if 0 <= y + dy < h and 0 <= xx + dx < w:
                        acc += xd[:, :, y, xx] * xd[:, :, y + dy, xx + dx]
            out[:, :, dy + h - 1, dx + w - 1] = acc
    return out / (h * w) if normalize == "hw" else out


def _ref64(x: torch.Tensor, normalize: str = "hw") -> torch.Tensor:
    return autocorr_ref(x.double(), normalize)


def _grad(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x.detach().clone().requires_grad_(True)
    out = fn(xr)
    (gx,) = torch.autograd.grad(out, xr, g.to(device=out.device, dtype=out.dtype))
    return out.detach(), gx


# ------------------------------------------------------------------------------------------ helpers


def test_good_fft_size_and_shape():
    for n in range(1, 200):
        m = good_fft_size(n)
        assert m >= n
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1
        assert all(not _smooth(j) for j in range(n, m))
        assert good_fft_size(n, even=True) % 2 == 0
    assert good_fft_size(7) == 8 and good_fft_size(11) == 12 and good_fft_size(13, even=True) == 16
    nh, nw = fft_shape_for(5, 7)
    assert nh >= 9 and nw >= 13 and nw % 2 == 0


def _smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def test_choose_method_threshold():
    assert choose_method(16, 16) == "direct"
    assert choose_method(1, DIRECT_MAX_HW) == "direct"
    assert choose_method(17, 16) == "fft"
    assert choose_method(3, 3, "fft") == "fft" and choose_method(64, 64, "direct") == "direct"
    with pytest.raises(ValueError, match="unknown autocorrelation method"):
        choose_method(3, 3, "conv")


def test_errors():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        autocorr_ref(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="normalization"):
        autocorr(torch.zeros(1, 1, 2, 2), normalize="chw")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        autocorr(torch.zeros(1, 1, 2, 2), backend="cuda")
    with pytest.raises(ValueError, match="too small"):
        autocorr_fft(torch.zeros(1, 1, 4, 4), fft_shape=(6, 8))


def test_import_does_not_import_triton():
    code = (
        "import importlib, sys, torch\n"
        "a = importlib.import_module('nst_deploy.kernels.autocorr')  # the package re-exports a function of that name\n"
        "importlib.import_module('nst_deploy.kernels.local_gram')\n"
        "a.autocorr(torch.randn(1, 2, 3, 3), backend='torch')\n"
        "a.autocorr_style_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), backend='torch')\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# -------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("normalize", ["hw", "none"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (1, 2, 4, 1), (1, 1, 1, 1)])
def test_ref_matches_bruteforce(shape, normalize):
    x = _rand(*shape, dtype=torch.float64, device="cpu")
    torch.testing.assert_close(autocorr_ref(x, normalize), _brute(x, normalize), rtol=1e-12, atol=1e-12)


def test_ref_gradcheck_float64():
    x = _rand(1, 2, 3, 4, dtype=torch.float64, device="cpu").requires_grad_(True)
    assert torch.autograd.gradcheck(autocorr_ref, (x,))
    y = _rand(1, 1, 2, 3, dtype=torch.float64, seed=1, device="cpu").requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: autocorr_ref(t, "none"), (y,))


def test_fft_gradcheck_float64():
    x = _rand(1, 2, 3, 4, dtype=torch.float64, device="cpu").requires_grad_(True)
    assert torch.autograd.gradcheck(autocorr_fft, (x,))


def test_ref_half_inputs_return_fp32():
    x = _rand(1, 2, 3, 3, dtype=torch.bfloat16, device="cpu")
    out = autocorr_ref(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, autocorr_ref(x.float()))


def test_centre_lag_is_gram_diagonal_and_symmetry():
    x = _rand(2, 5, 4, 7, dtype=torch.float64, device="cpu")
    r = autocorr_ref(x)
    torch.testing.assert_close(r[:, :, 3, 6], torch.diagonal(gram_ref(x, "hw"), dim1=1, dim2=2))
    torch.testing.assert_close(r, r.flip(-1, -2))


# ------------------------------------------------------------------------------------- FFT path


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_matches_ref_values_and_grads(shape):
    x = _rand(*shape, device=DEVICE)
    g = _rand(shape[0], shape[1], 2 * shape[2] - 1, 2 * shape[3] - 1, seed=1, device=DEVICE)
    out, gx = _grad(autocorr_fft, x, g)
    ref, gref = _grad(_ref64, x, g)
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, gref.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fft_shape", [(9, 13), (10, 14), (16, 15)])
def test_fft_any_large_enough_grid(fft_shape):
    x = _rand(2, 3, 5, 7, dtype=torch.float64, device="cpu")
    torch.testing.assert_close(autocorr_fft(x, fft_shape=fft_shape), autocorr_ref(x))


def test_auto_picks_fft_for_large_maps():
    x = _rand(1, 2, 17, 17, dtype=torch.float64, device="cpu")
    torch.testing.assert_close(autocorr(x, backend="torch"), autocorr_ref(x))


# ---------------------------------------------------------------------------- direct Triton kernel


@needs_triton
@pytest.mark.parametrize(("shape", "normalize"), [(s, "hw") for s in SHAPES] + [((2, 3, 4, 3), "none")])
def test_direct_triton_matches_ref(shape, normalize):
    x = _rand(*shape, device=DEVICE)
    g = _rand(shape[0], shape[1], 2 * shape[2] - 1, 2 * shape[3] - 1, seed=2, device=DEVICE)
    out, gx = _grad(lambda t: autocorr(t, normalize, method="direct", backend="triton"), x, g)
    ref, gref = _grad(lambda t: _ref64(t, normalize), x, g)
    assert out.dtype == torch.float32 and gx.dtype == torch.float32
    scale = 1.0 if normalize == "hw" else float(shape[2] * shape[3])
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(gx, gref.float(), rtol=1e-4, atol=1e-4 * scale)


@needs_triton
def test_direct_triton_block_loops():
    # 9 x 11 map: 323 mirrored lags and 99 positions, several blocks of each in both passes
    x = _rand(1, 2, 9, 11, device=DEVICE)
    g = _rand(1, 2, 17, 21, seed=3, device=DEVICE)
    out, gx = _grad(lambda t: autocorr(t, method="direct", backend="triton"), x, g)
    ref, gref = _grad(_ref64, x, g)
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, gref.float(), rtol=1e-4, atol=1e-4)


@needs_triton
def test_direct_triton_gradcheck_float64():
    x = _rand(1, 2, 2, 3, dtype=torch.float64, device=DEVICE).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: autocorr(t, method="direct", backend="triton"), (x,))


@needs_triton
def test_direct_triton_empty_batch():
    out = autocorr(torch.zeros(0, 3, 4, 5, device=DEVICE), method="direct", backend="triton")
    assert out.shape == (0, 3, 7, 9)


# ---------------------------------------------------------------------------- closed forms, invariance

METHODS = [("torch", "direct"), ("torch", "fft")] + ([("triton", "direct")] if has_triton() else [])


@pytest.mark.parametrize(("backend", "method"), METHODS)
def test_impulse_gives_impulse_at_lag_zero(backend, method):
    h, w = 5, 4
    x = torch.zeros(1, 3, h, w, dtype=torch.float64, device=DEVICE)
    x[0, 0, 1, 2] = 1.0
    x[0, 1, 4, 0] = -2.0
    r = autocorr(x, normalize="none", method=method, backend=backend)
    expected = torch.zeros_like(r)
    expected[0, 0, h - 1, w - 1] = 1.0
    expected[0, 1, h - 1, w - 1] = 4.0
    torch.testing.assert_close(r, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("backend", "method"), METHODS)
def test_constant_map_gives_pyramid(backend, method):
    h, w, c = 5, 3, 2.5
    x = torch.full((1, 2, h, w), c, dtype=torch.float64, device=DEVICE)
    r = autocorr(x, method=method, backend=backend)
    dy = torch.arange(-(h - 1), h, dtype=torch.float64, device=DEVICE)
    dx = torch.arange(-(w - 1), w, dtype=torch.float64, device=DEVICE)
    pyramid = c * c * (h - dy.abs())[:, None] * (w - dx.abs())[None, :] / (h * w)
    torch.testing.assert_close(r, pyramid.expand_as(r), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("backend", "method"), METHODS)
def test_translation_invariance_inside_zero_padding(backend, method):
    # a 3 x 2 pattern anywhere inside a zero 7 x 6 canvas has the same (unnormalized) autocorrelation
    pattern = _rand(1, 3, 3, 2, dtype=torch.float64, device=DEVICE)
    outs = []
    for y, x in [(0, 0), (4, 4), (2, 1), (4, 0)]:
        canvas = torch.zeros(1, 3, 7, 6, dtype=torch.float64, device=DEVICE)
        canvas[..., y : y + 3, x : x + 2] = pattern
        outs.append(autocorr(canvas, normalize="none", method=method, backend=backend))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-10, atol=1e-12)
    # and it is the pattern's own autocorrelation, centred in the larger window
    small = autocorr_ref(pattern, "none")
    torch.testing.assert_close(outs[0][..., 6 - 2 : 6 + 3, 5 - 1 : 5 + 2], small, rtol=1e-10, atol=1e-12)


def test_sign_and_scale():
    x = _rand(1, 3, 4, 5, dtype=torch.float64, device="cpu")
    torch.testing.assert_close(autocorr_ref(-x), autocorr_ref(x))
    torch.testing.assert_close(autocorr_ref(3 * x), 9 * autocorr_ref(x))


# ------------------------------------------------------------------------------ Parseval style loss

LOSS_BACKENDS = ["torch"] + (["triton"] if has_triton() else [])


LOSS_CASES = [
    ((2, 3, 5, 7), "hw"),
    ((2, 3, 5, 7), "none"),
    ((1, 64, 3, 4), "hw"),
    ((1, 513, 3, 3), "hw"),
    ((2, 3, 1, 6), "hw"),
]


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@pytest.mark.parametrize(("shape", "normalize"), LOSS_CASES)
def test_parseval_loss_matches_lag_domain(shape, normalize, backend):
    x = _rand(*shape, dtype=torch.float64, device=DEVICE)
    s = _rand(1, *shape[1:], dtype=torch.float64, seed=5, device=DEVICE)
    loss, gx = _grad(lambda t: autocorr_style_loss(t, s, normalize, backend=backend), x, torch.tensor(1.0))
    ref, gref = _grad(lambda t: autocorr_style_loss_ref(t, s, normalize), x, torch.tensor(1.0))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_parseval_loss_fp32(backend):
    x = _rand(2, 64, 5, 7, device=DEVICE)
    s = _rand(1, 64, 5, 7, seed=6, device=DEVICE)
    loss, gx = _grad(lambda t: autocorr_style_loss(t, s, backend=backend), x, torch.tensor(1.0))
    ref, gref = _grad(lambda t: autocorr_style_loss_ref(t.double(), s.double()), x, torch.tensor(1.0))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, gref.float(), rtol=1e-4, atol=1e-4 * gref.abs().max().item())


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@pytest.mark.parametrize("fft_shape", [(9, 13), (9, 14), (10, 15), (16, 16)])
def test_parseval_half_spectrum_weights_any_grid(fft_shape, backend):
    # odd NW has no Nyquist column, even NW has one: the weighting must be exact for both
    x = _rand(2, 3, 5, 7, dtype=torch.float64, device=DEVICE)
    s = _rand(2, 3, 5, 7, dtype=torch.float64, seed=7, device=DEVICE)
    target = autocorr_spectrum(s, fft_shape=fft_shape)
    loss, gx = _grad(lambda t: autocorr_style_loss(t, target, backend=backend), x, torch.tensor(1.0))
    ref, gref = _grad(lambda t: autocorr_style_loss_ref(t, s), x, torch.tensor(1.0))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_loss_reduction_batch_broadcast_and_zero(backend):
    x = _rand(3, 4, 4, 5, dtype=torch.float64, device=DEVICE)
    s = _rand(1, 4, 4, 5, dtype=torch.float64, seed=8, device=DEVICE)
    target = autocorr_spectrum(s)
    total = autocorr_style_loss(x, target, backend=backend)
    per = sum(autocorr_style_loss(x[i : i + 1], target, backend=backend) for i in range(3))
    torch.testing.assert_close(total, per)
    mean = autocorr_style_loss(x, target, reduction="mean", backend=backend)
    torch.testing.assert_close(mean, total / (3 * 4 * 7 * 9))
    xr = x.detach().clone().requires_grad_(True)
    same = autocorr_style_loss(xr, autocorr_spectrum(x), backend=backend)
    same.backward()
    assert abs(same.item()) < 1e-20 and xr.grad.abs().max().item() < 1e-12
    # the loss depends only on the autocorrelation: a translated pattern has the same loss
    canvas = torch.zeros(1, 2, 6, 6, dtype=torch.float64, device=DEVICE)
    moved = canvas.clone()
    canvas[..., :3, :3] = x[:1, :2, :3, :3]
    moved[..., 2:5, 3:6] = x[:1, :2, :3, :3]
    tgt = autocorr_spectrum(_rand(1, 2, 6, 6, dtype=torch.float64, device=DEVICE))
    torch.testing.assert_close(
        autocorr_style_loss(canvas, tgt, backend=backend), autocorr_style_loss(moved, tgt, backend=backend)
    )


def test_loss_target_gets_no_gradient():
    x = _rand(1, 2, 3, 3, dtype=torch.float64, device="cpu").requires_grad_(True)
    s = _rand(1, 2, 3, 3, dtype=torch.float64, seed=9, device="cpu").requires_grad_(True)
    autocorr_style_loss(x, s, backend="torch").backward()
    assert x.grad is not None and s.grad is None


def test_loss_size_mismatch_is_a_clear_error():
    x = torch.zeros(1, 3, 5, 7)
    with pytest.raises(ValueError, match="same spatial size"):
        autocorr_style_loss(x, torch.zeros(1, 3, 5, 8))
    with pytest.raises(ValueError, match="same spatial size"):
        autocorr_style_loss(x, autocorr_spectrum(torch.zeros(1, 3, 6, 7)))
    with pytest.raises(ValueError, match="same spatial size"):
        require_same_feature_size(x, torch.zeros(1, 3, 7, 5))
    with pytest.raises(ValueError, match="channels"):
        autocorr_style_loss(x, torch.zeros(1, 4, 5, 7))
    with pytest.raises(ValueError, match="batch"):
        autocorr_style_loss(torch.zeros(3, 3, 5, 7), torch.zeros(2, 3, 5, 7))
    with pytest.raises(ValueError, match="normalize"):
        autocorr_style_loss(x, autocorr_spectrum(torch.zeros(1, 3, 5, 7), "none"))
    with pytest.raises(ValueError, match="reduction"):
        autocorr_style_loss(x, torch.zeros(1, 3, 5, 7), reduction="max")
    require_same_feature_size(x, torch.zeros(1, 3, 5, 7))  # fine
    assert isinstance(autocorr_spectrum(torch.zeros(1, 3, 5, 7)), AutocorrSpectrum)


# ---------------------------------------------------------------------------------------- CUDA bf16


@needs_cuda
@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("shape", [(2, 64, 9, 11), (1, 513, 7, 5), (1, 3, 16, 16)])
def test_cuda_bf16_autocorr(shape, method):
    x = _rand(*shape, dtype=torch.bfloat16, device="cuda")
    g = _rand(shape[0], shape[1], 2 * shape[2] - 1, 2 * shape[3] - 1, seed=10, device="cuda")
    out, gx = _grad(lambda t: autocorr(t, method=method), x, g)
    ref, gref = _grad(_ref64, x, g)
    assert out.dtype == torch.float32 and gx.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx.float(), gref.float(), rtol=2e-2, atol=2e-2 * gref.abs().max().item())


@needs_cuda
@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 64, 33, 31), (1, 256, 32, 32)])
def test_cuda_bf16_and_fp32_loss(shape):
    for dtype, rtol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        x = _rand(*shape, dtype=dtype, device="cuda")
        s = _rand(1, *shape[1:], dtype=dtype, seed=11, device="cuda")
        loss, gx = _grad(lambda t, s=s: autocorr_style_loss(t, s), x, torch.tensor(1.0, device="cuda"))
        ref, gref = _grad(lambda t, s=s: autocorr_style_loss_ref(t.double(), s.double()), x, torch.tensor(1.0))
        torch.testing.assert_close(loss, ref.float(), rtol=rtol, atol=0)
        torch.testing.assert_close(gx.float(), gref.float(), rtol=rtol, atol=rtol * gref.abs().max().item())
