"""One network, many styles (conditional instance norm): the network, its training, export and runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.controls import parse_style, style_weights
from nst_deploy.errors import NSTError
from nst_deploy.nets import create
from nst_deploy.nets.io import load_model, save_model
from nst_deploy.nets.multistyle import MultiStyleNet, style_vector
from nst_deploy.runtime import Stylizer

DATA = Path(__file__).resolve().parents[2] / "nst_deploy" / "data"
STYLES = [DATA / "starry_night.jpg", DATA / "the_scream.jpg"]


def _randomized(n: int = 3, seed: int = 0) -> MultiStyleNet:
    """A network whose styles differ (random scales and shifts), as training leaves them."""
    torch.manual_seed(seed)
    net = create("multistyle", n_styles=n, width=0.25).eval()
    with torch.no_grad():
        for norm in net.norms():
            norm.gamma.uniform_(0.5, 1.5)
            norm.beta.normal_(0.0, 0.3)
    return net


def test_a_style_vector_blends_scales_and_shifts():
    net = _randomized()
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        ys = [net(x, style_vector(i, 3)) for i in range(3)]
        assert all(not torch.allclose(ys[0], y, atol=1e-3) for y in ys[1:])
        # a blend is the network whose norms hold the blended rows (the paper's convex combination)
        mixed = net(x, style_vector({0: 0.25, 2: 0.75}, 3))
        one = create("multistyle", n_styles=1, width=0.25).eval()
        sd = {k: (0.25 * v[0:1] + 0.75 * v[2:3]) if k.endswith((".gamma", ".beta")) else v
              for k, v in net.state_dict().items()}
        one.load_state_dict(sd)
        assert torch.allclose(mixed, one(x, torch.ones(1)), atol=1e-5)
        # per-image styles in one batch
        both = net(x, torch.stack([style_vector(0, 3), style_vector(2, 3)]))
        assert torch.allclose(both[0], ys[0][0], atol=1e-5) and torch.allclose(both[1], ys[2][1], atol=1e-5)
    assert net(x, style_vector(0, 3)).shape == x.shape


def test_style_weights_are_checked():
    assert np.allclose(style_weights({0: 1, 2: 3}, 3), [0.25, 0, 0.75])
    assert np.allclose(style_weights([2, 2], 2), [0.5, 0.5])
    for bad, msg in ((3, "does not exist"), (-1, "does not exist"), ({5: 1.0}, "does not exist"),
                     ([1, 2], "3 weights"), ([0, 0, 0], "not all 0"), ([1, -1, 1], "at least 0"),
                     ([1, float("nan"), 0], "finite"), (True, "index"), ("b", "no names"), (1.5, "not an index")):
        with pytest.raises(NSTError, match=msg):
            style_weights(bad, 3)


def test_styles_by_name():
    names = ["a", "b", "c"]
    assert np.allclose(style_weights("c", 3, names), [0, 0, 1])
    assert np.allclose(style_weights("1", 3, names), [0, 1, 0])
    assert np.allclose(style_weights({"a": 1, 2: 1}, 3, names), [0.5, 0, 0.5])
    with pytest.raises(NSTError, match="its styles are a, b, c"):
        style_weights("d", 3, names)
    assert parse_style("the_scream") == "the_scream"
    assert parse_style("0:0.5, the_scream:0.5") == {"0": 0.5, "the_scream": 0.5}
    for bad in ("", "a:b", "0:1:2"):
        with pytest.raises(NSTError, match="--style"):
            parse_style(bad)


def test_adding_a_style_keeps_the_others_exactly():
    net = _randomized(2)
    more = net.with_style_added()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for i in range(2):
            assert torch.allclose(net(x, style_vector(i, 2)), more(x, style_vector(i, 3)), atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two styles trained together for a few steps, then a third added to the trained network."""
    tmp = tmp_path_factory.mktemp("ms")
    photos = tmp / "photos"
    photos.mkdir()
    for i, name in enumerate(("chelsea.jpg", "coffee.jpg", "chelsea.jpg")):
        Image.open(DATA / name).convert("RGB").rotate(20 * i).resize((96, 64)).save(photos / f"p{i}.png")
    third = tmp / "stripes.png"  # a third "painting": diagonal colour stripes
    yy, xx = np.mgrid[0:128, 0:128]
    Image.fromarray(np.stack([(np.sin((xx + yy) / 5) * 127 + 128), (np.cos(xx / 7) * 127 + 128),
                              np.full_like(xx, 60)], -1).astype(np.uint8)).save(third)
    common = ["--data", str(photos), "--size", "32", "--width", "0.25", "--style-size", "64", "--lr", "5e-3",
              "--log-every", "2", "-q"]
    two = tmp / "two.pt"
    assert main(["train", "--arch", "multistyle", "--style", str(STYLES[0]), "--style", str(STYLES[1]),
                 "-o", str(two), "--steps", "8", *common]) == 0
    three = tmp / "three.pt"
    assert main(["train", "--arch", "multistyle", "--add-to", str(two), "--style", str(third),
                 "-o", str(three), "--steps", "4", *common]) == 0
    return tmp, two, three


def test_training_learns_each_style_and_adding_one_changes_only_its_rows(trained):
    _, two, three = trained
    net2, meta2 = load_model(two)
    fresh = create("multistyle", n_styles=2, width=0.25)
    for norm, init in zip(net2.norms(), fresh.norms(), strict=True):
        for i in range(2):  # every style's rows moved from their initial values: both styles trained
            assert not torch.equal(norm.gamma[i], init.gamma[i].detach())
    assert [s["name"] for s in meta2["styles"]] == ["starry_night", "the_scream"] and meta2["steps"] == 8
    net3, meta3 = load_model(three)
    assert net3.n_styles == 3 and [s["name"] for s in meta3["styles"]][-1] == "stripes"
    s2, s3 = net2.state_dict(), net3.state_dict()
    for k, v in s2.items():
        if k.endswith((".gamma", ".beta")):
            assert torch.equal(s3[k][:2], v), k
        else:
            assert torch.equal(s3[k], v), k  # the convolutions are frozen
    added = [not torch.allclose(s3[k][2], s2[k].mean(0)) for k in s2 if k.endswith(".gamma")]
    assert any(added)  # the new style's scales learned (they start as the mean of the others)


def test_one_style_is_a_johnson_network():
    net = _randomized(3)
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        for k in range(3):
            single = net.single_style(k).eval()
            assert type(single).__name__ == "TransformerNet"
            assert torch.allclose(single(x), net(x, style_vector(k, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="not one of"):
        net.single_style(3)


def test_init_starts_a_johnson_model_from_one_style(trained, tmp_path):
    """--init: a Johnson run starts from the multistyle network's convolutions and one style's norms
    (step 0 reproduces that style), then every weight learns; the model records where it started."""
    tmp, two, _ = trained
    photos = tmp / "photos"
    common = ["train", "--style", str(STYLES[1]), "--data", str(photos), "--size", "32", "--width", "0.25",
              "--style-size", "64", "--lr", "5e-3", "-q", "--init", str(two)]
    out = tmp_path / "scream.pt"
    assert main([*common, "--init-style", "the_scream", "-o", str(out), "--steps", "3"]) == 0
    net2, _ = load_model(two)
    johnson, meta = load_model(out)
    assert meta["init"]["style"] == "the_scream" and meta["init"]["arch"] == "multistyle"
    assert meta["training"]["init_style"] == "the_scream"
    start = net2.single_style(1).state_dict()
    moved = [k for k, v in johnson.state_dict().items() if not torch.allclose(v, start[k])]
    assert any(k.endswith("weight") and ".1." in k for k in moved)  # convolutions learn too
    assert main([*common, "--init-style", "9", "-o", str(tmp_path / "a.pt"), "--steps", "1"]) != 0
    assert main([*common, "--init-style", "monet", "-o", str(tmp_path / "b.pt"), "--steps", "1"]) != 0
    assert main([*common, "--width", "0.5", "-o", str(tmp_path / "c.pt"), "--steps", "1"]) != 0
    assert main([*common, "--arch", "multistyle", "-o", str(tmp_path / "d.pt"), "--steps", "1"]) != 0
    for bad in ("a", "b", "c", "d"):
        assert not (tmp_path / f"{bad}.pt").exists()


def test_add_to_refuses_other_models(trained, tmp_path):
    _, two, _ = trained
    single = tmp_path / "single.pt"
    save_model(single, create("johnson", width=0.25), "johnson")
    args = ["train", "--arch", "multistyle", "--style", str(STYLES[0]), "--data", str(DATA), "-o",
            str(tmp_path / "x.pt"), "--steps", "1", "--size", "32", "-q"]
    assert main([*args, "--add-to", str(single)]) != 0
    assert main(["train", "--style", str(STYLES[0]), "--style", str(STYLES[1]), "--data", str(DATA), "-o",
                 str(tmp_path / "y.pt"), "--steps", "1", "--size", "32", "-q"]) != 0  # johnson: one style


def test_export_runtime_and_cli(trained, tmp_path):
    from nst_deploy.export import export_model

    _, _, three = trained
    manifest = export_model(three, tmp_path / "exp")
    assert set(manifest["artifacts"]) == {"torchscript", "onnx", "onnx_tiles"}
    assert manifest["verification"]["onnx"]["max_abs_error"] < 1e-4
    eager = Stylizer.load(three, device="cpu")
    x = np.random.default_rng(0).random((48, 60, 3), dtype=np.float32)
    for fmt in ("model.onnx", "model.pt"):
        s = Stylizer.load(tmp_path / "exp" / fmt, device="cpu")
        assert s.n_styles == 3
        for style in (0, 2, {0: 0.5, 1: 0.5}, [1, 1, 2]):
            assert np.abs(s(x, style=style) - eager(x, style=style)).max() < 1e-4, (fmt, style)
        s.style = 1
        assert np.abs(s(x) - eager(x, style=1)).max() < 1e-4
        with pytest.raises(NSTError, match="does not exist"):
            s(x, style=3)
    # tiled: the tiles graph takes the style too
    s = Stylizer.load(tmp_path / "exp" / "model.onnx", device="cpu")
    big = torch.rand(1, 3, 300, 400)
    whole = s(big, style=2)
    s.memory_mb, seen = 20, []
    s.progress = lambda done, total: seen.append(total)
    tiled = s(big, style=2)
    assert seen and seen[-1] > 1 and tiled.shape == whole.shape
    import nst_deploy.tiling as T

    stats_of, run_tile = s.engine.bound(style_weights(2, 3)).stats_runners()
    ref = run_tile(big, stats_of(T.thumbnail(big, s.thumbnail_shape(1, 300, 400))))
    assert (tiled - ref).abs().max() < 1e-4  # tiles agree with the whole image under the same statistics
    # nst run --style
    photo = tmp_path / "p.png"
    Image.fromarray((x * 255).astype(np.uint8)).save(photo)
    for i, (style, want) in enumerate((("2", 2), ("0:0.5,1:0.5", {0: 0.5, 1: 0.5}), ("stripes", 2),
                                       ("the_scream:0.5,0:0.5", {0: 0.5, 1: 0.5}))):
        out = tmp_path / f"o{i}.png"
        assert main(["run", str(tmp_path / "exp" / "model.onnx"), str(photo), "-o", str(out), "--style", style,
                     "-q"]) == 0
        ref = np.asarray(Stylizer.load(tmp_path / "exp" / "model.onnx")(Image.open(photo), style=want)).astype(int)
        assert np.abs(np.asarray(Image.open(out)).astype(int) - ref).max() <= 1
    for bad in ("7", "a:b", "0:-1", "monet"):
        assert main(["run", str(tmp_path / "exp" / "model.onnx"), str(photo), "-o", str(tmp_path / "bad.png"),
                     "--style", bad, "-q"]) != 0
    assert not (tmp_path / "bad.png").exists()
    assert main(["run", "starry_night", str(photo), "-o", str(tmp_path / "bad.png"), "--style", "1", "-q"]) != 0
    # a contact sheet shows every style of the network, each as the runtime gives it
    from nst_deploy.sheet import GAP, LABEL_H, contact_sheet

    sheet = contact_sheet(x, {"ms": tmp_path / "exp" / "model.onnx"})
    assert sheet.shape == (2 * (48 + LABEL_H) + 3 * GAP, 2 * 60 + 3 * GAP, 3)  # photo + 3 styles, 2 x 2
    cell = sheet[GAP + 48 + LABEL_H + GAP:][:48, GAP + 60 + GAP:][:, :60]  # row 1, column 1: style 2
    want = np.clip(s(x, style=2), 0, 1)
    assert np.abs(cell - np.round(want * 255) / 255).max() <= 1.01 / 255


def test_triton_config_takes_the_style_vector(trained, tmp_path):
    from google.protobuf import descriptor_pool, message_factory, text_format
    from nst_deploy.export import export_model

    from ..export.test_triton import _schema_file  # the schema of Triton's ModelConfig

    _, _, three = trained
    export_model(three, tmp_path / "exp", triton_repo=tmp_path / "repo", check=False)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema_file())
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
    for model, names in (("three", ["image", "style"]), ("three_torchscript", ["INPUT__0", "INPUT__1"])):
        cfg = text_format.Parse((tmp_path / "repo" / model / "config.pbtxt").read_text(), cls())
        assert [i.name for i in cfg.input] == names and list(cfg.input[1].dims) == [3]
