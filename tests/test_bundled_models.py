"""The bundled feed-forward models stylize photographs they never saw in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nst_deploy.kernels import gram

from nst_deploy.cli import main
from nst_deploy.fsutil import sha256_file
from nst_deploy.images import cover_crop, load_image
from nst_deploy.lossnets import load_lossnet
from nst_deploy.nets.io import bundled_models, load_model, read_model

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"
LAYERS = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
#: The multistyle network's styles, in the order of its style vector (the paintings: scripts/fetch_paintings.sh).
MULTI = "multistyle__paintings"
MULTI_STYLES = ["starry_night", "the_scream", "shipwreck", "bridgewater_madonna", "mona_lisa",
                "girl_with_a_pearl_earring", "cafe_terrace_at_night", "the_night_cafe"]
#: The per-style Johnson models: model -> the painting file it was trained on.
EXPECTED = {"johnson__starry_night": "starry_night.jpg", "johnson__the_scream": "the_scream.jpg",
            "johnson__shipwreck": "shipwreck.jpg", "johnson__bridgewater_madonna": "bridgewater_madonna.jpg",
            "johnson__mona_lisa": "mona_lisa.jpg",
            "johnson__girl_with_a_pearl_earring": "girl_with_a_pearl_earring.png",
            "johnson__cafe_terrace_at_night": "cafe_terrace_at_night.webp",
            "johnson__the_night_cafe": "the_night_cafe.webp"}


def _packaged(painting: str) -> str | None:
    """The painting's file name where the package has the painting (two of them), else None."""
    return painting if (DATA / painting).is_file() else None


#: (model, style index or None, the painting where the package has it): every bundled style.
EVERY_STYLE = [(name, None, _packaged(painting)) for name, painting in EXPECTED.items()] + [
    (MULTI, i, _packaged(f"{n}.jpg")) for i, n in enumerate(MULTI_STYLES)]


def _stylize(net, x, index):
    from nst_deploy.nets.multistyle import style_vector

    with torch.no_grad():
        return net(x) if index is None else net(x, style_vector(index, net.n_styles)[None])


@pytest.fixture(scope="module")
def vgg():
    return load_lossnet("vgg19")


def _style_distance(net, x, style) -> float:
    """Sum over layers of ``1/(4 C^2) ||G(x) - G(style)||^2`` (Gram normalized by H W)."""
    with torch.no_grad():
        fx, fs = net(x, LAYERS), net(style, LAYERS)
    total = 0.0
    for name in LAYERS:
        c = fx[name].shape[1]
        total += float((gram(fx[name], "hw") - gram(fs[name], "hw")).square().sum()) / (4 * c * c)
    return total


def test_bundled_models_are_listed_and_small():
    models = bundled_models()
    assert set(EXPECTED) | {MULTI} <= set(models)
    # the nine networks (fp16 weights) under 8 MB in all; with their int8 ONNX copies and records under 14 MB
    assert sum(p.stat().st_size for p in models.values()) < 8e6
    assert sum(f.stat().st_size for f in models[MULTI].parent.iterdir()) < 14e6
    for name, path in models.items():
        if name in EXPECTED:
            assert read_model(path)["meta"]["style"] == EXPECTED[name]
        assert path.stat().st_size <= 8 * 2**20
        state = read_model(path)
        assert all(v.dtype == torch.float16 for v in state["state_dict"].values() if v.is_floating_point())
        record = json.loads(path.with_suffix(".json").read_text())
        # nst train, or the style-weight sweep that runs it (scripts/sweep_style_weight.py)
        assert record["command"].startswith(("nst train", "python scripts/sweep_style_weight.py"))
        assert record["data"]["files"]
        assert record["loss_curve"][-1]["step"] == state["meta"]["steps"]
        # chelsea is held out of the training photographs
        assert not any("chelsea" in f["file"] or "coffee" in f["file"] for f in record["data"]["files"]), name


def test_bundled_multistyle_network_names_its_paintings():
    path = bundled_models()[MULTI]
    net, meta = load_model(path)
    assert net.n_styles == len(MULTI_STYLES) and [st["name"] for st in meta["styles"]] == MULTI_STYLES
    record = json.loads(path.with_suffix(".json").read_text())
    assert [st["sha256"] for st in record["styles"]] == [st["sha256"] for st in meta["styles"]]
    assert meta["styles"][0]["sha256"] == sha256_file(DATA / "starry_night.jpg")
    # each style is its own picture: the outputs of any two styles differ clearly
    x = load_image(DATA / "chelsea.jpg", size=128)
    outs = [_stylize(net, x, i) for i in range(net.n_styles)]
    gaps = [float((a - b).abs().mean()) for i, a in enumerate(outs) for b in outs[i + 1:]]
    assert min(gaps) > 0.03, gaps


@pytest.mark.parametrize("name,index,painting", [s for s in EVERY_STYLE if s[2]])
def test_bundled_model_stylizes_an_unseen_photo(vgg, name, index, painting):
    net, meta = load_model(bundled_models()[name])
    assert index is not None or meta["style"] == painting
    style = load_image(DATA / painting, size=192)
    # the style distance falls 2.6x-11x on both photographs (measured at 128-256 px: after / before
    # 0.09-0.17 for Starry Night, 0.11-0.38 for The Scream, whose colours are far from the cat's)
    for photo_name in ("coffee.jpg", "chelsea.jpg"):
        photo = load_image(DATA / photo_name, size=192)
        out = _stylize(net, photo, index)
        assert out.shape == photo.shape
        before, after = _style_distance(vgg, photo, style), _style_distance(vgg, out, style)
        assert after < 0.5 * before, (photo_name, before, after)
    # the photograph is still there: on the deep content layer relu4_2 the output is much closer to it
    # than to another photograph (measured: 0.42 and 0.20 of the distance to the coffee cup)
    other = cover_crop(load_image(DATA / "coffee.jpg"), tuple(photo.shape[-2:]))
    with torch.no_grad():
        f_out, f_in, f_other = (vgg(x, "relu4_2")["relu4_2"] for x in (out, photo, other))
    assert float((f_out - f_in).square().mean()) < 0.6 * float((f_out - f_other).square().mean())


def test_nst_run_with_a_bundled_name(tmp_path, capsys):
    out = tmp_path / "cat.jpg"
    assert main(["run", "starry_night", str(DATA / "chelsea.jpg"), "-o", str(out), "--size", "96", "-q"]) == 0
    assert load_image(out).shape[-1] == 96
    assert main(["run", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "starry_night" in listed and "distilled from johnson__starry_night.pt, width 0.25" in listed
    assert main(["run", "monet", str(DATA / "chelsea.jpg"), "-o", str(tmp_path / "x.png")]) == 2
    assert "bundled models: " in capsys.readouterr().err


#: Girl with a Pearl Earring puts 1.31x (multistyle, 2101 steps; 1.68x at 1101 steps) and 1.53x (the Johnson
#: model started from it) the interior's gradient into the border of a flat grey image: it paints its bright
#: folds near the edges around a dark middle (by eye no line along the border), and on both photographs its
#: bands are under the photographs' own. Strict, so that a retrained network that passes says so.
_FLAT_FRINGE = pytest.mark.xfail(strict=True, reason="flat-grey border ratio 1.31 / 1.53 (issue 20)")
_FRINGED = {(MULTI, 5), ("johnson__girl_with_a_pearl_earring", None)}


@pytest.mark.parametrize("name,index,painting", [
    pytest.param(*s, marks=_FLAT_FRINGE) if s[:2] in _FRINGED else s for s in EVERY_STYLE])
def test_no_border_fringe(name, index, painting):
    """The outermost 2 px of an output are no busier than its interior (a flat grey input: within 20 %) and
    than the photo's own borders allow (at most 0.15 over the larger of 1 and the photo's ratio: a style
    adds texture everywhere, the borders included). Without the networks' mirrored margin the bundled
    Starry Night of the 128-px training drew a fringe there (measured 1.87 and 2.2)."""
    from nst_deploy.quality import border_ratio

    net, _ = load_model(bundled_models()[name])
    torch.manual_seed(0)
    flat = 0.5 + 0.02 * torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert border_ratio(_stylize(net, flat, index), 2) < 1.2
        for photo in ("chelsea", "coffee"):
            x = load_image(DATA / f"{photo}.jpg", size=384)
            own, out = border_ratio(x, 2), border_ratio(_stylize(net, x, index), 2)
            assert out <= max(own, 1.0) + 0.15, (photo, out, own)
