"""Benchmark: the Gram matrix and the fused Gram style loss on VGG19's style-layer shapes.

Shapes: the features of conv1_1, conv2_1, conv3_1, conv4_1 and conv5_1 for a ``S x S`` image
(``S`` = 512 and 1024 by default), batch 1, float32. Ops and passes:

* ``gram/fwd``: ``G = F F^T / HW``;
* ``gram/fwd+bwd``: forward, then backward of ``sum(G * dG)``;
* ``gram_loss/fwd+bwd``: the style loss ``||G - A||^2 / (4 C^2)`` and its gradient.

Providers: ``eager`` (the pure-torch reference with autograd), ``compile`` (``torch.compile`` of
the eager function), ``fused-torch`` (the fused loss's autograd Function on the torch backend, the
path the CPU takes: one-pass backward), ``triton`` (the fused kernels; CUDA only: the CPU
interpreter is for tests, not timing). Figures: median ms, GB/s (``F`` read once, ``dF`` written
once for the backward) and FLOP/s (``2 C^2 HW`` per Gram, the full product a plain matmul
computes), and on the H100 the fraction of its HBM bandwidth (3.35 TB/s).

Usage::

    python benchmarks/bench_kernels.py [--sizes 512 1024] [--providers eager compile triton]
        [--ops gram/fwd gram/fwd+bwd gram_loss/fwd+bwd] [--device auto] [--min-run-time 1.0]

Results go to ``benchmarks/results/kernels-<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from nst_deploy.kernels import gram, gram_loss, gram_loss_ref, gram_ref  # noqa: E402

from nst_deploy.lossnets import layer_info  # noqa: E402

SUBJECT = "kernels"
PROVIDERS = ("eager", "fused-torch", "compile", "triton")
OPS = ("gram/fwd", "gram/fwd+bwd", "gram_loss/fwd+bwd")
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
H100_HBM_GBPS = 3350.0


def style_shapes(size: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``(layer, (1, C, H, W))`` of VGG19's style layers for a ``size`` x ``size`` input."""
    return [(name, (1, c, h, w)) for name, c, h, w in layer_info("vgg19", size) if name in STYLE_LAYERS]


def _fn(op: str, provider: str, x: torch.Tensor, target: torch.Tensor, dg: torch.Tensor):
    c = x.shape[1]
    scale = 1.0 / (4.0 * c * c)
    backend = "triton" if provider == "triton" else "torch"

    def gram_fwd():
        with torch.no_grad():
            return gram(x, "hw", backend=backend) if provider == "triton" else gram_ref(x, "hw")

    def gram_fwd_bwd():
        g = gram(x, "hw", backend=backend) if provider == "triton" else gram_ref(x, "hw")
        (g * dg).sum().backward()
        x.grad = None

    def loss_fwd_bwd():
        if provider in ("triton", "fused-torch"):
            loss = gram_loss(x, target, normalize="hw", scale=scale, backend=backend)
        else:  # plain autograd through the reference: what a straightforward implementation does
            loss = gram_loss_ref(x, target, normalize="hw", scale=scale)
        loss.backward()
        x.grad = None

    if provider == "fused-torch" and op != "gram_loss/fwd+bwd":
        raise RuntimeError("fused-torch is the fused loss only")
    fn = {"gram/fwd": gram_fwd, "gram/fwd+bwd": gram_fwd_bwd, "gram_loss/fwd+bwd": loss_fwd_bwd}[op]
    return torch.compile(fn) if provider == "compile" else fn


def _bytes(op: str, shape) -> float:
    b, c, h, w = shape
    feat = b * c * h * w * 4.0
    return feat if op == "gram/fwd" else 2.0 * feat + feat  # read F (twice: fwd, bwd), write dF


def _flops(op: str, shape) -> float:
    b, c, h, w = shape
    one = 2.0 * b * c * c * h * w
    return one if op == "gram/fwd" else 2.0 * one


def run_one(size: int, layer: str, shape, op: str, provider: str, device: str, min_run_time: float) -> dict:
    extra: dict = {"device": device, "op": op, "layer": layer, "image_size": size}
    timing = None
    try:
        if provider == "triton" and not device.startswith("cuda"):
            raise RuntimeError("the Triton kernels are timed on CUDA only")
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(shape, device=device, generator=g, requires_grad=op != "gram/fwd")
        target = gram_ref(torch.randn(shape, device=device, generator=g)).detach()
        dg = torch.randn(target.shape, device=device, generator=g)
        fn = _fn(op, provider, x, target, dg)
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if provider == "compile":
            extra["compile_s"] = time.perf_counter() - start
        timing = harness.bench(fn, device=device, min_run_time=min_run_time)
        sec = timing["median_ms"] / 1e3
        extra["gb_per_s"] = _bytes(op, shape) / sec / 1e9
        extra["gflops_per_s"] = _flops(op, shape) / sec / 1e9
        if device.startswith("cuda") and "H100" in harness.device_name(device):
            extra["fraction_of_peak"] = extra["gb_per_s"] / H100_HBM_GBPS
    except Exception as exc:  # record the failure and go on
        extra["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        timing = None
    precision = "tf32" if device.startswith("cuda") and torch.get_float32_matmul_precision() != "highest" else "fp32"
    return harness.row(SUBJECT, provider, list(shape), "float32", precision, timing, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=None,
                        help="default: all on CUDA; eager fused-torch compile on CPU")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--layers", nargs="+", choices=STYLE_LAYERS, default=list(STYLE_LAYERS))
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement (CPU)")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    args = parser.parse_args(argv)
    device = harness.device_from_arg(args.device)
    cpu_default = ["eager", "fused-torch", "compile"]
    providers = args.providers or (list(PROVIDERS) if device.startswith("cuda") else cpu_default)
    rows = []
    for size in args.sizes:
        for layer, shape in style_shapes(size):
            if layer not in args.layers:
                continue
            for op in args.ops:
                for provider in providers:
                    if provider == "fused-torch" and op != "gram_loss/fwd+bwd":
                        continue
                    r = run_one(size, layer, shape, op, provider, device, args.min_run_time)
                    harness.emit(r)
                    rows.append(r)
    path = harness.write_results(SUBJECT, rows, out_dir=args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r.get("error") for r in rows if r["provider"] != "triton" or device.startswith("cuda")) else 0


if __name__ == "__main__":
    raise SystemExit(main())
