"""Benchmark: many images through one model (``nst run MODEL FOLDER -o OUT``), images per second.

A folder of ``--count`` JPEG photographs at ``--size`` px (square crops of the bundled photographs,
rotated), stylized by a bundled model (its int8 ONNX copy, CPU) three ways:

* ``nst run per image``: one ``nst run MODEL photo -o out`` process per image, as a shell loop does;
* ``one at a time``: one process, the Stylizer loaded once, each image read, stylized and written in
  turn (``read_rgb``, ``Stylizer``, ``write_image``), each stage timed: the loop's time over the
  stylizing time alone (``overlap_bound``) is the most any overlap of reading and writing with the
  inference can gain over this loop;
* ``pipeline``: ``nst_deploy.jobs.run_items`` (what ``nst run MODEL FOLDER -o OUT`` runs): its default
  batches (one image a call on the CPU; ``--batch``), decoding and writing on ``--workers`` threads beside
  the inference, its default lanes (two calls at once, each on its share of the cores); ``pipeline, 1
  lane`` the same with one call at a time on every core;
* ``ray``: ``nst_deploy.batch.run_on_ray`` on a local Ray cluster of ``--workers`` CPUs (started
  before the clock, as a running cluster would be), one actor per worker.

The loop and the two pipelines run ``--rounds`` times in turn (this machine's speed drifts by tens of
percent within minutes) and each keeps its median round, the rounds' figures beside it; the others run
once. All after an unmeasured warm-up of the file cache; figures are images/s over the whole folder.
Then video: ``nst_deploy.video.stylize_video`` (H.264 out; one lane, and each batch's frames split among
the default lanes as ``nst run`` does) on ``--video-frames`` frames at 480p and 720p made here (frames/s). Usage::

    python benchmarks/bench_batch.py [--count 64] [--size 512] [--model starry_night] [--out-dir DIR]

Results go to ``benchmarks/results/batch-<device>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

PHOTOS = [ROOT / "nst_deploy" / "data" / n for n in ("chelsea.jpg", "coffee.jpg")]


def make_folder(folder: Path, count: int, size: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        img = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB").rotate(7 * i, expand=False)
        side = min(img.size)
        img = img.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BICUBIC)
        p = folder / f"photo{i:03d}.jpg"
        img.save(p, quality=92)
        out.append(p)
    return out


def video_rows(stylizers, tmp: Path, args, record, lanes: int = 1) -> None:
    """Frames/s of ``nst_deploy.video.stylize_video`` (H.264 out) on clips made here at 480p and 720p: one
    lane (``stylizers[0]``, all the cores) and ``lanes`` as ``nst run`` passes them (``stylizers[1]``)."""
    try:
        import av
    except ImportError:
        return
    from fractions import Fraction

    from PIL import Image

    from nst_deploy.video import stylize_video

    photo = Image.open(PHOTOS[0]).convert("RGB")
    for w, h in ((854, 480), (1280, 720)):
        clip = tmp / f"clip{h}.mp4"
        frame = np.asarray(photo.resize((w, h)))
        with av.open(str(clip), "w") as out:
            v = out.add_stream("libx264", rate=24, options={"crf": "18"})
            v.width, v.height, v.pix_fmt = w, h, "yuv420p"
            for i in range(args.video_frames):
                f = av.VideoFrame.from_ndarray(np.roll(frame, 4 * i, axis=1), format="rgb24")
                f.pts, f.time_base = i, Fraction(1, 24)
                for p in v.encode(f):
                    out.mux(p)
            for p in v.encode():
                out.mux(p)
        for name, st, n_lanes in ((f"video {w}x{h}, 1 lane", stylizers[0], 1),
                                  (f"video {w}x{h}", stylizers[1], lanes)):
            t0 = time.perf_counter()
            # as nst run: a frame a lane on the CPU unless --batch says otherwise
            batch = args.batch or n_lanes
            summary = stylize_video(st, clip, tmp / f"out{h}.mp4", batch=batch, lanes=n_lanes)
            seconds = time.perf_counter() - t0
            record(name, summary.frames, seconds, frames_per_s=round(summary.frames / seconds, 3), lanes=n_lanes,
                   batch=batch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", default="starry_night")
    ap.add_argument("--batch", type=int,
                    help="images (video: frames) a call; default as nst run on the CPU (one a lane), 4 on Ray")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-image-count", type=int, default=16,
                    help="images timed for the per-image process loop (its rate is per image)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the one-at-a-time loop and the pipelines, interleaved; the median round is kept")
    ap.add_argument("--no-ray", action="store_true", help="leave out the Ray row")
    ap.add_argument("--video-frames", type=int, default=24, help="frames of the 480p and 720p clips (0: none)")
    ap.add_argument("--out-dir")
    args = ap.parse_args(argv)
    from nst_deploy.devices import lane_threads
    from nst_deploy.imageio import read_rgb, write_image
    from nst_deploy.jobs import default_batch, default_lanes, expand_inputs, run_items
    from nst_deploy.models import bundled_onnx, model_path
    from nst_deploy.runtime import Stylizer

    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="nst-bench-batch-"))
    try:
        files = make_folder(tmp / "in", args.count, args.size)
        for p in files:  # warm the file cache
            p.read_bytes()
        shape = [args.count, args.size, args.size, 3]
        model = bundled_onnx(model_path(args.model)) or model_path(args.model)

        def record(provider: str, n: int, seconds: float, **more) -> None:
            r = harness.row("batch", provider, shape, "float32", "fp32", None, device="cpu", images=n,
                            seconds=round(seconds, 3), images_per_s=round(n / seconds, 3), model=args.model, **more)
            harness.emit(r)
            rows.append(r)

        with harness.keep_partial("batch", rows, args.out_dir):
            n = min(args.per_image_count, len(files))
            (tmp / "cli").mkdir()
            t0 = time.perf_counter()
            for p in files[:n]:
                subprocess.run([sys.executable, "-m", "nst_deploy.cli", "run", args.model, str(p), "-o",
                                str(tmp / "cli" / (p.stem + ".jpg")), "-q", "--device", "cpu"], check=True)
            record("nst run per image", n, time.perf_counter() - t0)

            s = Stylizer.load(model, device="cpu")
            lanes = default_lanes(Path(model).suffix == ".onnx")
            laned = Stylizer.load(model, device="cpu", threads=lane_threads(lanes))  # as nst run loads it

            def loop_once(out: Path) -> tuple[float, list[float]]:
                out.mkdir()
                stages = [0.0, 0.0, 0.0]  # read, stylize, write: what overlapping them can gain at most
                t0 = time.perf_counter()
                for p in files:
                    t1 = time.perf_counter()
                    x = read_rgb(p)
                    t2 = time.perf_counter()
                    y = s(x)
                    t3 = time.perf_counter()
                    write_image(y, out / p.name)
                    for i, dt in enumerate((t2 - t1, t3 - t2, time.perf_counter() - t3)):
                        stages[i] += dt
                return time.perf_counter() - t0, stages

            def pipeline_once(st, n_lanes: int, out: Path) -> tuple[float, None]:
                items = expand_inputs([str(tmp / "in")], str(out))
                t0 = time.perf_counter()
                summary = run_items(st, items, batch=args.batch or default_batch(True), workers=args.workers,
                                    lanes=n_lanes)
                assert summary.written == len(files), summary
                return time.perf_counter() - t0, None

            ways = {"one at a time": loop_once,
                    "pipeline, 1 lane": lambda out: pipeline_once(s, 1, out),
                    "pipeline": lambda out: pipeline_once(laned, lanes, out)}
            runs: dict[str, list] = {name: [] for name in ways}
            for k in range(args.rounds):  # interleaved: a slow moment of the machine hits every way alike
                for name, way in ways.items():
                    out = tmp / f"{name.replace(',', '').replace(' ', '-')}-{k}"
                    runs[name].append(way(out))
                    shutil.rmtree(out)
            for name, results in runs.items():
                total, stages = sorted(results, key=lambda r: r[0])[len(results) // 2]  # the median round
                more = {"rounds_images_per_s": [round(len(files) / r[0], 3) for r in results]}
                if stages is not None:
                    ms = [round(1000 * v / len(files), 1) for v in stages]
                    more.update(read_ms=ms[0], stylize_ms=ms[1], write_ms=ms[2],
                                overlap_bound=round(total / stages[1], 3))
                else:
                    n_lanes = 1 if name.endswith("1 lane") else lanes
                    more.update(batch=args.batch or default_batch(True), workers=args.workers, lanes=n_lanes,
                                threads=lane_threads(n_lanes))
                record(name, len(files), total, **more)

            try:
                from nst_deploy.batch import run_on_ray
            except ImportError:
                run_on_ray = None
            if run_on_ray is not None and not args.no_ray:
                import ray

                ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
                try:  # the cluster's start is not counted: a running cluster is what --ray ADDRESS uses
                    t0 = time.perf_counter()
                    recs = run_on_ray(model, [(str(p), str(tmp / "ray" / p.name)) for p in files],
                                      workers=args.workers, batch=args.batch or 4)
                    assert all(r["status"] == "written" for r in recs)
                    record(f"ray ({args.workers} workers)", len(files), time.perf_counter() - t0,
                           batch=args.batch or 4, workers=args.workers)
                finally:
                    ray.shutdown()
            if args.video_frames:
                video_rows((s, laned), tmp, args, record, lanes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = harness.write_results("batch", rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
