"""Video through the runtime (PyAV): round trip, frames, audio, a cut, flicker, failures."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.errors import NSTError
from nst_deploy.models import bundled_models, bundled_onnx
from nst_deploy.runtime import Stylizer

from .conftest import DATA

av = pytest.importorskip("av")
from nst_deploy.video import flicker, stylize_video  # noqa: E402

FPS, N, W, H = 12, 24, 128, 96


def make_clip(path, n: int = N, fps: int = FPS, audio: bool = True):
    """A red square moving over a photo (lossless RGB H.264) with a 440 Hz tone (AAC); returns the frames."""
    photo = np.asarray(Image.open(DATA / "chelsea.jpg").convert("RGB").resize((W, H)))
    frames = []
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264rgb", rate=fps, options={"crf": "0"})
        v.width, v.height, v.pix_fmt = W, H, "rgb24"
        a = out.add_stream("aac", rate=22050) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(n):
            img = photo.copy()
            img[30:60, 8 + 3 * i:38 + 3 * i] = (220, 40, 40)
            frames.append(img)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if a is not None:
            t = np.arange(int(22050 * n / fps)) / 22050
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, len(tone), 1024):
                fr = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="flt", layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = 22050, k, Fraction(1, 22050)
                for p in a.encode(fr):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return frames


def _streams(path):
    with av.open(str(path)) as c:
        info = {s.type: (s.frames, float(s.duration * s.time_base) if s.duration else None) for s in c.streams}
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = c.streams.video[0].average_rate
    return info, frames, rate


@pytest.fixture(scope="module")
def stylizer():
    return Stylizer.load(bundled_onnx(bundled_models()["johnson__starry_night"]), device="cpu")


def test_round_trip_equals_per_frame_stylization(tmp_path, stylizer):
    clip = tmp_path / "clip.mp4"
    frames = make_clip(clip)
    out = tmp_path / "out.mp4"
    s = stylize_video(stylizer, clip, out, lossless=True, batch=5)
    assert (s.frames, s.fps, s.width, s.height, s.audio) == (N, FPS, W, H, True)
    info, got, rate = _streams(out)
    src_info, _, _ = _streams(clip)
    assert rate == FPS and len(got) == N and info["video"] == (N, N / FPS)
    assert "audio" in info and abs(info["audio"][1] - src_info["audio"][1]) < 0.05  # the audio copied
    for i in (0, 7, 23):  # lossless: each frame is the Stylizer's output of the input frame
        want = np.asarray(stylizer(frames[i])).astype(int)
        assert np.abs(got[i].astype(int) - want).max() <= 1, i
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_cut_from_the_cli(tmp_path):
    clip = tmp_path / "clip.mp4"
    make_clip(clip)
    out = tmp_path / "cut.mp4"
    assert main(["run", "starry_night", str(clip), "-o", str(out), "--start", "0.5", "--duration", "1", "-q"]) == 0
    info, got, _ = _streams(out)
    assert len(got) == FPS and info["video"][1] == pytest.approx(1.0) and abs(info["audio"][1] - 1.0) < 0.1


def test_lanes_split_each_batch_in_order(tmp_path, stylizer):
    """--lanes 2: each batch's frames in two parts on two threads, the same frames as one lane."""
    clip = tmp_path / "clip.mp4"
    make_clip(clip, audio=False)
    outs: dict[int, list] = {1: [], 2: []}
    for lanes in (1, 2):
        stylize_video(stylizer, clip, tmp_path / f"l{lanes}.mp4", lossless=True, batch=5, lanes=lanes,
                      keep=lambda a, b, ys=outs[lanes]: ys.append(b))
    assert len(outs[2]) == N
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(outs[1], outs[2], strict=True)) <= 1
    seen = set()

    def spy(x):
        seen.add(threading.get_ident())
        time.sleep(0.05)  # the other part starts meanwhile
        return stylizer(x)

    stylize_video(spy, clip, tmp_path / "spy.mp4", batch=4, lanes=2)
    assert len(seen) == 2 and threading.get_ident() not in seen
    with pytest.raises(NSTError, match="--lanes must be at least 1"):
        stylize_video(stylizer, clip, tmp_path / "x.mp4", lanes=0)


def test_stabilization_lowers_flicker_without_ghosting(tmp_path, stylizer):
    """The figure: consecutive output frames' mean absolute difference over the input frames'."""
    clip = tmp_path / "clip.mp4"
    make_clip(clip, audio=False)
    figures, outs = {}, {}
    for stab in (0.0, 0.8):
        ins, ys = [], []
        stylize_video(stylizer, clip, tmp_path / f"s{stab}.mp4", stabilize=stab, lossless=True,
                      keep=lambda a, b, ins=ins, ys=ys: (ins.append(a), ys.append(b)))
        figures[stab], outs[stab] = flicker(ys, ins), ys
    assert figures[0.8] < 0.7 * figures[0.0], figures
    # where the picture changed (the strips the square left and entered), the stabilized frame is the new
    # frame's output: no trail of the previous one
    i = 12
    changed = np.zeros((H, W), bool)
    changed[30:60, 8 + 3 * (i - 1):8 + 3 * i] = True
    changed[30:60, 38 + 3 * (i - 1):38 + 3 * i] = True
    d = np.abs(outs[0.8][i].astype(int) - outs[0.0][i].astype(int)).mean(-1)
    assert d[changed].mean() < 1.5, d[changed].mean()


def test_failures_leave_no_file(tmp_path, stylizer, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    assert main(["run", "starry_night", str(bad), "-o", str(tmp_path / "o.mp4")]) != 0
    assert "cannot read video" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()
    clip = tmp_path / "clip.mp4"
    make_clip(clip, n=6, audio=False)
    assert main(["run", "starry_night", str(clip), "-o", str(tmp_path / "o.png")]) != 0
    with pytest.raises(NSTError, match="--start"):
        stylize_video(stylizer, clip, tmp_path / "o.mp4", start=-1)

    def interrupted(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stylize_video(interrupted, clip, tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == [bad, clip] or sorted(tmp_path.iterdir()) == sorted([bad, clip])
