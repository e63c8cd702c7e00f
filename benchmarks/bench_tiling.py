"""Benchmark: an 8K image stylized in tiles within a memory budget, and the error at the seams.

The image is 7680x4320 (an asset upscaled and cropped; ``--size`` changes it). Each runtime path
(``onnxruntime-CPU`` through ``model.tiles.onnx``, ``torchscript``, ``eager``) runs in its own
subprocess (``--one``) through ``Stylizer`` with ``memory_mb`` = ``--budget``.

Measured: wall time of the call, tiles and tile side, the thumbnail, the process's RSS before the
call and its peak (``ru_maxrss``): their difference is what the call itself took, to compare with
the budget. The seam error: at points on tile boundaries (the middle of each overlap, and crossings
of four tiles), a 256x256 window (smaller for small images) of the tiled output is compared with the
network run on a crop around it large enough to hold its receptive field, with the same thumbnail
statistics (the untiled computation there); reported in 8-bit levels, max and mean absolute
difference. Also the ratio of the mean step between neighbouring pixels across tile boundaries to
the mean step elsewhere (1.0: nothing special at the boundaries).

Usage::

    python benchmarks/bench_tiling.py [--size 7680 4320] [--budget 1024] [--providers onnxruntime-CPU,eager]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

ASSET = Path(__file__).resolve().parents[2] / "shared" / "assets" / "content" / "coffee.png"
FALLBACK = ROOT / "nst_deploy" / "data" / "coffee.jpg"
WINDOW = 256


def _vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_image(w: int, h: int) -> np.ndarray:
    """The asset upscaled (bicubic) to cover ``w x h`` and center-cropped."""
    from PIL import Image

    img = Image.open(ASSET if ASSET.is_file() else FALLBACK).convert("RGB")
    f = max(w / img.width, h / img.height)
    img = img.resize((round(img.width * f + 0.5), round(img.height * f + 0.5)), Image.Resampling.BICUBIC)
    x0, y0 = (img.width - w) // 2, (img.height - h) // 2
    return np.asarray(img.crop((x0, y0, x0 + w, y0 + h)))


def _seam_points(rows, cols) -> list[tuple[int, int]]:
    """Centers of vertical and horizontal overlaps, and crossings, away from the image border."""
    ys = [(rows[i][0] + rows[i - 1][1]) // 2 for i in range(1, len(rows))]
    xs = [(cols[j][0] + cols[j - 1][1]) // 2 for j in range(1, len(cols))]
    mid_y = [(a + b) // 2 for a, b in rows]
    mid_x = [(a + b) // 2 for a, b in cols]
    pts = [(y, x) for y in ys[:2] for x in xs[:2]]  # crossings
    pts += [(mid_y[0], x) for x in xs[:2]] + [(y, mid_x[0]) for y in ys[:2]]
    return pts


def _one(provider: str, image_path: Path, exported: Path, budget: float) -> dict:
    from PIL import Image

    from nst_deploy import tiling
    from nst_deploy.nets.io import bundled_models
    from nst_deploy.runtime import Stylizer

    arr = np.load(image_path)
    h, w = arr.shape[:2]
    path = {"onnxruntime-CPU": exported / "model.onnx", "torchscript": exported / "model.pt",
            "eager": bundled_models()["johnson__starry_night"]}[provider]
    s = Stylizer.load(path, device="cpu", memory_mb=budget)
    info = s.engine.tiling_info()
    before = _vm_rss_mb()
    tiles = []
    s.progress = lambda done, total: tiles.append(total)
    t0 = time.perf_counter()
    out = s(arr)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    # the tiling the call used
    tile = s.tile_side(1, w, info)
    plan = tiling.TilePlan(h, w, tile, s.overlap(info), int(info["radius"]), int(info.get("multiple", 4)))
    th, tw = s.thumbnail_shape(1, h, w)
    thumb = np.array(Image.fromarray(arr).resize((tw, th), Image.Resampling.BOX))
    stats_of, run_tile = s.engine.stats_runners()
    stats = stats_of(torch.from_numpy(thumb).permute(2, 0, 1)[None].float() / 255)
    # seam error: untiled computation around points on tile boundaries
    m = int(info.get("multiple", 4))
    reach = int(info["radius"]) + 4 * m
    errs = []
    win = min(WINDOW, min(h, w) // 4 // m * m)
    for cy, cx in _seam_points(plan.rows, plan.cols):
        y0, x0 = min(max(0, cy - win // 2), h - win), min(max(0, cx - win // 2), w - win)
        cy0, cx0 = max(0, (y0 - reach) // m * m), max(0, (x0 - reach) // m * m)
        cy1, cx1 = min(h, y0 + win + reach), min(w, x0 + win + reach)
        crop = torch.from_numpy(arr[cy0:cy1, cx0:cx1].copy()).permute(2, 0, 1)[None].float() / 255
        ref = run_tile(crop, stats).float()[0, :, y0 - cy0:y0 - cy0 + win, x0 - cx0:x0 - cx0 + win]
        ref8 = (ref.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        d = np.abs(out[y0:y0 + win, x0:x0 + win].astype(int) - ref8.astype(int))
        errs.append((int(d.max()), float(d.mean())))
    # steps across tile boundaries against steps elsewhere
    f = out.astype(np.float32)
    bx = sorted({(a + b) // 2 for (a, _), (_, b) in zip(plan.cols[1:], plan.cols[:-1], strict=True)})
    by = sorted({(a + b) // 2 for (a, _), (_, b) in zip(plan.rows[1:], plan.rows[:-1], strict=True)})
    step_x = np.abs(np.diff(f, axis=1)).mean(axis=(0, 2))
    step_y = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2))
    ratio_x = float(step_x[bx].mean() / step_x.mean()) if bx else None
    ratio_y = float(step_y[by].mean() / step_y.mean()) if by else None
    return harness.row("tiling", provider, [1, 3, h, w], "uint8", "fp32",
                       {"median_ms": wall * 1e3, "p20_ms": wall * 1e3, "p80_ms": wall * 1e3, "runs": 1},
                       device="cpu", budget_mb=budget, wall_s=wall, tiles=tiles[-1] if tiles else 1, tile_side=tile,
                       overlap=s.overlap(info), radius=int(info["radius"]), thumbnail=[th, tw],
                       rss_before_call_mb=before, peak_rss_mb=peak, call_mb=peak - before,
                       seam_points=len(errs), seam_max_abs_levels=max(e[0] for e in errs),
                       seam_mean_abs_levels=float(np.mean([e[1] for e in errs])),
                       boundary_step_ratio_x=ratio_x, boundary_step_ratio_y=ratio_y)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", nargs=2, type=int, default=(7680, 4320), metavar=("W", "H"))
    ap.add_argument("--budget", type=float, default=1024.0, help="memory_mb of the Stylizer (default 1024)")
    ap.add_argument("--providers", default="onnxruntime-CPU,torchscript,eager")
    ap.add_argument("--out-dir")
    ap.add_argument("--one", nargs=3, metavar=("PROVIDER", "IMAGE", "EXPORTED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(torch.get_num_threads())
    if args.one:
        provider, image, exported = args.one
        print(json.dumps(_one(provider, Path(image), Path(exported), args.budget), default=str))
        return 0
    from nst_deploy.export import export_model

    from nst_deploy.nets.io import bundled_models

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_model(bundled_models()["johnson__starry_night"], tmp, check=False)
        image = Path(tmp) / "image.npy"
        np.save(image, make_image(*args.size))
        for p in [p.strip() for p in args.providers.split(",") if p.strip()]:
            cmd = [sys.executable, __file__, "--budget", str(args.budget), "--one", p, str(image), tmp]
            r = harness.run_row(cmd, "tiling", p, [1, 3, args.size[1], args.size[0]], "uint8", "fp32", device="cpu")
            harness.emit(r)
            rows.append(r)
    path = harness.write_results("tiling", rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
