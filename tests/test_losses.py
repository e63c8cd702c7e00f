"""Perceptual losses against their closed forms, and the Gram reference they use."""

from __future__ import annotations

import pytest
import torch
from nst_deploy.kernels import gram, gram_ref

from nst_deploy.errors import NSTError
from nst_deploy.losses import PerceptualLoss, balanced_style_layers, content_loss, gram_style_loss, tv_loss
from nst_deploy.lossnets import load_lossnet
from nst_deploy.recipes import PRESETS, parse_layers


def test_gram_reference_values_and_norms():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    f = x.flatten(2)
    full = torch.einsum("bik,bjk->bij", f, f)
    assert torch.allclose(gram_ref(x, "none"), full)
    assert torch.allclose(gram(x, "hw"), full / 20)
    assert torch.allclose(gram(x, "chw"), full / 60)
    ones = torch.ones(1, 4, 7, 9)
    assert torch.allclose(gram(ones, "hw"), torch.ones(1, 4, 4))  # closed form
    with pytest.raises(ValueError, match="normalization"):
        gram(x, "max")


def test_gram_reference_gradcheck():
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gram_ref(t, "hw"), (x,))


def test_gram_is_resolution_independent_when_normalized():
    x = torch.rand(1, 5, 6, 6)
    up = x.repeat_interleave(2, -1).repeat_interleave(2, -2)  # the same statistics at 4x the pixels
    assert torch.allclose(gram(x, "hw"), gram(up, "hw"), atol=1e-6)


def test_content_and_style_closed_forms():
    f, p = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    assert torch.allclose(content_loss(f, p), 0.5 * ((f - p) ** 2).sum())
    n, m = 4, 9
    a = torch.randn(1, n, n)
    g = torch.einsum("bik,bjk->bij", f.flatten(2), f.flatten(2))
    expected = ((g - a * m) ** 2).sum() / (4 * n**2 * m**2)  # Gatys' E_l with A = a * M
    assert torch.allclose(gram_style_loss(f, a), expected, rtol=1e-5)
    x = torch.zeros(1, 3, 4, 4)
    x[..., 2:] = 1
    assert torch.allclose(tv_loss(x), torch.tensor(3 * 4 / 16.0))


def test_perceptual_loss_zero_at_targets_and_drops_zero_weights():
    net = load_lossnet("vgg19")
    img = torch.rand(1, 3, 32, 32)
    loss = PerceptualLoss(net, {"conv4_2": 1.0, "conv1_1": 0.0}, {"conv1_1": 1.0, "conv2_1": 1.0}, 1.0, 1e3)
    assert loss.content_layers == {"conv4_2": 1.0} and loss.layers == ["conv1_1", "conv2_1", "conv4_2"]
    loss.set_content(img)
    loss.set_style(img)
    total, terms = loss(img)
    assert terms.total == pytest.approx(0.0, abs=1e-3)
    other, _ = loss(torch.rand(1, 3, 32, 32))
    assert other > 1.0
    with pytest.raises(NSTError, match="nothing to optimize"):
        PerceptualLoss(net, {"conv4_2": 0.0}, {"conv1_1": 0.0})


def test_balanced_style_layers_make_each_term_its_squared_relative_gram_error():
    net = load_lossnet("vgg19")
    torch.manual_seed(0)
    style, x = torch.rand(1, 3, 48, 40), torch.rand(1, 3, 40, 48)
    layers = balanced_style_layers(net, style, {"relu1_1": 1.0, "relu3_1": 2.0, "relu5_1": 1.0})
    with torch.no_grad():
        fs, fx = net(style, list(layers)), net(x, list(layers))
    expected = {}
    for k in layers:
        a, g = gram(fs[k].double(), "hw")[0], gram(fx[k].double(), "hw")[0]
        expected[k] = float(torch.linalg.norm(g - a) ** 2 / torch.linalg.norm(a) ** 2)
    expected["relu3_1"] *= 2.0  # the given weight is kept as a factor
    for k, w in layers.items():
        loss = PerceptualLoss(net, {}, {k: w}, 1.0, 1.0)
        loss.set_style(style)
        with torch.no_grad():
            assert loss(x)[1].style == pytest.approx(expected[k], rel=1e-3), k


def test_parse_layers_and_presets():
    assert parse_layers("conv1_1:0.5, conv2_1") == {"conv1_1": 0.5, "conv2_1": 1.0}
    with pytest.raises(NSTError, match="not a number"):
        parse_layers("conv1_1:x")
    with pytest.raises(NSTError, match="no layers"):
        parse_layers(" , ")
    for bad in ("conv1_1:inf", "conv1_1:nan", {"conv1_1": float("inf")}):
        with pytest.raises(NSTError, match="must be a finite number"):
            parse_layers(bad)
    with pytest.raises(NSTError, match="must be >= 0"):
        parse_layers("conv1_1:-1")
    with pytest.raises(NSTError, match="a list of layer names .* not \\['conv1_1'\\]"):
        parse_layers([["conv1_1"]])  # a recipe's style_layers = [["conv1_1"]]
    assert set(PRESETS) == {"gatys", "yu-chang", "multiscale-content", "partial"}
    assert set(PRESETS["partial"].style_layers) == {"conv3_1", "conv5_1"}
