"""``nst run``: a feed-forward network on one image, many images (files, folders, globs, stdin), or
every bundled style on one photo (``--sheet``). An ONNX model runs without torch: numpy, Pillow and
onnxruntime alone (:mod:`nst_deploy.imageio` decodes, resizes and writes)."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

from .errors import NSTError

__all__ = ["add_run", "cmd_run"]


def _single(args: argparse.Namespace) -> bool:
    """One image file in, one image file out (the output named by -o or after the input)."""
    if len(args.inputs) != 1 or args.inputs[0] == "-" or glob.has_magic(args.inputs[0]):
        return False
    src = Path(args.inputs[0])
    if src.is_dir():
        return False
    out = args.output
    return out is None or (Path(out).suffix != "" and not Path(out).is_dir())


class _Runner:
    """The Stylizer of a run: a bundled model from its int8 ONNX copy on the CPU (no torch to import), switched to
    the model file for an image that needs tiles (the copy holds no tiles graph) or on a GPU."""

    def __init__(self, args: argparse.Namespace, threads: int | None = None):
        from .controls import check_strength, parse_style
        from .models import load_paths, model_path
        from .runtime import Stylizer

        if args.memory_mb is not None and not args.memory_mb > 0:
            raise NSTError(f"--memory-mb must be positive, got {args.memory_mb:g}")
        try:
            check_strength(args.strength)
        except NSTError as e:
            raise NSTError(f"--{e}") from None
        self.style = None if args.style is None else parse_style(args.style)
        self.args = args
        self.model = model_path(args.model)
        on_cpu = _on_cpu(args)
        path, fallback = load_paths(self.model, on_cpu)
        self.stylizer = Stylizer.load(path, device=args.device, memory_mb=args.memory_mb, fallback=fallback,
                                      threads=threads)
        self.scale = int(self.stylizer.meta.get("output_scale", 1) or 1)
        if self.style is not None:  # checked before any image is read
            self.stylizer.engine_for(self.style)

    def __call__(self, x):
        """An HxWx3 image or an NxHxWx3 batch (float32 in [0, 1])."""
        a = self.args
        return self.stylizer(x, style=self.style, strength=a.strength, preserve_color=a.preserve_color)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a feed-forward network (see the module docstring)."""
    if args.list:
        from .nets.io import bundled_models, read_model

        models = bundled_models()
        width = max((len(stem.split("__", 1)[-1]) for stem in models), default=0)
        for stem, p in models.items():
            state = read_model(p)
            meta, styles = state["meta"], state["meta"].get("styles") or []
            what = f"{len(styles)} styles" if styles else f"style {meta.get('style')}"
            init = meta.get("init") if isinstance(meta.get("init"), dict) else None
            start = f" (from {init.get('model')} {init.get('style')})" if init and init.get("style") else ""
            if isinstance(meta.get("distilled"), dict):  # nst train --teacher
                start = f" (distilled from {meta['distilled'].get('model')}, width {state['config'].get('width')})"
            print(f"{stem.split('__', 1)[-1]:{width}s} {state['arch']:10s} {what}, {meta.get('steps')} steps"
                  f"{start}  ({p})")
            for i, st in enumerate(styles):  # a multistyle network: --style takes the index or the name
                print(f"  --style {i} or {st.get('name')}")
        return 0
    if args.sheet is not None:
        return _run_sheet(args)
    if args.model is None or not args.inputs:
        raise NSTError("give a MODEL and an INPUT image (nst run --list shows the bundled models)")
    from .contract import MIN_SIDE

    if args.size is not None and args.size < MIN_SIDE:
        raise NSTError(f"--size {args.size} is too small: use {MIN_SIDE} pixels or more")
    if args.batch is not None and args.batch < 1:
        raise NSTError(f"--batch must be at least 1, got {args.batch}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise NSTError(f"--quality must be between 1 and 100, not {args.quality}")
    if len(args.inputs) == 1 and args.inputs[0] != "-" and Path(args.inputs[0]).is_file():
        from .video import is_video

        if is_video(args.inputs[0]):
            return _run_video(args)
    if _single(args):
        return _run_one(args)
    return _run_many(args)


def _run_video(args: argparse.Namespace) -> int:
    from .jobs import default_batch
    from .progress import CountProgress
    from .video import is_video, stylize_video

    src = args.inputs[0]
    stem = Path(args.model).stem.split("__", 1)[-1]
    output = Path(args.output or f"{Path(src).stem}-{stem}{Path(src).suffix}")
    if not is_video(output):
        raise NSTError(f"-o '{output}': a video is written as .mp4, .mov, .mkv, .avi, .webm or .m4v")
    if output.exists() and output.resolve() == Path(src).resolve():
        raise NSTError(f"the output '{output}' is the input video: give another -o")
    if args.size is not None:
        raise NSTError("--size does not apply to video: the output has the input's size")
    # a batch's frames are split among the lanes: by default one frame a lane on a CPU
    lanes, threads, on_cpu = _lanes(args, args.batch if args.batch is not None else 1 << 30)
    batch = args.batch if args.batch is not None else default_batch(on_cpu) * lanes
    runner = _Runner(args, threads)
    if runner.scale != 1:
        raise NSTError("an upscaling (multimodal) network cannot keep a video's size: use a Johnson model")
    bar = None if args.quiet else CountProgress(0, what="frames")
    summary = stylize_video(runner, src, output, start=args.start, duration=args.duration, batch=batch,
                            stabilize=args.stabilize, lossless=args.lossless, lanes=lanes, progress=bar)
    if bar:
        bar.clear()
    if not args.quiet:
        print(f"nst: wrote {output} ({summary.frames} frames, {summary.width}x{summary.height} at "
              f"{summary.fps:g} fps{', audio copied' if summary.audio else ''}, {summary.seconds:.1f} s, "
              f"{summary.frames / max(summary.seconds, 1e-9):.1f} frames/s)", file=sys.stderr)
    return 0


def _run_one(args: argparse.Namespace) -> int:
    from .contract import MIN_SIDE
    from .devices import is_out_of_memory
    from .imageio import check_output, read_rgb, resize_array, write_image

    src = args.inputs[0]
    stem = Path(args.model).stem.split("__", 1)[-1]
    output = Path(args.output or f"{Path(src).stem}-{stem}.png")
    check_output(output, src, quality=args.quality)
    runner = _Runner(args)
    line_open = [False]
    if not args.quiet:
        def progress(done: int, total: int) -> None:
            print(f"\rnst: tile {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
            line_open[0] = done != total

        runner.stylizer.progress = progress
    x = read_rgb(src, size=args.size)  # float32 (H, W, 3) in [0, 1]
    h, w = x.shape[:2]
    if runner.scale > 1:  # the multimodal net's output is `scale` times its input
        x = resize_array(x, (max(MIN_SIDE, round(h / runner.scale)), max(MIN_SIDE, round(w / runner.scale))))
    if min(x.shape[:2]) < MIN_SIDE:
        raise NSTError(f"input '{src}' is {w}x{h}: too small for the network ({MIN_SIDE} pixels at least)")
    t0 = time.perf_counter()
    try:
        y = runner(x)
    except KeyboardInterrupt:
        if line_open[0]:  # end the tile counter's line before the interrupt message
            print(file=sys.stderr)
        raise
    except (RuntimeError, MemoryError) as e:  # the Stylizer passes only running out of memory on unwrapped
        if is_out_of_memory(e):
            raise NSTError(f"not enough memory to run {w}x{h}: lower --memory-mb (tiles) or use --size") from None
        raise
    if y.shape[:2] != (h, w):
        y = resize_array(y, (h, w))
    write_image(y, output, quality=args.quality)
    if not args.quiet:
        print(f"nst: wrote {output} ({w}x{h}, {time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0


def _run_many(args: argparse.Namespace) -> int:
    """Files, folders, globs and stdin (module docstring of :mod:`nst_deploy.jobs`)."""
    from .jobs import STDIO, default_batch, expand_inputs, json_record, run_items
    from .progress import CountProgress

    if args.output is not None and args.output != STDIO and Path(args.output).suffix and \
            not Path(args.output).is_dir() and args.inputs != [STDIO]:
        raise NSTError(f"-o '{args.output}' names a file, but several images are written: give a folder")
    if args.inputs == [STDIO]:
        from .jobs import Item

        items = [Item(STDIO, args.output or STDIO)]
    else:
        items = expand_inputs(args.inputs, args.output, args.ext)
    if args.ray is not None:
        return _run_ray(args, items)
    lanes, threads, on_cpu = _lanes(args, len(items))
    runner = _Runner(args, threads)
    to_stdout = any(it.out == STDIO for it in items)
    quiet = args.quiet or to_stdout and not args.json
    bar = None if quiet else CountProgress(len(items), what="images")
    record = json_record() if args.json and not to_stdout else None

    def warn(msg: str) -> None:
        if bar:
            bar.clear()
        print(f"nst: skipping {msg}", file=sys.stderr)

    batch = args.batch if args.batch is not None else default_batch(on_cpu)
    summary = run_items(runner, items, size=args.size, scale=runner.scale, batch=batch,
                        workers=args.workers, lanes=lanes, skip_existing=args.skip_existing, quality=args.quality,
                        progress=bar, record=record, warn=warn)
    if bar:
        bar.clear()
    if not args.quiet and not to_stdout:
        rate = summary.written / max(summary.seconds, 1e-9)
        print(f"nst: {summary.written} written, {summary.skipped} skipped (existing), {len(summary.failed)} "
              f"failed in {summary.seconds:.1f} s ({rate:.2f} images/s)", file=sys.stderr)
        if summary.failed:
            print(f"nst: failed: {', '.join(src for src, _ in summary.failed)}", file=sys.stderr)
    if summary.interrupted:
        print("nst: interrupted: the outputs written are complete; run again with --skip-existing to finish",
              file=sys.stderr)
        return 130
    return 1 if summary.failed else 0


def _on_cpu(args: argparse.Namespace) -> bool:
    """Whether the run is on the CPU (``--device cpu``, or ``auto`` without a GPU)."""
    from .devices import gpu_present

    return args.device == "cpu" or (args.device == "auto" and not gpu_present())


def _lanes(args: argparse.Namespace, count: int) -> tuple[int, int | None, bool]:
    """``(lanes, threads, on_cpu)``: batches stylized at once (``--lanes``, else
    :func:`~nst_deploy.jobs.default_lanes`), the CPU threads of each (their share of the cores; None: the
    default), and whether the run is on the CPU."""
    from .devices import lane_threads
    from .jobs import default_lanes
    from .models import load_paths, model_path

    if args.lanes is not None and args.lanes < 1:
        raise NSTError(f"--lanes must be at least 1, got {args.lanes}")
    on_cpu = _on_cpu(args)
    lanes = args.lanes if args.lanes is not None else default_lanes(
        on_cpu and load_paths(model_path(args.model), on_cpu)[0].suffix == ".onnx")
    lanes = max(1, min(lanes, count))  # one image gets every core
    return lanes, lane_threads(lanes) if on_cpu else None, on_cpu


def _run_ray(args: argparse.Namespace, items) -> int:
    """The many-images job as a Ray Data pipeline (:mod:`nst_deploy.batch`)."""
    import json

    from .batch import import_ray, run_on_ray
    from .controls import check_strength, parse_style
    from .devices import gpu_present
    from .models import load_paths, model_path

    import_ray()
    if any(it.src == "-" or it.out == "-" for it in items):
        raise NSTError("--ray runs files: stdin and stdout ('-') are not for a cluster")
    check_strength(args.strength)
    model = model_path(args.model)
    gpu = args.device.startswith("cuda") or (args.device == "auto" and gpu_present())
    path, fallback = load_paths(model, not gpu)
    todo = [it for it in items if not (args.skip_existing and Path(it.out).exists())]
    controls = {"strength": args.strength, "preserve_color": args.preserve_color}
    if args.style is not None:
        controls["style"] = parse_style(args.style)
    t0 = time.perf_counter()
    recs = run_on_ray(path, [(it.src, it.out) for it in todo], address=args.ray or None,
                      workers=args.workers, batch=4 if args.batch is None else args.batch,
                      device="cuda" if gpu else "cpu",
                      num_gpus=1.0 if gpu else 0.0, size=args.size, quality=args.quality, controls=controls,
                      memory_mb=args.memory_mb, fallback=fallback and str(fallback))
    seconds = time.perf_counter() - t0
    failed = [r for r in recs if r["status"] != "written"]
    if args.json:
        for it in items:
            if it not in todo:
                print(json.dumps({"input": it.src, "output": it.out, "status": "skipped"}))
        for r in recs:
            print(json.dumps({"input": r["src"], "output": r["out"], "status": r["status"],
                              **({"error": r["error"]} if r["error"] else {})}))
    if not args.quiet:
        for r in failed:
            print(f"nst: failed: {r['src']}: {r['error']}", file=sys.stderr)
        print(f"nst: {len(recs) - len(failed)} written, {len(items) - len(todo)} skipped (existing), {len(failed)} "
              f"failed in {seconds:.1f} s on Ray ({len({r['pid'] for r in recs})} workers)", file=sys.stderr)
    return 1 if failed else 0


def _run_sheet(args: argparse.Namespace) -> int:
    """``nst run --sheet PHOTO``: every bundled style on one photo, labelled (torch-free)."""
    from .controls import check_strength
    from .imageio import check_output, read_rgb, write_image
    from .models import bundled_models
    from .sheet import contact_sheet

    if args.model is not None:
        raise NSTError("--sheet takes the photo as its value and runs every bundled model: give no MODEL")
    output = Path(args.output or f"{Path(args.sheet).stem}-sheet.png")
    check_output(output, args.sheet, quality=args.quality)
    check_strength(args.strength)
    photo = read_rgb(args.sheet, size=args.size or 384)
    models = {stem.split("__", 1)[-1]: p for stem, p in bundled_models().items()}
    t0 = time.perf_counter()

    def progress(done: int, total: int, name: str) -> None:
        if not args.quiet:
            print(f"\rnst: sheet {done}/{total} {name:<20s}", end="\n" if done == total else "", file=sys.stderr,
                  flush=True)

    sheet = contact_sheet(photo, models, strength=args.strength, preserve_color=args.preserve_color,
                          device=args.device, progress=progress)
    write_image(sheet, output, quality=args.quality)
    if not args.quiet:
        print(f"nst: wrote {output} ({len(models)} styles, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def add_run(sub) -> None:
    from .jobs import default_workers

    p = sub.add_parser("run", help="stylize images with a trained network",
                       description="Run a trained feed-forward network (a model file from nst train, an ONNX or "
                                   "TorchScript file from nst-export, or a bundled model by name) on an image, on "
                                   "many (files, folders, globs; outputs mirror the input tree under -o FOLDER) "
                                   "or on stdin (-, written to stdout).")
    p.add_argument("model", nargs="?", help="model file, or a bundled model's name (see --list)")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="images, folders (recursive), glob patterns, or - for stdin")
    p.add_argument("-o", "--output",
                   help="output image (one input; default INPUT-MODEL.png) or folder (several); - for stdout")
    p.add_argument("--size", type=int, help="resize the input's longest side first (default: keep)")
    p.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--memory-mb", type=float,
                   help="working-memory budget; larger images run in tiles that agree (default: half the "
                        "available memory)")
    p.add_argument("--batch", type=int,
                   help="images of one size (video: frames) run together, at most this many (default: on a CPU one "
                        "image a lane, a video frame a lane: larger batches of large images run slower there; "
                        "4 on a GPU and on Ray)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help=f"threads decoding and writing images beside the inference (default {default_workers()})")
    p.add_argument("--lanes", type=int,
                   help="many images: batches stylized at once, each on its share of the CPU cores (video: the parts "
                        "of a batch); default 2 for an ONNX model on a CPU of 2 cores or more, else 1")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave inputs whose output exists (finish an interrupted run)")
    p.add_argument("--json", action="store_true", help="one JSON record per image on stdout")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on a Ray cluster (Ray Data, one model per worker; --workers workers; a local cluster "
                        "without ADDRESS); needs the ray extra")
    p.add_argument("--ext", help="output format for many images: png, jpg or tif (default: the input's, else png)")
    p.add_argument("--start", type=float, help="video: the first second to stylize (default 0)")
    p.add_argument("--duration", type=float, help="video: seconds to stylize from --start (default: to the end)")
    p.add_argument("--stabilize", type=float, default=0.0,
                   help="video: 0 to 1, hold the output still where the input does not move (less flicker)")
    p.add_argument("--lossless", action="store_true", help="video: lossless RGB H.264 (large files)")
    p.add_argument("--style", help="a multistyle model's style: an index (3) or name (the_scream), or a blend "
                        "(0:0.5,the_scream:0.5); default 0 (nst run --list names them)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="0 (the photo) to 1 (the full style, the default): a blend that keeps local contrast")
    p.add_argument("--preserve-color", action="store_true",
                   help="keep the photo's colours (the network's luminance with the photo's chroma)")
    p.add_argument("--list", action="store_true", help="list the bundled models")
    p.add_argument("--sheet", metavar="PHOTO",
                   help="a contact sheet: PHOTO through every bundled model, labelled (--size: each picture's "
                        "long side, default 384)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress and no summary")
    p.set_defaults(func=cmd_run)
