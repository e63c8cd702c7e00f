"""Localized (pixel-wise and windowed) Gram matrices and their O(C H W) loss."""

from __future__ import annotations

import pytest
import torch
from nst_deploy.kernels.local_gram import (
    local_gram,
    local_gram_loss,
    local_gram_loss_ref,
    local_gram_ref,
    window_weights,
)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _rand(*shape, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def _brute(x: torch.Tensor, s: int) -> torch.Tensor:
    """The definition, literally: loops over pixels and window offsets (tiny sizes only)."""
    b, c, h, w = x.shape
    wts = {(dy, dx): 1.0 / (1.0 + dy * dy + dx * dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)}
    z = sum(wts.values())
    out = torch.zeros(b, c, c, h, w, dtype=torch.float64)
    for y in range(h):
        for xx in range(w):
            for (dy, dx), wt in wts.items():
                if 0 <= y + dy < h and 0 <= xx + dx < w:
                    v = x[:, :, y + dy, xx + dx].double()
                    out[:, :, :, y, xx] += (wt / z) * v[:, :, None] * v[:, None, :]
    return out


def _materialized_loss(x, t, s, reduction="sum"):
    d = (local_gram_ref(x, s) - local_gram_ref(t.detach(), s)).square()
    return d.sum() if reduction == "sum" else d.mean()


def test_window_weights():
    assert window_weights(0).tolist() == [[1.0]]
    w = window_weights(2, torch.float64)
    assert w.shape == (5, 5)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(w[2, 2] / w[2, 3], torch.tensor(2.0, dtype=torch.float64))  # 1 / (1 + 1)
    torch.testing.assert_close(w[0, 0] / w[2, 2], torch.tensor(1.0 / 9.0, dtype=torch.float64))
    torch.testing.assert_close(w, w.flip(0))
    torch.testing.assert_close(w, w.T)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            window_weights(bad)


@pytest.mark.parametrize("s", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (1, 2, 1, 4), (1, 4, 2, 1)])
def test_ref_matches_bruteforce(shape, s):
    x = _rand(*shape)
    torch.testing.assert_close(local_gram_ref(x, s), _brute(x, s), rtol=1e-12, atol=1e-12)


def test_window_zero_is_pixelwise():
    x = _rand(2, 5, 3, 7)
    g = local_gram_ref(x, 0)
    torch.testing.assert_close(g, torch.einsum("bihw,bjhw->bijhw", x, x))
    torch.testing.assert_close(local_gram(x, window=0, backend="torch"), g)


def test_closed_form_constant_map():
    c = 1.5
    x = torch.full((1, 3, 7, 8), c, dtype=torch.float64)
    torch.testing.assert_close(local_gram_ref(x, 0), torch.full((1, 3, 3, 7, 8), c * c, dtype=torch.float64))
    g = local_gram_ref(x, 2)
    # interior: the weights sum to 1; border: the weights that fall outside drop (zero padding)
    torch.testing.assert_close(g[..., 2:-2, 2:-2], torch.full_like(g[..., 2:-2, 2:-2], c * c))
    w = window_weights(2, torch.float64)
    torch.testing.assert_close(g[0, 0, 0, 0, 0], c * c * w[2:, 2:].sum())
    # the loss against zero: sum over pixels of |G(p)|_F^2 = C^2 (c^2)^2 per pixel for s = 0
    zero = torch.zeros_like(x)
    torch.testing.assert_close(local_gram_loss_ref(x, zero, 0), torch.tensor(9 * c**4 * 56, dtype=torch.float64))


def test_symmetry_sign_and_equivariance():
    x = _rand(1, 4, 5, 6)
    for s in (0, 1):
        g = local_gram_ref(x, s)
        torch.testing.assert_close(g, g.transpose(1, 2))
        torch.testing.assert_close(local_gram_ref(-x, s), g)
    # translation equivariance inside zero padding: a pattern moved in a zero canvas moves its Gram
    pattern = _rand(1, 3, 2, 3, seed=1)
    a = torch.zeros(1, 3, 9, 9, dtype=torch.float64)
    b = torch.zeros_like(a)
    a[..., 2:4, 2:5] = pattern
    b[..., 5:7, 4:7] = pattern
    ga, gb = local_gram_ref(a, 1), local_gram_ref(b, 1)
    torch.testing.assert_close(gb[..., 3:, 2:], ga[..., :-3, :-2])


@pytest.mark.parametrize("s", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 64, 3, 5), (1, 513, 3, 3), (2, 3, 1, 4), (1, 3, 4, 1)])
def test_loss_expansion_equals_materialized(shape, s):
    x = _rand(*shape).requires_grad_(True)
    t = _rand(1, *shape[1:], seed=3)
    loss = local_gram_loss_ref(x, t, s)
    ref = _materialized_loss(x, t, s)
    (gx,) = torch.autograd.grad(loss, x)
    (gref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s", [0, 1])
def test_loss_fp32_and_mean(s):
    x = _rand(2, 64, 5, 7, dtype=torch.float32).requires_grad_(True)
    t = _rand(2, 64, 5, 7, dtype=torch.float32, seed=4)
    loss = local_gram_loss(x, t, window=s, reduction="mean", backend="torch")
    assert loss.dtype == torch.float32
    xd = x.detach().double().requires_grad_(True)
    ref = _materialized_loss(xd, t.double(), s, "mean")
    (gx,) = torch.autograd.grad(loss, x)
    (gref,) = torch.autograd.grad(ref, xd)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(gx.double(), gref, rtol=1e-4, atol=1e-5 * gref.abs().max().item())


def test_gradcheck_float64():
    x = _rand(1, 3, 3, 4).requires_grad_(True)
    t = _rand(1, 3, 3, 4, seed=5)
    assert torch.autograd.gradcheck(lambda a: local_gram_ref(a, 1), (x,))
    assert torch.autograd.gradcheck(lambda a: local_gram_loss_ref(a, t, 0), (x,))
    assert torch.autograd.gradcheck(lambda a: local_gram_loss_ref(a, t, 1), (x,))


def test_loss_invariances_and_zero():
    x = _rand(2, 5, 4, 6).requires_grad_(True)
    t = _rand(1, 5, 4, 6, seed=6)
    for s in (0, 1):
        same = local_gram_loss_ref(x, x.detach(), s)
        (g,) = torch.autograd.grad(same, x)
        assert abs(same.item()) < 1e-10 and g.abs().max().item() < 1e-10
        base = local_gram_loss_ref(x, t, s)
        perm = torch.tensor([3, 0, 4, 1, 2])
        torch.testing.assert_close(local_gram_loss_ref(x[:, perm], t[:, perm], s), base)
        torch.testing.assert_close(local_gram_loss_ref(-x, t, s), base)
        # a shared target broadcasts over the batch
        per = sum(local_gram_loss_ref(x[i : i + 1], t, s) for i in range(2))
        torch.testing.assert_close(base, per)
        torch.testing.assert_close(
            local_gram_loss_ref(x, t, s, reduction="mean"), base / (2 * 5 * 5 * 4 * 6), rtol=1e-12, atol=0
        )


def test_target_gets_no_gradient_and_half_inputs():
    x = _rand(1, 3, 3, 3).requires_grad_(True)
    t = _rand(1, 3, 3, 3, seed=7).requires_grad_(True)
    local_gram_loss_ref(x, t, 1).backward()
    assert x.grad is not None and t.grad is None
    xb = _rand(1, 3, 3, 3, dtype=torch.bfloat16)
    assert local_gram_ref(xb, 1).dtype == torch.float32
    assert local_gram_loss_ref(xb, xb, 1).dtype == torch.float32


def test_errors():
    x = torch.zeros(1, 3, 5, 7)
    with pytest.raises(ValueError, match="same spatial size"):
        local_gram_loss(x, torch.zeros(1, 3, 5, 6))
    with pytest.raises(ValueError, match="channels"):
        local_gram_loss(x, torch.zeros(1, 4, 5, 7))
    with pytest.raises(ValueError, match="batch"):
        local_gram_loss(torch.zeros(3, 3, 5, 7), torch.zeros(2, 3, 5, 7))
    with pytest.raises(ValueError, match="reduction"):
        local_gram_loss(x, x, reduction="max")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        local_gram(torch.zeros(3, 5, 7))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        local_gram(x, backend="cuda")
    assert local_gram(torch.zeros(0, 2, 3, 3), window=1).shape == (0, 2, 2, 3, 3)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("s", [0, 1])
def test_cuda_bf16_loss(s):
    x = _rand(2, 64, 17, 15, dtype=torch.bfloat16, device="cuda").requires_grad_(True)
    t = _rand(1, 64, 17, 15, dtype=torch.bfloat16, seed=8, device="cuda")
    loss = local_gram_loss(x, t, window=s)
    (gx,) = torch.autograd.grad(loss, x)
    xd = x.detach().double().requires_grad_(True)
    ref = local_gram_loss_ref(xd, t.double(), s)
    (gref,) = torch.autograd.grad(ref, xd)
    assert loss.dtype == torch.float32 and gx.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=1e-3, atol=0)
    torch.testing.assert_close(gx.double(), gref, rtol=2e-2, atol=2e-2 * gref.abs().max().item())


# --- the Triton path (the interpreter without a GPU) ---------------------------------------------

from nst_deploy.kernels import has_triton  # noqa: E402
from nst_deploy.kernels.local_gram import (  # noqa: E402
    border_class,
    multiplicities,
    multiplicity,
    multiplicity_table,
)

needs_triton = pytest.mark.skipif(not has_triton(), reason="triton is not installed")
DEV = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("s", [0, 1, 2])
@pytest.mark.parametrize("hw", [(7, 9), (1, 5), (4, 3)])
def test_kernel_multiplicities_match_the_torch_path(s, hw):
    h, w = hw
    wts = window_weights(s, torch.float64)
    ref = torch.stack([multiplicity(h, w, s, (ey, ex), wts)[s:s + h, s:s + w].reshape(-1)
                       for ey in range(-2 * s, 2 * s + 1) for ex in range(-2 * s, 2 * s + 1)])
    torch.testing.assert_close(multiplicities(h, w, s, torch.device("cpu")).double(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("s", [0, 1, 2])
@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (4, 3), (5, 6), (7, 9), (13, 2), (40, 33)])
def test_kernel_multiplicity_table_by_border_class(s, hw):
    """The kernels read M_e(y, x) from a (2s+1)^2-bounded table at the row and column classes; expanded
    by the classes it gives M_e of every pixel."""
    h, w = hw
    table = multiplicity_table(h, w, s, torch.device("cpu"))
    assert table.shape == ((4 * s + 1) ** 2, min(h, 2 * s + 1), min(w, 2 * s + 1))
    ry, rx = border_class(h, s), border_class(w, s)
    expanded = table[:, ry[:, None], rx[None, :]].reshape(table.shape[0], h * w)
    torch.testing.assert_close(expanded, multiplicities(h, w, s, torch.device("cpu")), rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("s", [0, 1, 2])
@pytest.mark.parametrize("shape,target_batch", [((2, 3, 7, 9), 1), ((2, 5, 6, 5), 2), ((1, 64, 5, 7), 1),
                                                ((1, 4, 1, 6), 1), ((2, 3, 12, 11), 2)])
def test_triton_loss_and_gradient_match_reference(s, shape, target_batch):
    x = _rand(*shape, dtype=torch.float32, device=DEV).requires_grad_(True)
    t = _rand(target_batch, *shape[1:], dtype=torch.float32, seed=3, device=DEV)
    loss = local_gram_loss(x, t, window=s, backend="triton")
    (gx,) = torch.autograd.grad(loss, x)
    xd = x.detach().double().requires_grad_(True)
    ref = local_gram_loss_ref(xd, t.double(), s)
    (gref,) = torch.autograd.grad(ref, xd)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6 * abs(ref.item()))
    torch.testing.assert_close(gx.double(), gref, rtol=1e-4, atol=1e-5 * gref.abs().max().item())


@needs_triton
def test_triton_mean_reduction_no_grad_and_fallbacks():
    x = _rand(2, 3, 5, 6, dtype=torch.float32, device=DEV)
    t = _rand(1, 3, 5, 6, dtype=torch.float32, seed=4, device=DEV)
    from nst_deploy.kernels import _local_gram_triton

    stored = []
    real = _local_gram_triton.launch_dots

    def spy(*args, **kw):
        stored.append(args[9])  # the store flag
        return real(*args, **kw)

    _local_gram_triton.launch_dots = spy
    try:
        with torch.no_grad():  # no K buffers kept, even for a leaf that requires grad
            got = local_gram_loss(x, t, window=1, reduction="mean", backend="triton")
            local_gram_loss(x.clone().requires_grad_(True), t, window=1, backend="triton")
        local_gram_loss(x.clone().requires_grad_(True), t, window=1, backend="triton")
    finally:
        _local_gram_triton.launch_dots = real
    assert stored == [False, False, True]
    torch.testing.assert_close(got.double(), local_gram_loss_ref(x.double(), t.double(), 1, "mean"), rtol=1e-5,
                               atol=0)
    # float64 and empty inputs take the reference, whatever the backend
    xd = x.double().requires_grad_(True)
    torch.autograd.gradcheck(lambda v: local_gram_loss(v, t.double(), window=1, backend="triton"), (xd,))
    empty = torch.zeros(0, 3, 5, 6, device=DEV)
    assert local_gram_loss(empty, t, window=1, backend="triton").item() == 0.0
    with pytest.raises(ValueError, match="same spatial size"):
        local_gram_loss(x, t[..., :4], window=1, backend="triton")
