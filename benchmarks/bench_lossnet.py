"""Benchmark: VGG19 loss network forward+backward, truncated at conv5_1.

One step extracts the usual style/content layers (``conv1_1 ... conv5_1`` plus ``conv4_2``) from a
``1 x 3 x S x S`` float32 image, sums the mean squares of the features, and back-propagates to the
image (the network's weights are frozen). Providers:

* ``eager``: the bundled VGG19, NCHW.
* ``channels_last``: the same network in channels_last memory format.
* ``compile``: ``torch.compile`` of the eager step; the first call's wall time is ``compile_s``.
  By default (``--compile-cache cold``) it compiles into a fresh, temporary inductor cache, so that
  ``compile_s`` does not depend on earlier runs (a warm on-disk cache cuts it about tenfold).

Usage::

    python benchmarks/bench_lossnet.py [--sizes 256 512] [--providers eager channels_last compile]
        [--device auto] [--min-run-time 2.0] [--compile-cache cold]

Results go to ``benchmarks/results/lossnet_vgg19-<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

import nst_deploy  # noqa: E402
from nst_deploy.lossnets import layer_info  # noqa: E402

SUBJECT = "lossnet_vgg19"
PROVIDERS = ("eager", "channels_last", "compile")
LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1", "conv4_2"]
DEEPEST = "conv5_1"


def conv_flops(size: int) -> float:
    """Forward+backward FLOPs of the 3x3 convs up to ``conv5_1`` for a ``size`` x ``size`` input.

    Forward: ``2 * Cin * Cout * 9 * H * W`` per conv (``H x W``: its output map). The weights are
    frozen (``requires_grad=False``), so backward computes only the input gradient (no weight
    gradient), which costs about as much as the forward: forward+backward ~= 2 x forward.
    """
    forward = 0.0
    cin = 3
    for layer, cout, h, w in layer_info("vgg19", size):
        if layer.startswith("conv"):
            forward += 2.0 * cin * cout * 9 * h * w
            cin = cout
        if layer == DEEPEST:
            break
    return 2.0 * forward


def make_step(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward+backward step on ``x`` (gradient cleared afterwards)."""

    def step() -> None:
        feats = net(x, LAYERS)
        loss = sum(f.square().mean() for f in feats.values())
        loss.backward()
        x.grad = None

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fresh_inductor_cache() -> contextlib.AbstractContextManager:
    """A temporary, empty inductor/triton cache (private torch API: a no-op if it is missing)."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:
        return contextlib.nullcontext()
    return fresh_cache()


def _measure(size: int, provider: str, device: str, min_run_time: float, extra: dict) -> dict:
    net = nst_deploy.load_lossnet("vgg19", device=device, channels_last=provider == "channels_last")
    x = torch.rand(1, 3, size, size, device=device, requires_grad=True)
    step = make_step(net, x)
    if provider == "compile":
        # One eager step first: LossNetwork.forward validates the input size with an lru_cached
        # binary search over meta-tensor passes (lossnets.min_input_size). If that cache is cold,
        # Dynamo traces the search with a symbolic size and fails ("Output size is too small").
        step()
        torch._dynamo.reset()  # a fresh compile per size, so compile_s is comparable
        step = torch.compile(step)
        start = time.perf_counter()
        step()
        _sync(device)
        extra["compile_s"] = time.perf_counter() - start
    return harness.bench(step, device=device, min_run_time=min_run_time)


def run_one(size: int, provider: str, device: str, min_run_time: float, compile_cache: str = "cold") -> dict:
    """Measure one (size, provider) pair and return its result row (never raises)."""
    shape = (1, 3, size, size)
    precision = "tf32" if device.startswith("cuda") and torch.backends.cudnn.allow_tf32 else "fp32"
    extra: dict = {"device": device, "layers": LAYERS, "gflop_per_step": conv_flops(size) / 1e9}
    timing = None
    if provider == "compile":
        extra["compile_cache"] = compile_cache
    cold = provider == "compile" and compile_cache == "cold"
    try:
        with _fresh_inductor_cache() if cold else contextlib.nullcontext():
            timing = _measure(size, provider, device, min_run_time, extra)
        extra["gflops_per_s"] = conv_flops(size) / (timing["median_ms"] / 1e3) / 1e9
    except Exception as exc:  # record the failure (e.g. no C++ compiler for inductor) and go on
        message = " ".join(str(exc).split())  # one line
        extra["error"] = f"{type(exc).__name__}: {message[:300]}"
        timing = None
    return harness.row(SUBJECT, provider, shape, "float32", precision, timing, **extra)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement (CPU)")
    parser.add_argument(
        "--compile-cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold: compile into a fresh temporary inductor cache; warm: use the usual on-disk cache",
    )
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    args = parser.parse_args(argv)

    device = harness.device_from_arg(args.device)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for size in args.sizes:
        for provider in args.providers:
            r = run_one(size, provider, device, args.min_run_time, args.compile_cache)
            harness.emit(r)
            rows.append(r)
    path = harness.write_results(SUBJECT, rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
