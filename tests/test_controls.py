"""Run-time controls of the feed-forward path: strength and preserve_color (nst_deploy.controls)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nst_deploy.controls import RGB_TO_YIQ, apply_controls, local_contrast
from nst_deploy.errors import NSTError
from nst_deploy.images import load_image
from nst_deploy.models import bundled_models, load_paths
from nst_deploy.quality import Judge
from nst_deploy.runtime import Stylizer

from .conftest import DATA


@pytest.fixture(scope="module")
def onnx_stylizer(tmp_path_factory):
    from nst_deploy.export import export_model

    out = tmp_path_factory.mktemp("exp") / "exp"  # a float32 ONNX export (the bundled copy is int8)
    export_model(bundled_models()["johnson__starry_night"], out, formats=("onnx",), check=False)
    return Stylizer.load(out / "model.onnx", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(DATA / "chelsea.jpg").convert("RGB"), np.float32) / 255


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ RGB_TO_YIQ[0]


def test_strength_ends_are_the_photo_and_the_output(onnx_stylizer, photo):
    full = onnx_stylizer(photo)
    assert np.abs(onnx_stylizer(photo, strength=0.0) - photo).max() < 1e-6
    assert np.array_equal(onnx_stylizer(photo, strength=1.0), full)
    assert np.abs(apply_controls(full, photo, 1e-6) - photo).max() < 1e-3  # continuous at the ends
    assert np.abs(apply_controls(full, photo, 1 - 1e-6) - full).max() < 1e-3


def test_strength_keeps_local_contrast_where_a_fade_loses_it(onnx_stylizer, photo):
    """Halfway, a plain fade's local contrast falls under the blend of the two images' (detail averaged
    away); the control's stays within 3% of it, and the judged style ratio falls with strength."""
    full = onnx_stylizer(photo)
    lp, lo = (float(local_contrast(_luma(x)).mean()) for x in (photo, full))
    judge = Judge(load_image(DATA / "starry_night.jpg"), size=256)
    ratios = []
    for s in (0.25, 0.5, 0.75):
        want = (1 - s) * lp + s * lo
        ours = apply_controls(full, photo, s)
        fade = float(local_contrast(_luma((1 - s) * photo + s * full)).mean())
        got = float(local_contrast(_luma(ours)).mean())
        assert abs(got - want) < 0.03 * want and fade < got, (s, want, got, fade)
        ratios.append(judge.score(torch.from_numpy(ours).permute(2, 0, 1)[None],
                                  torch.from_numpy(photo).permute(2, 0, 1)[None]).style_ratio)
    assert ratios[0] > ratios[1] > ratios[2], ratios


def test_preserve_color_keeps_the_photos_chroma(onnx_stylizer, photo):
    full = onnx_stylizer(photo)
    kept = onnx_stylizer(photo, preserve_color=True)
    yk, yp, yf = kept @ RGB_TO_YIQ.T, photo @ RGB_TO_YIQ.T, full @ RGB_TO_YIQ.T
    inside = (kept > 0.01).all(-1) & (kept < 0.99).all(-1)  # where no channel was clipped
    assert inside.mean() > 0.8  # the checks below cover most of the picture (clipping grows with the model's contrast)
    assert np.abs(yk[..., 1:] - yp[..., 1:])[inside].max() < 1e-4
    assert np.abs(yk[..., 0] - yf[..., 0])[inside].max() < 1e-4
    # the stylized colours are gone: the output's chroma is far from the photo's
    assert np.abs(yf[..., 1:] - yp[..., 1:]).mean() > 20 * np.abs(yk[..., 1:] - yp[..., 1:]).mean()


def test_every_input_kind_and_the_attributes(onnx_stylizer, photo):
    s = Stylizer.load(bundled_models()["johnson__starry_night"], device="cpu")  # the eager model file
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
    arr = onnx_stylizer(photo, strength=0.4, preserve_color=True)
    ten = s(x, strength=0.4, preserve_color=True)
    assert ten.shape == x.shape and ten.dtype == x.dtype
    assert np.abs(ten[0].permute(1, 2, 0).numpy() - arr).max() < 2e-3  # eager and ONNX (fp16-stored weights)
    s.strength, s.preserve_color = 0.4, True
    assert torch.equal(s(x), ten)
    pil = s(Image.fromarray((photo * 255 + 0.5).astype(np.uint8)))
    assert pil.size == (photo.shape[1], photo.shape[0])
    for bad in (-0.1, 1.5, float("nan"), "1", True):
        with pytest.raises(NSTError, match="strength"):
            s(x, strength=bad)


def test_tiled_controls_equal_the_whole_image():
    """The controls' statistics are local: applied per tile they give what they give on the whole image
    (computed with the thumbnail's statistics, as tiling does)."""
    s = Stylizer.load(bundled_models()["johnson__starry_night"], device="cpu")
    arr = np.asarray(Image.open(DATA / "chelsea.jpg").convert("RGB"))
    s.memory_mb, s.stats_size = 40, 160
    seen = []
    s.progress = lambda done, total: seen.append(total)
    tiled = s(arr, strength=0.5, preserve_color=True)
    assert seen and seen[-1] >= 4
    th, tw = s.thumbnail_shape(1, *arr.shape[:2])
    thumb = np.array(Image.fromarray(arr).resize((tw, th), Image.Resampling.BOX))
    stats_of, run_tile = s.engine.stats_runners()
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = run_tile(x, stats_of(torch.from_numpy(thumb).permute(2, 0, 1)[None].float() / 255)).float()
    ref = apply_controls(y[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(), 0.5, True)
    ref = (ref * 255 + 0.5).astype(np.uint8)
    diff = np.abs(np.asarray(tiled).astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_nst_run_controls_without_torch(tmp_path):
    photo = tmp_path / "photo.png"
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((120, 80)).save(photo)
    code = ("import sys; from nst_deploy.cli import main; "
            f"c = main(['run', 'starry_night', {str(photo)!r}, '-o', {str(tmp_path / 'o.png')!r}, '-q', "
            "'--strength', '0.5', '--preserve-color', '--device', 'cpu']); print(c, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["0", "False"], proc.stdout + proc.stderr
    got = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    path, fallback = load_paths(bundled_models()["johnson__starry_night"], on_cpu=True)  # what nst run loads
    s = Stylizer.load(path, device="cpu", fallback=fallback)
    want = np.asarray(s(Image.open(photo), strength=0.5, preserve_color=True)).astype(int)
    assert np.abs(got - want).max() <= 1
    bad = subprocess.run([sys.executable, "-m", "nst_deploy.cli", "run", "starry_night", str(photo), "-o",
                          str(tmp_path / "bad.png"), "--strength", "2"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "strength" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.png").exists()


def test_an_upscaling_network_blends_with_the_upscaled_photo(tmp_path):
    from nst_deploy.nets import create
    from nst_deploy.nets.io import save_model

    torch.manual_seed(0)
    save_model(tmp_path / "mm.pt", create("multimodal", width=0.25, levels=2).eval(), "multimodal")
    s = Stylizer.load(tmp_path / "mm.pt", device="cpu")
    photo = np.random.default_rng(0).random((40, 48, 3), dtype=np.float32)
    full = s(photo)
    assert full.shape == (80, 96, 3)
    zero = s(photo, strength=0.0)  # the photo, at the output's size
    up = np.asarray(Image.fromarray(np.ascontiguousarray(photo[..., 0])).resize((96, 80), Image.Resampling.BICUBIC))
    assert np.abs(zero[..., 0] - np.clip(up, 0, 1)).max() < 1e-5
    half = s(photo, strength=0.5)
    assert np.abs(half - zero).mean() > 0.02 and np.abs(half - full).mean() > 0.02
