"""Tiling with shared instance-norm statistics: the plan, the statistics swap, and the Stylizer's tiled path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nst_deploy.export import export_model
from PIL import Image

from nst_deploy import tiling as T
from nst_deploy.errors import NSTError
from nst_deploy.nets import create
from nst_deploy.nets.io import bundled_models, load_model, save_model
from nst_deploy.runtime import Stylizer

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"


@pytest.mark.parametrize("n,tile,overlap", [(451, 128, 60), (300, 96, 40), (1000, 256, 132), (97, 128, 60)])
def test_plan_covers_with_aligned_overlapping_tiles(n, tile, overlap):
    spans = T.plan_axis(n, tile, overlap, 4)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (s0, e0), (s1, _e1) in zip(spans, spans[1:], strict=False):
        assert s1 % 4 == 0 and s0 < s1 and e0 - s1 >= overlap
    assert all(e - s <= tile + 3 for s, e in spans)
    margin = overlap // 2 - 8
    weights = T.axis_weights(spans, margin)
    total = torch.zeros(n)
    for (s, e), w in zip(spans, weights, strict=True):
        total[s:e] += w
        if s > 0:  # nothing taken from within the receptive-field margin of an inner edge
            assert w[:margin].max() < 1e-6
        if e < n:
            assert w[-margin:].max() < 1e-6
    assert torch.allclose(total, torch.ones(n), atol=1e-6)


def test_swapping_in_own_statistics_changes_nothing():
    torch.manual_seed(0)
    net = create("johnson", width=0.25).eval()
    x = torch.rand(2, 3, 40, 52)
    for module in (net, torch.jit.script(net)):
        rec = T.NormStats()
        with torch.inference_mode():
            with rec:
                ref = module(x)
            with T.NormStats(given=rec.flat()):
                y = module(x)
        assert rec.flat().shape == (2, 2 * sum(rec.channels)) and len(rec.channels) == 15
        assert (y - ref).abs().max() < 1e-5
    with pytest.raises(NSTError, match="do not fit"), torch.inference_mode(), T.NormStats(given=torch.zeros(2, 10)):
        net(x)


def test_probe_measures_the_receptive_field():
    torch.manual_seed(0)
    info = T.probe(create("johnson", width=0.25).eval())
    # 9x9, two stride-2 3x3, ten 3x3 at 1/4, two resize-convs, 9x9: about 60 pixels each side
    assert 40 <= info["radius"] <= 80 and info["output_scale"] == 1
    assert info["norm_channels"][:3] == [8, 16, 32] and info["peak_floats_per_pixel"] > 10


def _whole_with_thumbnail_stats(s: Stylizer, arr: np.ndarray, stats_size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    th, tw = T.thumbnail_size(h, w, stats_size)
    thumb = np.array(Image.fromarray(arr).resize((tw, th), Image.Resampling.BOX))
    stats_of, run_tile = s.engine.stats_runners()
    stats = stats_of(torch.from_numpy(thumb).permute(2, 0, 1)[None].float() / 255)
    y = run_tile(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255, stats).float().cpu()
    return (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    export_model(bundled_models()["johnson__starry_night"], out)
    return out


@pytest.mark.parametrize("name", ["model.onnx", "model.pt", "eager"])
def test_tiled_equals_whole_with_the_same_statistics(exported, name, monkeypatch):
    # cuDNN's TF32 convolutions differ from fp32 by up to 2 levels at 1080p (H200): not a seam
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    path = bundled_models()["johnson__starry_night"] if name == "eager" else exported / name
    s = Stylizer.load(path)
    arr = np.asarray(Image.open(DATA / "chelsea.jpg").convert("RGB"))  # 451x300
    s.memory_mb, s.stats_size = 40, 160
    seen = []
    s.progress = lambda done, total: seen.append((done, total))
    tiled = s(arr)
    assert seen[-1][0] == seen[-1][1] >= 4, "the image was not tiled"
    ref = _whole_with_thumbnail_stats(s, arr, 160)
    diff = np.abs(tiled.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # no seams: tiles agree with the untiled computation
    pil = s(Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), tiled)


def test_tiled_tensor_batch(exported):
    s = Stylizer.load(exported / "model.onnx")
    x = torch.rand(2, 3, 150, 230)
    whole = s(x)
    s.memory_mb = 40
    assert s.needs_tiles(2, 150, 230)
    calls = []
    s.progress = lambda done, total: calls.append(total)
    tiled = s(x)
    assert calls and calls[-1] > 1 and tiled.shape == whole.shape
    th, tw = s.thumbnail_shape(2, 150, 230)
    assert th * tw < 150 * 230 and abs(th / tw - 150 / 230) < 0.02  # what fits the budget, aspect kept
    stats_of, run_tile = s.engine.stats_runners()
    ref = run_tile(x, stats_of(T.thumbnail(x, (th, tw))))
    assert (tiled - ref).abs().max() < 1e-4
    assert not torch.equal(tiled[0], tiled[1])
    s.tile = 150  # a tile side off the stride grid is rounded down to it: still exact
    assert s.tile_side(2, 230, s.engine.tiling_info()) == 148
    assert (s(x) - ref).abs().max() < 1e-4


def test_tiled_multimodal_output_scale(tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "mm.pt", create("multimodal", width=0.25, levels=2), "multimodal",
               {"style": "x", "output_scale": 2})
    s = Stylizer.load(tmp_path / "mm.pt")
    x = torch.rand(1, 3, 120, 170)
    whole = s(x)
    s.memory_mb = whole.numel() * 4 * 30 / 2**20  # far below the whole image's need
    s.stats_size = 170
    tiled = s(x)
    assert tiled.shape == (1, 3, 240, 340) and (tiled - whole).abs().max() < 1e-4


def test_tiling_errors(exported, tmp_path):
    s = Stylizer.load(exported / "model.onnx")
    s.memory_mb = 0.5
    with pytest.raises(NSTError, match="too small to tile"):
        s(torch.rand(1, 3, 300, 300))
    d = tmp_path / "no_tiles"
    d.mkdir()
    (d / "model.onnx").write_bytes((exported / "model.onnx").read_bytes())
    s = Stylizer.load(d / "model.onnx", memory_mb=10)
    with pytest.raises(NSTError, match="model.tiles.onnx"):
        s(torch.rand(1, 3, 300, 300))
    with pytest.raises(NSTError, match="memory_mb"):
        Stylizer.load(exported / "model.onnx", memory_mb=0)
    net, _ = load_model(bundled_models()["johnson__starry_night"])
    assert Stylizer.load(exported / "model.onnx").working_bytes(1, 100, 100) > 100 * 100 * 4 * 10
    del net


def test_nst_run_tiles_with_progress(tmp_path, capsys):
    from nst_deploy.cli import main

    out = tmp_path / "out.png"
    assert main(["run", "starry_night", str(DATA / "chelsea.jpg"), "-o", str(out), "--memory-mb", "40"]) == 0
    err = capsys.readouterr().err
    assert "tile " in err and Image.open(out).size == (451, 300)
    assert main(["run", "starry_night", str(DATA / "chelsea.jpg"), "-o", str(tmp_path / "x.png"),
                 "--memory-mb", "0.5"]) == 2
    assert "too small to tile" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
