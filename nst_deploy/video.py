"""Video files through a style network: ``nst run MODEL clip.mp4 -o out.mp4`` (the ``video`` extra: PyAV).

Frames are decoded, stylized in batches by the :class:`~nst_deploy.runtime.Stylizer` and encoded
(H.264, or lossless RGB with ``lossless``) at the input's frame rate, size and timestamps; the first
audio stream is copied packet for packet. ``start`` and ``duration`` (seconds) cut a part. The output
is written to a temporary file beside it and renamed at the end: a failure or Ctrl-C leaves no
partial video.

**Flicker.** A feed-forward network stylizes each frame on its own, and its texture jumps between
frames even where the picture does not move. ``stabilize`` (0 to 1) blends each output with the
previous output where the input did not change: ``out_t = a * out_{t-1} + (1 - a) * y_t`` with
``a = stabilize * exp(-|x_t - x_{t-1}| / tau)`` per pixel (``tau`` = 2/255 of mean absolute change
in RGB), so static regions hold still while moving ones follow the new frame (no ghosting where
things move). :func:`flicker` is the figure: the mean absolute difference between consecutive output
frames over that of the input frames.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import NSTError

__all__ = ["VIDEO_SUFFIXES", "VideoSummary", "flicker", "import_av", "is_video", "stylize_video"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
#: Mean absolute RGB change (0-1 scale) over which a pixel counts as moving (the weight falls by 1/e).
TAU = 2.0 / 255.0


def import_av():
    try:
        import av
    except ImportError:
        raise NSTError("video needs PyAV: pip install 'nst-deploy[video]'") from None
    return av


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoSummary:
    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    seconds: float


def flicker(frames_out: list[np.ndarray], frames_in: list[np.ndarray]) -> float:
    """Mean absolute difference between consecutive output frames over that of the input frames."""
    if len(frames_out) < 2:
        return float("nan")
    d_out = np.mean([np.abs(b.astype(np.float32) - a.astype(np.float32)).mean()
                     for a, b in zip(frames_out, frames_out[1:], strict=False)])
    d_in = np.mean([np.abs(b.astype(np.float32) - a.astype(np.float32)).mean()
                    for a, b in zip(frames_in, frames_in[1:], strict=False)])
    return float(d_out / max(d_in, 1e-12))


class _Stabilizer:
    def __init__(self, strength: float):
        if not 0.0 <= strength <= 1.0:
            raise NSTError(f"--stabilize must be from 0 to 1, got {strength}")
        self.strength = strength
        self.prev_in: np.ndarray | None = None
        self.prev_out: np.ndarray | None = None

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``x`` the input frame, ``y`` the network's output (float32 HxWx3 in [0, 1])."""
        if self.strength > 0 and self.prev_out is not None and self.prev_out.shape == y.shape:
            change = np.abs(x - self.prev_in).mean(-1, keepdims=True)
            a = self.strength * np.exp(-change / TAU)
            y = a * self.prev_out + (1.0 - a) * y
        self.prev_in, self.prev_out = x, y
        return y


def stylize_video(stylize: Callable[[np.ndarray], np.ndarray], src: str | os.PathLike, dst: str | os.PathLike, *,
                  start: float | None = None, duration: float | None = None, batch: int = 4,
                  stabilize: float = 0.0, lossless: bool = False, crf: int = 18, lanes: int = 1,
                  progress: Callable[[int, int, float], None] | None = None,
                  keep: Callable[[np.ndarray, np.ndarray], None] | None = None) -> VideoSummary:
    """Stylize the video ``src`` into ``dst`` (see the module docstring); ``stylize`` takes an NxHxWx3
    float32 batch. ``keep(input_frame, output_frame)`` sees every frame pair (uint8), e.g. for :func:`flicker`.
    ``lanes`` > 1: each batch is split into that many parts stylized at once on their own threads
    (``stylize`` must be thread-safe, as the ``Stylizer`` is; the frames' order is kept), as
    :func:`nst_deploy.jobs.run_items` does with whole batches.

    Raises:
        NSTError: no PyAV, an unreadable file or one without a video stream, a bad start or duration.
    """
    av = import_av()
    src, dst = Path(src), Path(dst)
    if start is not None and start < 0 or duration is not None and duration <= 0:
        raise NSTError("--start must be >= 0 and --duration > 0")
    if lanes < 1:
        raise NSTError(f"--lanes must be at least 1, got {lanes}")
    if not dst.parent.is_dir():
        raise NSTError(f"cannot write '{dst}': folder '{dst.parent}' does not exist")
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as e:
        raise NSTError(f"cannot read video '{src}': {e}") from None
    tmp = dst.with_name(f".{dst.name}.nst-tmp{dst.suffix}")
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="nst-infer") if lanes > 1 else None
    try:
        with inp:
            if not inp.streams.video:
                raise NSTError(f"'{src}' has no video stream")
            vin = inp.streams.video[0]
            ain = inp.streams.audio[0] if inp.streams.audio else None
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            tb = vin.time_base
            total = int(vin.frames or 0)
            if duration is not None:
                total = int(round(duration * float(rate)))
            w, h = vin.codec_context.width, vin.codec_context.height
            with av.open(str(tmp), "w") as out:
                if lossless:
                    vout = out.add_stream("libx264rgb", rate=rate, options={"crf": "0", "preset": "veryfast"})
                    vout.pix_fmt = "rgb24"
                else:
                    vout = out.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "medium"})
                    vout.pix_fmt = "yuv420p"
                vout.width, vout.height = w + (w % 2 and not lossless), h + (h % 2 and not lossless)
                vout.time_base = tb
                aout = out.add_stream_from_template(ain) if ain is not None else None
                t_start = float(start or 0.0)
                t_end = t_start + duration if duration is not None else None
                if start:
                    inp.seek(int(start / tb), stream=vin, backward=True)
                streams = [vin] + ([ain] if ain is not None else [])
                pending: list[tuple[int, np.ndarray, np.ndarray]] = []
                stab = _Stabilizer(stabilize)
                first_pts: int | None = None  # the output starts at 0
                done = 0

                def flush() -> None:
                    nonlocal done
                    if not pending:
                        return
                    xs = np.stack([x for _, x, _ in pending])
                    if pool is None or len(xs) < 2:
                        ys = stylize(xs)
                    else:  # the parts side by side, each on its share of the cores
                        parts = np.array_split(xs, min(lanes, len(xs)))
                        ys = np.concatenate([np.asarray(y) for y in pool.map(stylize, parts)])
                    for (pts, x, raw), y in zip(pending, ys, strict=True):
                        y = stab(x, np.asarray(y, np.float32))
                        y8 = (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8)
                        if keep:
                            keep(raw, y8)
                        if y8.shape[:2] != (vout.height, vout.width):
                            y8 = np.pad(y8, ((0, vout.height - h), (0, vout.width - w), (0, 0)), mode="edge")
                        frame = av.VideoFrame.from_ndarray(y8, format="rgb24")
                        frame.pts, frame.time_base = pts, tb
                        for packet in vout.encode(frame):
                            out.mux(packet)
                    done += len(pending)
                    pending.clear()
                    if progress:
                        progress(done, max(total, done), done / max(time.perf_counter() - t0, 1e-9))

                for packet in inp.demux(streams):
                    if packet.stream is ain:
                        if packet.pts is None or packet.dts is None:
                            continue
                        t = float(packet.pts * packet.time_base)
                        # without --start every packet is kept (an AAC stream opens with priming before 0)
                        if (start and t < t_start) or (t_end is not None and t >= t_end):
                            continue
                        offset = int(round(t_start / packet.time_base))
                        packet.pts -= offset
                        packet.dts -= offset
                        packet.stream = aout
                        out.mux(packet)
                        continue
                    for frame in packet.decode():
                        t = float(frame.pts * tb) if frame.pts is not None else done / float(rate)
                        if t < t_start - 1e-6:
                            continue
                        if t_end is not None and t >= t_end - 1e-6:
                            break
                        if first_pts is None:
                            first_pts = frame.pts or 0
                        raw = frame.to_ndarray(format="rgb24")
                        pending.append(((frame.pts or 0) - first_pts, raw.astype(np.float32) / 255.0, raw))
                        if len(pending) >= batch:
                            flush()
                flush()
                for packet in vout.encode():
                    out.mux(packet)
            if done == 0:
                raise NSTError(f"no video frames in '{src}'" + (" in the part asked for" if start or duration
                                                                 else ""))
        os.replace(tmp, dst)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, av.error.FFmpegError):
            raise NSTError(f"video '{src}': {e}") from None
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    return VideoSummary(done, float(rate), w, h, ain is not None, time.perf_counter() - t0)
