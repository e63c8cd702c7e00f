"""Loss networks: names, truncation, freezing, pooling, sizes, memory format."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nst_deploy.errors import LossNetError
from nst_deploy.lossnets import LOSSNETS, layer_info, layer_names, load_lossnet


@pytest.fixture(scope="module")
def vgg19():
    return load_lossnet("vgg19")


def test_layer_names():
    v19 = layer_names("vgg19")
    assert len(v19) == 37 and v19[0] == "conv1_1" and v19[-1] == "pool5"
    assert {"conv4_2", "conv5_4", "relu3_4", "pool3"} <= set(v19)
    v16 = layer_names("vgg16")
    assert "conv5_3" in v16 and "conv5_4" not in v16 and len(v16) == 31
    assert layer_names("alexnet") == (
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4",
        "conv5", "relu5", "pool5",
    )
    g = layer_names("googlenet")
    assert g[0] == "conv1" and "inception4c" in g and g[-1] == "inception5b"


def test_layer_info_shapes():
    info = {name: (c, h, w) for name, c, h, w in layer_info("vgg19", 224)}
    assert info["conv1_1"] == (64, 224, 224) and info["conv4_2"] == (512, 28, 28) and info["pool5"] == (512, 7, 7)
    g = {name: (c, h, w) for name, c, h, w in layer_info("googlenet", 224)}
    assert g["inception3a"] == (256, 28, 28) and g["inception5b"] == (1024, 7, 7)


def test_forward_returns_requested_and_stops_at_deepest(vgg19):
    ran = []
    hooks = [getattr(vgg19, n).register_forward_hook(lambda m, i, o, n=n: ran.append(n))
             for n in vgg19.layer_names if n.startswith("conv")]
    try:
        out = vgg19(torch.rand(1, 3, 32, 32), ["conv3_1", "conv1_1"])
    finally:
        for h in hooks:
            h.remove()
    assert list(out) == ["conv1_1", "conv3_1"]
    assert ran[-1] == "conv3_1" and "conv3_2" not in ran
    assert out["conv1_1"].shape == (1, 64, 32, 32) and out["conv3_1"].shape == (1, 256, 8, 8)


def test_in_place_relu_never_corrupts_returned_conv_outputs(vgg19):
    x = torch.rand(1, 3, 32, 32)
    alone = vgg19(x, "conv1_1")["conv1_1"]
    both = vgg19(x, ["conv1_1", "relu1_1", "conv2_1"])
    assert (alone < 0).any()  # pre-activation values are negative somewhere
    assert torch.equal(both["conv1_1"], alone)
    assert torch.equal(both["relu1_1"], alone.clamp_min(0))


def test_frozen_parameters_input_gets_gradient(vgg19):
    assert all(not p.requires_grad for p in vgg19.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    feats = vgg19(x, ["conv1_1", "conv4_2"])
    sum(f.square().mean() for f in feats.values()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg19.parameters())


def test_gradient_matches_finite_difference(vgg19):
    net64 = load_lossnet("vgg19", dtype=torch.float64)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)

    def f(inp):
        return net64(inp, "relu2_1")["relu2_1"].square().mean()

    f(x).backward()
    d = torch.zeros_like(x)
    d[0, 1, 5, 7] = 1e-4
    fd = (f(x.detach() + d) - f(x.detach() - d)) / 2e-4
    assert torch.allclose(x.grad[0, 1, 5, 7], fd, rtol=1e-4, atol=1e-8)


def test_stays_in_eval_mode():
    net = load_lossnet("googlenet", "random")
    wrapper = nn.Sequential(net)
    wrapper.train()
    assert not net.training and not net.inception3a.branch1.bn.training
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(net(x, "conv1")["conv1"], net(x, "conv1")["conv1"])


def test_avg_pooling_replaces_every_max_pool():
    for name in LOSSNETS:
        net = load_lossnet(name, "random", pooling="avg")
        assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules()), name
        assert any(isinstance(m, nn.AvgPool2d) for m in net.modules()), name
    a = load_lossnet("vgg19", pooling="avg")
    m = load_lossnet("vgg19", pooling="max")
    x = torch.rand(1, 3, 32, 32)
    assert a(x, "conv2_1")["conv2_1"].shape == m(x, "conv2_1")["conv2_1"].shape
    assert not torch.allclose(a(x, "conv2_1")["conv2_1"], m(x, "conv2_1")["conv2_1"])


def test_min_input_size(vgg19):
    assert vgg19.min_input_size("conv1_1") == 1
    assert vgg19.min_input_size("conv5_1") == 16
    assert vgg19.min_input_size() == 32  # pool5
    assert load_lossnet("alexnet", "random").min_input_size("conv5") == 31
    for name in LOSSNETS:  # the minimum works and one less fails
        net = load_lossnet(name, "random")
        last = net.layer_names[-1]
        n = net.min_input_size(last)
        assert net(torch.rand(1, 3, n, n), last)[last].shape[-1] >= 1
        with pytest.raises(LossNetError, match=f"at least {n}x{n}"):
            net(torch.rand(1, 3, n - 1, n + 5), last)


def test_bad_requests(vgg19):
    with pytest.raises(LossNetError, match="no layer 'conv6_1'.*conv1_1"):
        vgg19(torch.rand(1, 3, 32, 32), ["conv6_1"])
    with pytest.raises(LossNetError, match=r"\(N, 3, H, W\)"):
        vgg19(torch.rand(1, 4, 32, 32), "conv1_1")
    with pytest.raises(LossNetError, match="unknown loss network 'resnet'"):
        load_lossnet("resnet")
    with pytest.raises(LossNetError, match="unknown pooling"):
        load_lossnet("vgg19", pooling="min")


def test_channels_last_and_dtype_match_default(vgg19):
    x = torch.rand(1, 3, 40, 48)
    ref = vgg19(x, ["conv2_2", "conv4_1"])
    cl = load_lossnet("vgg19", channels_last=True)
    assert cl.conv2_1.weight.is_contiguous(memory_format=torch.channels_last)
    out = cl(x, ["conv2_2", "conv4_1"])
    assert out["conv2_2"].is_contiguous(memory_format=torch.channels_last)
    for k in ref:
        assert torch.allclose(out[k], ref[k], rtol=1e-4, atol=1e-2)
    bf = load_lossnet("vgg19", dtype=torch.bfloat16)
    got = bf(x.bfloat16(), "conv2_2")["conv2_2"].float()
    assert (got - ref["conv2_2"]).abs().mean() < 0.05 * ref["conv2_2"].abs().mean()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(vgg19):
    x = torch.rand(1, 3, 64, 64)
    gpu = load_lossnet("vgg19", device="cuda")
    out = gpu(x.cuda(), "conv5_1")["conv5_1"].cpu()
    ref = vgg19(x, "conv5_1")["conv5_1"]
    assert torch.allclose(out, ref, rtol=1e-3, atol=1e-2 * ref.abs().max().item())


def test_truncate_frees_later_layers():
    from nst_deploy import load_lossnet

    net = load_lossnet("vgg19", "random")
    x = torch.rand(1, 3, 32, 32)
    before = net(x, ["conv1_1", "conv3_1"])
    n_params = sum(p.numel() for p in net.parameters())
    net.truncate("conv3_1")
    after = net(x, ["conv1_1", "conv3_1"])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sum(p.numel() for p in net.parameters()) < n_params and not hasattr(net, "conv3_2")
    with pytest.raises(LossNetError, match="conv4_1"):
        net(x, ["conv4_1"])
