"""Several styles (hierarchical, blend, masks), style masks, autocorrelation and localized styles."""

from __future__ import annotations

import pytest
import torch
from nst_deploy.kernels import gram, masked_gram

from nst_deploy.errors import NSTError
from nst_deploy.images import cover_crop, load_image
from nst_deploy.lossnets import layer_names, load_lossnet
from nst_deploy.optimize import rgb_to_yiq, stylize
from nst_deploy.styles import Style, StyleLoss, assign_layers, normalize_masks, pool_segments

from .conftest import DATA

CONTENT, STARRY, SCREAM = DATA / "chelsea.jpg", DATA / "starry_night.jpg", DATA / "the_scream.jpg"
GATYS = {k: 0.2 for k in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")}
VGG19 = layer_names("vgg19")


@pytest.fixture(scope="module")
def net():
    return load_lossnet("vgg19", None, device="cpu")


@pytest.fixture(scope="module")
def images():
    return load_image(CONTENT, size=64), load_image(STARRY, size=64), load_image(SCREAM, size=64)


def _dist(g: torch.Tensor, a: torch.Tensor) -> float:
    return float((g - a).square().sum() / a.square().sum())


# --- layer assignment, masks --------------------------------------------------------------------

def test_hierarchical_default_cuts_the_style_layers_at_pooling():
    assert pool_segments({"conv1_1": 1, "conv1_2": 1, "conv3_1": 1}, VGG19) == [
        {"conv1_1": 1, "conv1_2": 1}, {"conv3_1": 1}]
    two = assign_layers(GATYS, 2, VGG19)
    assert list(two[0]) == ["conv1_1", "conv2_1"]  # the example: A low, B high
    assert list(two[1]) == ["conv3_1", "conv4_1", "conv5_1"]
    three = assign_layers(GATYS, 3, VGG19)
    assert [list(s) for s in three] == [["conv1_1"], ["conv2_1", "conv3_1"], ["conv4_1", "conv5_1"]]
    assert sum(len(s) for s in assign_layers(GATYS, 5, VGG19)) == 5
    assert assign_layers(GATYS, 1, VGG19) == [GATYS]
    with pytest.raises(NSTError, match="span only 5 pooling blocks"):
        assign_layers(GATYS, 6, VGG19)


def test_masks_are_normalized_to_sum_to_one_where_covered():
    m = torch.zeros(1, 2, 4, 6)
    m[0, 0, :, :4] = 1.0
    m[0, 1, :, 2:] = 0.5  # overlaps the first on columns 2-3; column 4-5 only the second
    n = normalize_masks(m)
    total = n.sum(1)
    assert torch.allclose(total, torch.ones_like(total))
    assert torch.allclose(n[0, 0, :, 2:4], torch.full((4, 2), 2 / 3))
    lone = torch.rand(1, 1, 4, 6)
    assert torch.equal(normalize_masks(lone), lone)  # one mask: used as given
    hole = torch.zeros(1, 2, 2, 2)
    assert torch.equal(normalize_masks(hole), hole)  # uncovered pixels get no style


def test_blend_target_is_the_weighted_mean_of_the_styles():
    f1, f2 = torch.rand(1, 4, 6, 5), torch.rand(1, 4, 6, 5)
    sl = StyleLoss([{"a": 1.0}, {"a": 1.0}], [3.0, 1.0], blend=True)
    sl.set_targets([{"a": f1}, {"a": f2}])
    want = 0.75 * gram(f1)[0] + 0.25 * gram(f2)[0]
    torch.testing.assert_close(sl._targets[0, "a"], want)
    x = torch.rand(1, 4, 6, 5)
    torch.testing.assert_close(sl({"a": x}), (gram(x)[0] - want).square().sum() / 64)
    with pytest.raises(NSTError, match="same layers"):
        StyleLoss([{"a": 1.0}, {"b": 1.0}], [1.0, 1.0], blend=True)


def test_style_mask_targets_the_masked_region_of_the_style():
    f = torch.rand(1, 3, 8, 8)
    f[..., 4:] *= 5.0  # the right half has other statistics
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4] = 1.0
    sl = StyleLoss([{"a": 1.0}], [1.0])
    sl.set_targets([{"a": f}], [m])
    torch.testing.assert_close(sl._targets[0, "a"], gram(f[..., :4])[0])
    with pytest.raises(NSTError, match="empty"):
        sl.set_targets([{"a": f}], [torch.zeros(1, 1, 8, 8)])


def test_one_all_ones_mask_equals_the_plain_gram_loss():
    f, s = torch.rand(1, 5, 7, 9), torch.rand(1, 5, 7, 9)
    plain = StyleLoss([{"a": 1.0}], [2.0])
    plain.set_targets([{"a": s}])
    masked = StyleLoss([{"a": 1.0}], [2.0])
    masked.set_targets([{"a": s}])
    masked.set_masks(torch.ones(1, 1, 14, 18))
    torch.testing.assert_close(masked({"a": f}), plain({"a": f}))


# --- what the features promise, on small images ---------------------------------------------------

def test_left_and_right_masks_give_each_region_its_style(net, images):
    c, a, b = images
    h, w = c.shape[-2:]
    left = torch.zeros(1, 1, h, w)
    left[..., : w // 2] = 1.0
    out = stylize(c, [Style(a, mask=left), Style(b, mask=1 - left)], size=64, steps=60, as_tensor=True)
    # conv1_1 is left out: its Gram loss is about 1e-5 of conv4_1's (VGG19 feature scales), so in 60
    # steps it barely moves in either region (measured: right region 0.32 to A, 0.33 to B).
    layers = ["conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    fo, fa, fb = net(out, layers), net(a, layers), net(b, layers)
    for k in layers:
        hw = tuple(fo[k].shape[-2:])
        ml = torch.nn.functional.adaptive_avg_pool2d(left, hw)
        g = masked_gram(fo[k], torch.cat([ml, 1 - ml], 1))[0]
        ga, gb = gram(fa[k])[0], gram(fb[k])[0]
        assert _dist(g[0], ga) < 0.7 * _dist(g[0], gb), k  # left region: closer to style A
        assert _dist(g[1], gb) < 0.7 * _dist(g[1], ga), k  # right region: closer to style B


def test_hierarchical_puts_each_style_on_its_layers(net, images):
    c, a, b = images
    out = stylize(c, [a, b], size=64, steps=60, as_tensor=True)  # default: A low layers, B high
    low, high = ["conv1_1", "conv2_1"], ["conv3_1", "conv4_1", "conv5_1"]
    fo, fa, fb = net(out, low + high), net(a, low + high), net(b, low + high)

    def dist(layers, f):  # mean normalized Gram distance over a group of layers
        return sum(_dist(gram(fo[k]), gram(f[k])) for k in layers) / len(layers)

    assert dist(low, fa) < 0.5 * dist(low, fb)
    assert dist(high, fb) < 0.5 * dist(high, fa)
    for k in ("conv1_1", "conv2_1"):
        assert _dist(gram(fo[k]), gram(fa[k])) < _dist(gram(fo[k]), gram(fb[k])), k
    for k in ("conv4_1", "conv5_1"):
        assert _dist(gram(fo[k]), gram(fb[k])) < _dist(gram(fo[k]), gram(fa[k])), k


def test_explicit_layers_and_weights_per_style(images):
    c, a, b = images
    log = []
    stylize(c, [Style(a, weight=2.0, layers="conv1_1"), Style(b, weight=0.5, layers="conv3_1,conv4_1")],
            size=48, steps=3, callback=log.append)
    assert log[-1].terms.style < log[0].terms.style
    with pytest.raises(NSTError, match="every style has weight 0"):
        stylize(c, [Style(a, weight=0), Style(b, weight=0)], size=48, steps=1)
    with pytest.raises(NSTError, match="weight must be"):
        stylize(c, [Style(a, weight=-1)], size=48, steps=1)


def test_blend_lands_between_the_two_styles(net, images):
    c, a, b = images
    out = stylize(c, [Style(a, 0.5), Style(b, 0.5)], multi_style="blend", size=64, steps=40, as_tensor=True)
    only_a = stylize(c, a, size=64, steps=40, as_tensor=True)
    k = "conv2_1"
    g, gb = gram(net(out, k)[k]), gram(net(b, k)[k])
    gaa = gram(net(only_a, k)[k])
    assert _dist(g, gb) < _dist(gaa, gb)  # the blend moved towards B


@pytest.mark.parametrize("rep,kw", [("autocorr", {}), ("local", {}), ("local", {"window": 1})])
def test_autocorr_and_local_losses_fall_during_a_run(rep, kw, images):
    c, a, _ = images
    log = []
    stylize(c, a, style_rep=rep, size=48, steps=15, callback=log.append, **kw)
    assert log[-1].terms.style < 0.5 * log[0].terms.style


@pytest.mark.parametrize("rep,window", [("autocorr", 0), ("local", 0), ("local", 2)])
def test_style_rep_gradients_match_finite_differences(rep, window):
    torch.manual_seed(0)
    s = {"a": torch.rand(1, 3, 5, 6, dtype=torch.float64), "b": torch.rand(1, 2, 3, 4, dtype=torch.float64)}
    sl = StyleLoss([{"a": 1.0, "b": 0.5}], [1.5], rep=rep, window=window)
    sl.set_targets([s])
    fa = torch.rand(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    fb = torch.rand(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: sl({"a": x, "b": y}), (fa, fb))


def test_masked_gram_loss_gradients_match_finite_differences():
    torch.manual_seed(0)
    s1, s2 = torch.rand(1, 3, 6, 6, dtype=torch.float64), torch.rand(1, 3, 6, 6, dtype=torch.float64)
    sl = StyleLoss([{"a": 1.0}, {"a": 1.0}], [1.0, 2.0])
    sl.set_targets([{"a": s1}, {"a": s2}])
    m = torch.rand(1, 2, 12, 12, dtype=torch.float64)
    sl.set_masks(m)
    f = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sl({"a": x}), (f,))


def test_autocorr_and_local_bring_the_style_to_the_output_size(images):
    c, a, _ = images
    seen = []
    orig = StyleLoss.set_targets

    def spy(self, feats, masks=None):
        seen.append({k: tuple(v.shape[-2:]) for k, v in feats[0].items()})
        return orig(self, feats, masks)

    StyleLoss.set_targets = spy
    try:
        stylize(c, load_image(STARRY, size=80), style_rep="autocorr", size=48, steps=1)
    finally:
        StyleLoss.set_targets = orig
    assert seen[0]["conv1_1"] == (32, 48)  # the content at 48 px is 48x32: the style was fitted to it
    fitted = cover_crop(torch.rand(1, 3, 40, 40), (20, 30))
    assert fitted.shape[-2:] == (20, 30)
    with pytest.raises(NSTError, match="style-scale must be 1"):
        stylize(c, a, style_rep="local", style_scale=2.0, size=48, steps=1)
    with pytest.raises(NSTError, match="window"):
        stylize(c, a, window=2, size=48, steps=1)


def test_errors_for_masks_and_representations(images, tmp_path):
    c, a, b = images
    m = torch.ones(1, 1, 32, 48)
    with pytest.raises(NSTError, match="mask for every style"):
        stylize(c, [Style(a, mask=m), Style(b)], size=48, steps=1)
    with pytest.raises(NSTError, match="aspect ratios differ"):
        stylize(c, [Style(a, mask=torch.ones(1, 1, 40, 40)), Style(b, mask=m)], size=48, steps=1)
    with pytest.raises(NSTError, match="masks need the gram"):
        stylize(c, [Style(a, mask=m), Style(b, mask=m)], style_rep="autocorr", size=48, steps=1)
    with pytest.raises(NSTError, match="blend is not available"):
        stylize(c, [a, b], multi_style="blend", style_rep="local", size=48, steps=1)
    with pytest.raises(NSTError, match="does not exist"):
        stylize(c, [Style(a, mask=tmp_path / "nope.png")], size=48, steps=1)
    with pytest.raises(NSTError, match="unknown style representation"):
        stylize(c, a, style_rep="wavelet", size=48, steps=1)


def test_partial_style_transfer_keeps_the_content_colours():
    c, a = load_image(CONTENT, size=96), load_image(STARRY, size=96)
    partial = stylize(c, a, preset="partial", size=96, steps=40, as_tensor=True)
    full = stylize(c, a, size=96, steps=40, as_tensor=True)
    ref = rgb_to_yiq(c)[:, 1:]

    def chroma_change(x):
        return float((rgb_to_yiq(x)[:, 1:] - ref).abs().mean())

    assert chroma_change(partial) < 0.75 * chroma_change(full)  # measured 0.045 vs 0.071
    assert float((partial - c).abs().mean()) > 0.01  # and it is stylized
