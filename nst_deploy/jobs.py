"""Many images through one model: ``nst run MODEL INPUTS... -o OUT`` (torch-free on ONNX).

* Inputs: image files, folders (searched recursively), glob patterns, and ``-`` (one image on stdin,
  written to stdout). Outputs mirror the input tree under ``-o`` (a folder): a folder's files keep
  their path inside it, a glob's files their path below the pattern's fixed part, files given by name
  their name. Two inputs that would write the same output are refused before any work.
* The pipeline: images are decoded on worker threads (a bounded read-ahead), consecutive images of one
  size are stylized as one batch (up to ``batch``) by the :class:`~nst_deploy.runtime.Stylizer`, and
  outputs are encoded and written on the worker threads, atomically (a crash or Ctrl-C never leaves
  a partial file); decoding and encoding overlap inference. With ``lanes`` > 1 that many batches are
  stylized at once, each on its own thread (``stylize`` must then be thread-safe, as the ``Stylizer``
  is): on a CPU, two single-threaded inferences side by side get more from the cores than one
  inference on both (:func:`default_lanes`; docs/performance.md).
* ``skip_existing``: inputs whose output exists are not run (a re-run after a crash or Ctrl-C finishes
  exactly the missing ones). An unreadable input is reported and skipped; the run goes on, and the
  summary names it.
* Ctrl-C finishes the batches under way and the writes started, then stops (exit 130).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import MIN_SIDE
from .errors import ImageError, NSTError
from .imageio import SAVE_FORMATS, decode_rgb, encode_image, read_rgb, resize_array, write_image
from .interrupts import DeferredInterrupt

__all__ = ["Item", "Summary", "expand_inputs", "run_items"]

#: Files a folder or a glob contributes (what the image reader decodes).
INPUT_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
STDIO = "-"


@dataclass
class Item:
    """One input and where its output goes (``"-"``: stdin / stdout)."""

    src: str
    out: str


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


def _glob_base(pattern: str) -> Path:
    """The fixed folder part of a glob pattern (outputs mirror the tree below it)."""
    parts = Path(pattern).parts
    fixed = []
    for p in parts:
        if glob.has_magic(p):
            break
        fixed.append(p)
    return Path(*fixed) if fixed else Path(".")


def expand_inputs(inputs: list[str], output: str | None, ext: str | None = None) -> list[Item]:
    """The inputs as :class:`Item` s with their outputs under the folder ``output``.

    Raises:
        NSTError: an input that is neither a file, a folder, a matching glob nor ``-``; no output folder
            where one is needed; two inputs with the same output.
    """
    if ext is not None and ("." + ext.lstrip(".")).lower() not in SAVE_FORMATS:
        raise NSTError(f"--ext {ext}: use one of {', '.join(s.lstrip('.') for s in sorted(SAVE_FORMATS))}")
    found: list[tuple[str, Path | None]] = []  # (source, output path relative to the output folder)
    for arg in inputs:
        if arg == STDIO:
            found.append((STDIO, None))
            continue
        p = Path(arg)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES)
            if not files:
                raise NSTError(f"folder '{arg}' holds no images ({', '.join(INPUT_SUFFIXES)})")
            found += [(str(f), f.relative_to(p)) for f in files]
        elif p.is_file():
            found.append((str(p), Path(p.name)))
        elif glob.has_magic(arg):
            base = _glob_base(arg)
            files = sorted(Path(f) for f in glob.glob(arg, recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in INPUT_SUFFIXES)
            if not files:
                raise NSTError(f"no image matches '{arg}'")
            found += [(str(f), f.relative_to(base)) for f in files]
        else:
            raise NSTError(f"input '{arg}' does not exist")
    items, seen = [], {}
    for src, rel in found:
        if rel is None:  # stdin goes to stdout
            items.append(Item(STDIO, STDIO))
            continue
        if output is None:
            raise NSTError("several inputs, a folder or a glob need an output folder: -o FOLDER")
        suffix = ("." + ext.lstrip(".")).lower() if ext else (rel.suffix.lower() if rel.suffix.lower() in
                                                              SAVE_FORMATS else ".png")
        out = str(Path(output) / rel.with_suffix(suffix))
        if out in seen:
            raise NSTError(f"'{seen[out]}' and '{src}' would both write '{out}': use --ext or other folders")
        seen[out] = src
        items.append(Item(src, out))
    if sum(it.src == STDIO for it in items) > 1:
        raise NSTError("stdin ('-') can be read once")
    return items


def _read(item: Item, size: int | None, scale: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The network's input and the output's size (the image's, after ``size``)."""
    x = decode_rgb(sys.stdin.buffer.read(), size=size) if item.src == STDIO else read_rgb(item.src, size=size)
    hw = x.shape[:2]
    if scale > 1:  # an upscaling network: its output is `scale` times its input
        x = resize_array(x, (max(MIN_SIDE, round(hw[0] / scale)), max(MIN_SIDE, round(hw[1] / scale))))
    return x, hw


def _write(item: Item, y: np.ndarray, hw: tuple[int, int], quality: int) -> None:
    if y.shape[:2] != hw:
        y = resize_array(y, hw)
    if item.out == STDIO:
        sys.stdout.buffer.write(encode_image(y, ".png", quality=quality))
        sys.stdout.buffer.flush()
        return
    Path(item.out).parent.mkdir(parents=True, exist_ok=True)
    write_image(y, item.out, quality=quality)


def run_items(stylize: Callable[[np.ndarray], np.ndarray], items: list[Item], *, size: int | None = None,
              scale: int = 1, batch: int = 4, workers: int = 2, lanes: int = 1, skip_existing: bool = False,
              quality: int = 95,
              progress: Callable[[int, int, float], None] | None = None,
              record: Callable[[dict], None] | None = None, warn: Callable[[str], None] | None = None) -> Summary:
    """Stylize every item (see the module docstring); ``stylize`` takes an NxHxWx3 float32 batch.

    ``progress(done, total, images_per_s)`` after each batch; ``record(dict)`` once per item (input, output,
    status ``written``/``skipped``/``failed``, error, size, seconds); ``warn(message)`` for a failed input.
    """
    if batch < 1 or workers < 1 or lanes < 1:
        raise NSTError("--batch, --workers and --lanes must be at least 1")
    summary = Summary()
    t0 = time.perf_counter()
    todo = []
    for it in items:
        if skip_existing and it.out != STDIO and Path(it.out).exists():
            summary.skipped += 1
            if record:
                record({"input": it.src, "output": it.out, "status": "skipped"})
        else:
            todo.append(it)
    total, done = len(todo), 0

    def failed(it: Item, why: str) -> None:
        summary.failed.append((it.src, why))
        if warn:
            warn(f"{it.src}: {why}")
        if record:
            record({"input": it.src, "output": it.out, "status": "failed", "error": why})

    def finish_write(it: Item, fut: Future, hw, started: float) -> None:
        try:
            fut.result()
        except (ImageError, NSTError, OSError) as e:
            failed(it, str(e))
            return
        summary.written += 1
        if record:
            record({"input": it.src, "output": it.out, "status": "written", "width": hw[1], "height": hw[0],
                    "seconds": round(time.perf_counter() - started, 4)})

    ahead = max(2 * batch, 2 * workers, lanes * batch + batch)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nst-io") as pool, \
            ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="nst-infer") as infer, \
            DeferredInterrupt() as stop:
        reads: deque[tuple[Item, Future]] = deque()
        writes: deque[tuple[Item, Future, tuple[int, int], float]] = deque()
        # batches being stylized, oldest first: (group, result, start time)
        running: deque[tuple[list, Future, float]] = deque()
        nxt = 0

        def fill() -> None:
            nonlocal nxt
            while nxt < total and len(reads) < ahead:
                it = todo[nxt]
                # stdin is read on this thread: nothing else may touch it
                if it.src == STDIO:
                    f: Future = Future()
                    try:
                        f.set_result(_read(it, size, scale))
                    except (ImageError, NSTError, OSError) as e:
                        f.set_exception(e)
                else:
                    f = pool.submit(_read, it, size, scale)
                reads.append((it, f))
                nxt += 1

        def drain(block: bool) -> None:
            while writes and (block or writes[0][1].done()):
                finish_write(*writes.popleft())

        def collect() -> None:
            """The oldest running batch's outputs to the writers."""
            nonlocal done
            group, fut, started = running.popleft()
            try:
                ys = fut.result()
            except NSTError as e:
                for it, _, _ in group:
                    failed(it, str(e))
                done += len(group)
                return
            for (it, _, hw), y in zip(group, ys, strict=True):
                writes.append((it, pool.submit(_write, it, y, hw, quality), hw, started))
            done += len(group)
            drain(block=False)
            if progress:
                progress(done, total, done / max(time.perf_counter() - t0, 1e-9))

        fill()
        while (reads or running) and not stop.requested:
            if running and (len(running) >= lanes or not reads):
                collect()
                continue
            group: list[tuple[Item, np.ndarray, tuple[int, int]]] = []
            while reads and len(group) < batch:
                it, f = reads[0]
                try:
                    x, hw = f.result()
                except (ImageError, NSTError, OSError) as e:
                    reads.popleft()
                    failed(it, str(e))
                    done += 1
                    fill()
                    continue
                if group and x.shape != group[0][1].shape:
                    break
                reads.popleft()
                group.append((it, x, hw))
                fill()
            if not group:
                continue
            running.append((group, infer.submit(stylize, np.stack([x for _, x, _ in group])), time.perf_counter()))
        while running:  # an interrupt: the batches under way finish and are written
            collect()
        drain(block=True)
        summary.interrupted = stop.requested and done < total
        for _, f in reads:  # read-ahead of an interrupted run: not needed
            f.cancel()
    summary.seconds = time.perf_counter() - t0
    return summary


def json_record(stream=None) -> Callable[[dict], None]:
    """``--json``: one JSON object per line on ``stream`` (stdout)."""
    stream = stream or sys.stdout

    def emit(rec: dict) -> None:
        stream.write(json.dumps(rec) + "\n")
        stream.flush()

    return emit


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def default_batch(on_cpu: bool) -> int:
    """Images run together in one call by default: one on a CPU (a batch of several 512-px images runs slower
    there than one at a time: the activations leave the cache; with two lanes, 16-17 against 14-16
    images/s on the 2-core machine), 4 on a GPU."""
    return 1 if on_cpu else 4


def default_lanes(cpu_onnx: bool) -> int:
    """Batches stylized at once by default: two for ONNX Runtime on a CPU of two cores or more (each
    inference then runs on half the cores), else one (a GPU runs one batch at a time anyway; torch's
    CPU threads are process-wide, so two torch inferences would only share them)."""
    return 2 if cpu_onnx and (os.cpu_count() or 1) >= 2 else 1
