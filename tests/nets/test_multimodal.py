"""The Multimodal Transfer network: level sizes, output range, registry, gradients, luminance branch, export."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from nst_deploy.errors import NSTError
from nst_deploy.nets import create
from nst_deploy.nets._blocks import LUMA, luminance
from nst_deploy.nets.multimodal import MultimodalNet

WIDTH = 0.25


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are tiny, and on a loaded machine two OpenMP threads can wait
    on each other at every op (seconds per forward instead of milliseconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def net() -> MultimodalNet:
    torch.manual_seed(0)
    return MultimodalNet(WIDTH, levels=3).eval()


def _x(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _subnets(net: MultimodalNet) -> dict[str, nn.Module]:
    return {"style": net.style, "enhance": net.enhance, "refine": net.refine}


@pytest.mark.parametrize(("n", "h", "w"), [(2, 17, 23), (2, 24, 40), (1, 8, 13), (1, 31, 9)])
def test_level_sizes_and_range(net, n, h, w):
    x = _x(n, h, w)
    with torch.no_grad():
        ys = net.forward_levels(x)
        assert [tuple(y.shape) for y in ys] == [(n, 3, h * s, w * s) for s in (1, 2, 4)]
        for y in ys:
            assert y.dtype == torch.float32 and torch.isfinite(y).all()
            assert y.min() >= 0 and y.max() <= 1
        # fewer levels: the same outputs, only fewer of them
        for k in (1, 2):
            assert all(torch.equal(a, b) for a, b in zip(net.forward_levels(x, k), ys[:k], strict=True))
        assert torch.equal(net(x), ys[-1])


@pytest.mark.parametrize("levels", [1, 2])
def test_levels_sets_forward_output(net, levels):
    small = MultimodalNet(WIDTH, levels=levels).eval()
    small.load_state_dict(net.state_dict())  # every levels value has the same state dict
    x = _x(1, 17, 23, seed=1)
    with torch.no_grad():
        y = small(x)
        assert y.shape == (1, 3, 17 * small.output_scale(levels), 23 * small.output_scale(levels))
        assert torch.equal(y, net.forward_levels(x)[levels - 1])


def test_output_scale_and_config():
    assert [MultimodalNet.output_scale(k) for k in (1, 2, 3)] == [1, 2, 4]
    for bad in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match="levels"):
            MultimodalNet.output_scale(bad)
    net = MultimodalNet(0.5, levels=1)
    assert net.config() == {"width": 0.5, "levels": 1, "margin": 16}
    rebuilt = MultimodalNet(**net.config())
    rebuilt.load_state_dict(net.state_dict())  # strict


def test_registry():
    net = create("multimodal", width=WIDTH, levels=2)
    assert isinstance(net, MultimodalNet) and net.config() == {"width": WIDTH, "levels": 2, "margin": 16}
    with torch.no_grad():
        assert net(_x(1, 9, 12)).shape == (1, 3, 18, 24)
    for bad in (0, 4, -1, 1.5, "3", None, True):
        with pytest.raises(NSTError, match="levels"):
            create("multimodal", width=WIDTH, levels=bad)
    for bad in (0, -0.5, math.nan, math.inf):
        with pytest.raises(NSTError, match="width"):
            create("multimodal", width=bad)
    with pytest.raises(NSTError):
        create("multimodal", n_residual=3)


def test_bad_inputs(net):
    with pytest.raises(ValueError, match="levels"):
        net.forward_levels(_x(1, 16, 16), 0)
    with pytest.raises(ValueError, match="levels"):
        net.forward_levels(_x(1, 16, 16), 4)
    with pytest.raises(ValueError, match="at least 8"):
        net(_x(1, 7, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(3, 16, 16))


def test_level3_gradient_reaches_all_subnets():
    torch.manual_seed(1)
    net = MultimodalNet(WIDTH)
    net.forward_levels(_x(1, 12, 16), 3)[-1].square().mean().backward()
    for name, sub in _subnets(net).items():
        assert all(p.grad is not None for p in sub.parameters()), name
        # every convolution weight gets a gradient (biases right before an instance norm get exactly 0)
        for m in sub.modules():
            if isinstance(m, nn.Conv2d):
                assert m.weight.grad.abs().sum() > 0, name


def test_level1_gradient_stays_in_style_subnet():
    torch.manual_seed(2)
    net = MultimodalNet(WIDTH)
    ys = net.forward_levels(_x(1, 12, 16), 3)
    ys[0].square().mean().backward()
    assert all(p.grad is not None for p in net.style.parameters())
    assert all(p.grad is None for p in net.enhance.parameters())
    assert all(p.grad is None for p in net.refine.parameters())


def test_l_block_sees_only_luminance(net):
    assert net.style.lum[0][1].in_channels == 1 and net.style.rgb[0][1].in_channels == 3
    x1 = 0.25 + 0.5 * _x(2, 17, 23, seed=3)
    # a chroma shift with zero luma: 0.299 * 0.587 - 0.587 * 0.299 = 0
    chroma = torch.tensor([LUMA[1], -LUMA[0], 0.0]).view(1, 3, 1, 1)
    x2 = x1 + 0.2 * (_x(2, 17, 23, seed=4)[:, :1] - 0.5) * chroma
    assert (x2 - x1).abs().max() > 0.01 and x2.min() >= 0 and x2.max() <= 1
    assert torch.allclose(luminance(x1), luminance(x2), atol=1e-6)

    seen: dict[str, list[torch.Tensor]] = {"lum": [], "rgb": []}
    hooks = [getattr(net.style, k).register_forward_hook(lambda m, i, o, k=k: seen[k].append(o)) for k in seen]
    try:
        with torch.no_grad():
            net.forward_levels(x1, 1)
            net.forward_levels(x2, 1)
    finally:
        for hk in hooks:
            hk.remove()
    (l1, l2), (r1, r2) = seen["lum"], seen["rgb"]
    assert torch.allclose(l1, l2, atol=1e-4, rtol=0)
    assert (r1 - r2).abs().max() > 1e-3  # the RGB-block does see the chroma change


def test_no_running_stats_and_size(net):
    assert list(net.buffers()) == []
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(isinstance(m, nn.InstanceNorm2d) for m in norms)
    assert all(m.affine and not m.track_running_stats for m in norms)
    # no running statistics: training and evaluation mode compute the same thing
    x = _x(1, 12, 12, seed=5)
    with torch.no_grad():
        y_eval = net(x)
        net.train()
        try:
            y_train = net(x)
        finally:
            net.eval()
    assert torch.equal(y_eval, y_train)

    counts = {w: sum(p.numel() for p in MultimodalNet(w).parameters()) for w in (1.0, 0.5)}
    assert counts[1.0] < 4_000_000 and 2 * counts[1.0] < 8_000_000  # fp16 bytes
    assert counts[0.5] < counts[1.0] / 3


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.float32, 1e-3)])
def test_batch_items_independent(net, dtype, tol):
    # An item's output must not depend on its place in the batch (the published code clamped only
    # item 0). In float64 the outputs agree to rounding; in float32 the convolutions' rounding differs
    # with the batch size and some 50 instance norms amplify it to about 1e-4 at level 3.
    net = copy.deepcopy(net).to(dtype)
    x = _x(2, 17, 23, seed=6).to(dtype)
    with torch.no_grad():
        both = net.forward_levels(x)
        for i in range(2):
            alone = net.forward_levels(x[i : i + 1])
            for a, b in zip(alone, both, strict=True):
                assert (a[0] - b[i]).abs().max() < tol


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript(net):
    scripted = torch.jit.script(net)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = _x(2, 17, 23, seed=7)
    with torch.no_grad():
        ref = net.forward_levels(x)
        for m in (scripted, loaded):
            out = m.forward_levels(x)
            assert len(out) == 3 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, ref, strict=True))
            assert len(m.forward_levels(x, 1)) == 1
            assert torch.allclose(m(x), ref[-1], atol=1e-6)
        with pytest.raises(torch.jit.Error, match="levels must be"):
            scripted.forward_levels(x, 4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_trace(net):
    x = _x(1, 17, 23, seed=8)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-6)
        x2 = _x(1, 17, 23, seed=9)
        assert torch.allclose(traced(x2), net(x2), atol=1e-6)
