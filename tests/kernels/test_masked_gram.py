"""Masked Gram matrices and the masked style loss: Triton kernel vs the reference, gradients, closed forms.

Without a GPU the Triton path runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
the shapes stay small; the bf16 and larger fp32 cases run only on CUDA.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from nst_deploy.kernels import gram, has_triton
from nst_deploy.kernels.masked_gram import (
    MaskedGramFunction,
    MaskedGramStyleLossFunction,
    masked_gram,
    masked_gram_backward,
    masked_gram_forward,
    masked_gram_ref,
    masked_gram_style_loss,
    masked_gram_style_loss_ref,
)

from nst_deploy.losses import gram_style_loss

needs_triton = pytest.mark.skipif(not has_triton(), reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# The Triton path runs compiled on CUDA tensors and in the interpreter on CPU ones (no GPU).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_masks(bm: int, k: int, h: int, w: int, dtype=torch.float32, device="cpu", seed: int = 0) -> torch.Tensor:
    """K masks cycling through: empty, full, hard partial (about half), soft partial with exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    kinds = ["partial", "soft", "empty", "full"] if k < 3 else ["empty", "full", "partial", "soft"]
    out = []
    for i in range(k):
        kind = kinds[i % len(kinds)]
        if kind == "empty":
            m = torch.zeros(bm, h, w)
        elif kind == "full":
            m = torch.ones(bm, h, w)
        elif kind == "partial":
            m = (torch.rand(bm, h, w, generator=gen) > 0.5).float()
            m[:, 0, 0] = 1.0  # never empty
        else:
            m = torch.rand(bm, h, w, generator=gen)
            m[:, :, : w // 3] = 0.0
        out.append(m)
    return torch.stack(out, 1).to(device=device, dtype=dtype)


def grads(fn, x, masks):
    """Output and gradients (x, masks) of ``fn`` under a fixed random upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    masks = masks.detach().clone().requires_grad_(True)
    out = fn(x, masks)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    dx, dm = torch.autograd.grad(out, (x, masks), up)
    return out.detach(), dx, dm


def assert_close(a, b, rtol=1e-5, atol=1e-5):
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)


# ---------------------------------------------------------------------------------------------- Triton vs reference


@needs_triton
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 64, 9, 11), (1, 513, 5, 7)], ids=["C3", "C64", "C513"])
@pytest.mark.parametrize("k", [1, 3, 4, 5])
def test_triton_matches_reference(shape, k):
    b, c, h, w = shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(c + k)).to(DEVICE)
    masks = make_masks(b, k, h, w, seed=k, device=DEVICE)
    got, gx, gm = grads(lambda x, m: masked_gram(x, m, backend="triton"), x, masks)
    ref, rx, rm = grads(lambda x, m: masked_gram(x, m, backend="torch"), x, masks)
    assert got.shape == (b, k, c, c) and got.dtype == torch.float32
    assert_close(got, ref)
    assert_close(gx, rx)
    assert_close(gm, rm)
    torch.testing.assert_close(got, got.transpose(-1, -2), rtol=0, atol=0)  # mirrored, exactly symmetric
    soft = torch.rand(b, k, h, w, generator=torch.Generator().manual_seed(k)).to(DEVICE)  # soft in every slot
    assert_close(masked_gram(x, soft, backend="triton"), masked_gram_ref(x, soft))


@needs_triton
@pytest.mark.parametrize("splits", [1, 3, 5])
def test_triton_splits_tiles_and_shared_masks(splits):
    """Split-K over H*W (ragged last split), several C tiles (one partial), one mask set for the batch."""
    x = torch.randn(2, 40, 13, 11, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    masks = make_masks(1, 5, 13, 11, seed=4, device=DEVICE)  # (1, K, H, W): shared by the batch
    got = masked_gram_forward(x, masks, num_splits=splits, block_c=16, block_p=16)
    assert_close(got, masked_gram_ref(x, masks))
    got, gx, gm = grads(lambda x, m: masked_gram(x, m, backend="triton"), x, masks)
    ref, rx, rm = grads(masked_gram_ref, x, masks)
    assert gm.shape == masks.shape
    assert_close(gx, rx)
    assert_close(gm, rm)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_gpu_tile_configuration(monkeypatch, dtype):
    """The tiles and warps a GPU gets (64 channels, 16 or 64 pixels, 8 warps), run in the interpreter:
    a partial second channel tile, a ragged last split, a full group of 4 masks and a fifth. fp16
    stands for the half path: the interpreter multiplies bf16 operands of tl.dot as raw bits
    (triton-lang/triton#11584, not supported there), so bf16 dots are checked on a GPU only."""
    import importlib

    module = importlib.import_module("nst_deploy.kernels.masked_gram")
    monkeypatch.setattr(module, "GPU_TILES", True)
    x = torch.randn(1, 70, 9, 7, generator=torch.Generator().manual_seed(8)).to(DEVICE, dtype)
    masks = make_masks(1, 5, 9, 7, seed=9, device=DEVICE)
    assert module._config(x, 70, 63, 1, 5, 3, None, None)[:2] == (64, 16 if dtype == torch.float32 else 64)
    got = masked_gram_forward(x, masks, num_splits=3)
    ref = masked_gram_ref(x.float(), masks)
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    else:  # M^2 F is rounded to fp16 before the product: a few fp16 ulps of the largest entries
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
    torch.testing.assert_close(got, got.transpose(-1, -2), rtol=0, atol=0)


@needs_triton
def test_triton_strided_inputs_and_bool_masks():
    """Channels-last features, expanded (stride-0) masks and bool masks go through the kernel as they are."""
    x = torch.randn(2, 24, 7, 9, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    x = x.to(memory_format=torch.channels_last)
    hard = torch.rand(1, 2, 7, 9, generator=torch.Generator().manual_seed(6)).to(DEVICE) > 0.4
    expanded = hard.float().expand(2, 2, 7, 9)
    ref = masked_gram_ref(x.contiguous(), hard.float())
    assert_close(masked_gram(x, hard, backend="triton"), ref)
    assert_close(masked_gram(x, expanded, backend="triton"), ref)


@needs_triton
def test_triton_half_in_interpreter_or_gpu():
    """fp16 features (the kernel's half path: M^2 F rounded to fp16, fp32 accumulation), fp32 output."""
    x = torch.randn(2, 20, 9, 7, generator=torch.Generator().manual_seed(7)).to(DEVICE, torch.float16)
    masks = make_masks(2, 3, 9, 7, device=DEVICE)
    got = masked_gram(x, masks, backend="triton")
    assert got.dtype == torch.float32
    assert_close(got, masked_gram_ref(x, masks), rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------------------------------------- empty masks


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_empty_mask_gives_zero_and_zero_gradient(backend):
    x = torch.randn(2, 5, 5, 7, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    masks = make_masks(2, 4, 5, 7, device=DEVICE)
    masks[:, 2] = 0.0  # a second empty mask (the first is already empty)
    out, dx, dm = grads(lambda x, m: masked_gram(x, m, backend=backend), x, masks)
    assert torch.isfinite(out).all() and torch.isfinite(dx).all() and torch.isfinite(dm).all()
    assert (out[:, 0] == 0).all() and (out[:, 2] == 0).all()
    assert (dm[:, 0] == 0).all() and (dm[:, 2] == 0).all()
    # x's gradient comes only from the non-empty masks
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    x2 = x.clone().requires_grad_(True)
    (dx_rest,) = torch.autograd.grad(masked_gram(x2, masks[:, [1, 3]], backend=backend), x2, up[:, [1, 3]])
    assert_close(dx, dx_rest)


def test_all_masks_empty_and_tiny_sum():
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    out, dx, dm = grads(masked_gram_ref, x, torch.zeros(1, 2, 4, 4))
    assert (out == 0).all() and (dx == 0).all() and (dm == 0).all()
    tiny = torch.zeros(1, 1, 4, 4)
    tiny[..., 1, 2] = 1e-30  # sum below eps: empty, still finite
    out, dx, dm = grads(masked_gram_ref, x, tiny)
    assert (out == 0).all() and torch.isfinite(dm).all() and (dm == 0).all()


# ---------------------------------------------------------------------------------------------- float64 gradcheck


@pytest.mark.parametrize("bm", [1, 2], ids=["shared-masks", "per-sample-masks"])
def test_reference_gradcheck(bm):
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    masks = torch.rand(bm, 3, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(11)) + 0.05
    masks[:, 0, 0, :2] = 0.0  # zeros inside a partial mask: still differentiable (M^2 and S are smooth there)
    masks[:, 1] = 1.0
    x.requires_grad_(True)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(masked_gram_ref, (x, masks))


def test_backward_formula_gradcheck():
    """The hand-written backward (the kernel path's) against finite differences: float64 runs the reference
    forward inside the Function, so this checks masked_gram_backward, including the 1/S_k term."""
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    masks = torch.rand(1, 5, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(13)) + 0.05
    masks[:, 2, 1] = 0.0
    x.requires_grad_(True)
    masks.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, m: MaskedGramFunction.apply(x, m, 1e-12), (x, masks))


def test_backward_matches_reference_autograd_with_empty_mask():
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    masks = make_masks(1, 5, 5, 7, dtype=torch.float64)
    ref, rx, rm = grads(masked_gram_ref, x, masks)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref)
    dx, dm = masked_gram_backward(x, masks, up, ref)
    torch.testing.assert_close(dx, rx)
    torch.testing.assert_close(dm, rm)


def test_loss_backward_gradcheck():
    """The fused loss's custom backward (x, masks, targets, weights) against finite differences."""
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    masks = (torch.rand(1, 2, 3, 4, dtype=torch.float64, generator=gen) + 0.05).requires_grad_(True)
    targets = torch.randn(2, 3, 3, dtype=torch.float64, generator=gen).requires_grad_(True)
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    fn = lambda *a: MaskedGramStyleLossFunction.apply(*a, 1e-12)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, masks, targets, weights))


# ---------------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_all_ones_mask_is_plain_gram(backend):
    x = torch.randn(2, 7, 5, 9, generator=torch.Generator().manual_seed(16)).to(DEVICE)
    out = masked_gram(x, torch.ones(1, 2, 5, 9, device=DEVICE), backend=backend)
    ref = gram(x, normalize="hw")
    assert_close(out[:, 0], ref)
    assert_close(out[:, 1], ref)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_hard_mask_is_gram_of_selected_pixels_and_one_pixel_is_outer_product(backend):
    x = torch.randn(1, 5, 6, 7, generator=torch.Generator().manual_seed(17)).to(DEVICE)
    region = torch.zeros(1, 2, 6, 7, device=DEVICE)
    region[0, 0, 1:4, 2:7] = 1.0
    region[0, 1, 3, 4] = 1.0
    out = masked_gram(x, region, backend=backend)
    sel = x[:, :, 1:4, 2:7]
    assert_close(out[:, 0], gram(sel, normalize="hw"))
    f = x[0, :, 3, 4]
    assert_close(out[0, 1], torch.outer(f, f))


# ---------------------------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_scaling_a_mask_scales_its_gram(backend):
    """G_k(a M) = a G_k(M) (M^2 over sum M): linear in the mask's scale, not invariant; other masks untouched."""
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(18)).to(DEVICE)
    masks = make_masks(2, 3, 5, 7, device=DEVICE)
    base = masked_gram(x, masks, backend=backend)
    scaled = masks.clone()
    scaled[:, 2] *= 3.0
    out = masked_gram(x, scaled, backend=backend)
    assert_close(out[:, 2], 3.0 * base[:, 2])
    assert_close(out[:, :2], base[:, :2])


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_pixel_permutation_mask_order_and_resolution_invariance(backend):
    gen = torch.Generator().manual_seed(19)
    x = torch.randn(1, 5, 5, 7, generator=gen).to(DEVICE)
    masks = make_masks(1, 4, 5, 7, seed=2, device=DEVICE)
    base = masked_gram(x, masks, backend=backend)
    # the same permutation of the pixels of features and masks
    perm = torch.randperm(35, generator=gen).to(DEVICE)
    xp = x.flatten(2)[..., perm].view_as(x)
    mp = masks.flatten(2)[..., perm].view_as(masks)
    assert_close(masked_gram(xp, mp, backend=backend), base)
    # permuting the masks permutes the Gram matrices
    order = [3, 0, 2, 1]
    assert_close(masked_gram(x, masks[:, order], backend=backend), base[:, order])
    # nearest 2x upsampling of features and masks (each pixel four times): sums and products scale alike
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    assert_close(masked_gram(up(x), up(masks), backend=backend), base)


# ---------------------------------------------------------------------------------------------- the masked style loss


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_loss_with_one_full_mask_is_gram_style_loss(backend):
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(20)).to(DEVICE)
    target = gram(torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(21)).to(DEVICE), normalize="hw")
    got = masked_gram_style_loss(x, torch.ones(1, 1, 5, 7, device=DEVICE), target, backend=backend)
    torch.testing.assert_close(got, gram_style_loss(x, target))


@needs_triton
@pytest.mark.parametrize("targets_batched", [False, True])
def test_fused_loss_matches_reference_autograd(targets_batched):
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 9, 7, 5, generator=gen).to(DEVICE)
    masks = make_masks(1, 5, 7, 5, seed=5, device=DEVICE)
    shape = (1, 5, 9, 9) if targets_batched else (5, 9, 9)
    targets = torch.randn(shape, generator=gen).to(DEVICE) * 0.1
    weights = torch.tensor([1.0, 0.5, 2.0, 0.0, 3.0], device=DEVICE)

    def run(fn):
        args = [t.clone().requires_grad_(True) for t in (x, masks, targets, weights)]
        loss = fn(*args)
        return (loss.detach(), *torch.autograd.grad(loss, args))

    got = run(lambda *a: masked_gram_style_loss(*a, backend="triton"))
    ref = run(masked_gram_style_loss_ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        assert_close(g, r)
    # default weights: all ones
    torch.testing.assert_close(masked_gram_style_loss(x, masks, targets, backend="triton"),
                               masked_gram_style_loss_ref(x, masks, targets, [1.0] * 5), rtol=1e-5, atol=1e-6)


def test_loss_and_op_reject_bad_shapes():
    x = torch.randn(2, 3, 5, 7)
    with pytest.raises(ValueError, match="do not fit"):
        masked_gram(x, torch.ones(1, 2, 5, 6))
    with pytest.raises(ValueError, match="do not fit"):
        masked_gram(x, torch.ones(3, 2, 5, 7))
    with pytest.raises(ValueError, match="features"):
        masked_gram(x[0], torch.ones(1, 2, 5, 7))
    with pytest.raises(ValueError, match="targets"):
        masked_gram_style_loss(x, torch.ones(1, 2, 5, 7), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="weights"):
        masked_gram_style_loss(x, torch.ones(1, 2, 5, 7), torch.zeros(2, 3, 3), [1.0])
    with pytest.raises(ValueError, match="unknown kernel backend"):
        masked_gram(x, torch.ones(1, 2, 5, 7), backend="cuda")


def test_import_does_not_import_triton():
    code = (
        "import sys, torch\n"
        "from nst_deploy.kernels.masked_gram import masked_gram\n"
        "masked_gram(torch.randn(1, 3, 4, 4), torch.ones(1, 1, 4, 4))\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------------- GPU only


@needs_cuda
@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("k", [1, 4, 6])
def test_cuda_bf16_and_fp32_against_reference(k):
    """bf16 against the fp32 reference of the same bf16 values; fp32 (ieee, automatic splits) at fp32 tolerance."""
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(2, 96, 45, 37, generator=gen).cuda()
    masks = make_masks(2, k, 45, 37, device="cuda")
    xb = x.bfloat16()
    got, gx, gm = grads(lambda x, m: masked_gram(x, m, backend="triton"), xb, masks)
    ref, rx, rm = grads(masked_gram_ref, xb.float(), masks)
    assert got.dtype == torch.float32 and gx.dtype == torch.bfloat16
    assert_close(got, ref, rtol=2e-2, atol=1e-2)
    assert_close(gx.float(), rx, rtol=2e-2, atol=1e-2)
    assert_close(gm, rm, rtol=2e-2, atol=1e-2)
    mode = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # ieee in the kernel and in torch's matmuls
    try:
        assert_close(masked_gram(x, masks, backend="triton"), masked_gram_ref(x, masks))
        loss = lambda fn: fn(x, masks, torch.zeros(k, 96, 96, device="cuda"))  # noqa: E731
        torch.testing.assert_close(loss(lambda *a: masked_gram_style_loss(*a, backend="triton")),
                                   loss(masked_gram_style_loss_ref), rtol=1e-4, atol=0)
    finally:
        torch.set_float32_matmul_precision(mode)
