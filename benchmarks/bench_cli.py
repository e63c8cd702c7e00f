"""Benchmark: the first call users time, ``nst run`` from the shell, and what importing the package costs.

Rows (wall time of a whole process, median of ``--repeats`` runs after one unmeasured run that warms
the file cache):

* ``nst run`` on the bundled model by name (its int8 ONNX copy on the CPU), on an ``nst-export`` ONNX file
  (float32; and the ``model.onnx`` of an ``--int8`` export, which runs its ``model.int8.onnx``) and on its
  TorchScript file, at each ``--sizes`` (square photos made from the bundled one);
* the peer's CLI on the same photos (``--peer`` names its executable, e.g. ``styletransfer-lite``
  installed in a side environment; its built-in style 0, ``--max-size`` the photo's size);
* ``import``: ``python -c 'import ...'`` of the runtime (no torch), of the optimization engine (torch),
  and of torch alone, less an empty interpreter's start.

Usage::

    python benchmarks/bench_cli.py [--sizes 512 1024] [--repeats 3] [--peer PATH] [--out-dir DIR]

Results go to ``benchmarks/results/cli-<device>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

PHOTO = ROOT / "nst_deploy" / "data" / "chelsea.jpg"


def wall(cmd: list[str], repeats: int) -> tuple[list[float], str | None]:
    """Seconds of ``repeats`` runs of ``cmd`` (after one unmeasured run), or the error of a failing one."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            return times, ((proc.stderr or proc.stdout).strip().splitlines() or ["failed"])[-1][:200]
        if i:
            times.append(dt)
    return times, None


def _row(provider: str, size: int, times: list[float], error: str | None, **fields) -> dict:
    timing = None if error else {"median_ms": 1e3 * statistics.median(times), "p20_ms": 1e3 * min(times),
                                 "p80_ms": 1e3 * max(times), "runs": len(times)}
    return harness.row("cli", provider, [1, 3, size, size], "uint8", "fp32", timing, device="cpu",
                       wall_s=None if error else statistics.median(times), error=error, **fields)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer", help="the peer's CLI executable (default: styletransfer-lite on PATH; none: skip)")
    ap.add_argument("--out-dir")
    args = ap.parse_args(argv)
    from nst_deploy.export import export_model
    from PIL import Image

    from nst_deploy.models import bundled_models

    script = Path(sys.executable).with_name("nst")  # the console script users run, where installed
    nst = [str(script)] if script.is_file() else [sys.executable, "-m", "nst_deploy.cli"]
    peer = None if args.peer == "none" else args.peer or shutil.which("styletransfer-lite")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, harness.keep_partial("cli", rows, args.out_dir):
        tmp = Path(tmp)
        export_model(bundled_models()["johnson__starry_night"], tmp / "exp", formats=("onnx", "torchscript"))
        export_model(bundled_models()["johnson__starry_night"], tmp / "exp8", formats=("onnx",), int8=True)
        models = {"nst run NAME (bundled, int8 copy)": "starry_night",
                  "nst run model.onnx": str(tmp / "exp" / "model.onnx"),
                  "nst run model.onnx (--int8 export)": str(tmp / "exp8" / "model.onnx"),
                  "nst run model.pt (TorchScript)": str(tmp / "exp" / "model.pt")}
        for size in args.sizes:
            photo = tmp / f"photo{size}.jpg"
            Image.open(PHOTO).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(photo, quality=92)
            for name, model in models.items():
                times, err = wall([*nst, "run", model, str(photo), "-o", str(tmp / "out.jpg"), "-q",
                                   "--device", "cpu"], args.repeats)
                r = _row(name, size, times, err)
                harness.emit(r)
                rows.append(r)
            if peer:
                times, err = wall([peer, "stylize", str(photo), "-s", "0", "-o", str(tmp / "peer.png"),
                                   "--max-size", str(size), "--device", "cpu"], args.repeats)
                r = _row("styletransfer-lite stylize (peer)", size, times, err, peer=peer)
                harness.emit(r)
                rows.append(r)
        empty, _ = wall([sys.executable, "-c", "pass"], args.repeats)
        base = statistics.median(empty)
        for name, mod in (("import nst_deploy.runtime (no torch)", "nst_deploy.runtime, nst_deploy.imageio"),
                          ("import nst_deploy.optimize (torch)", "nst_deploy.optimize"),
                          ("import torch", "torch")):
            times, err = wall([sys.executable, "-c", f"import {mod}"], args.repeats)
            r = _row(name, 0, [t - base for t in times], err)
            harness.emit(r)
            rows.append(r)
    path = harness.write_results("cli", rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
