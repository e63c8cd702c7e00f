"""Benchmark: the style-statistic kernels on VGG19's style-layer shapes.

Shapes: the features of conv1_1, conv2_1, conv3_1, conv4_1 and conv5_1 for a ``S x S`` image
(``S`` = 512 and 1024 by default), batch 1. Ops (``--ops``):

* ``gram/fwd``: ``G = F F^T / HW``;
* ``gram/fwd+bwd``: forward, then backward of ``sum(G * dG)``;
* ``gram_loss/fwd+bwd``: the style loss ``||G - A||^2 / (4 C^2)`` and its gradient;
* ``masked_gram/fwd``: ``K`` masked Gram matrices (``--masks K``, soft masks summing to 1 per pixel);
* ``masked_loss/fwd+bwd``: the masked style loss over the ``K`` masks and its gradient;
* ``autocorr_loss/fwd+bwd``: the per-channel autocorrelation style loss and its gradient;
* ``local_loss/fwd+bwd``: the localized Gram loss (window ``s``, default 0: pixel-wise) and its
  gradient (``--windows 0 2``: one row each); the eager baseline materializes both
  ``(B, C, C, H, W)`` localized Grams and is skipped (an error row saying so) where the estimate
  of its working memory (:func:`local_bytes`) exceeds ``--max-materialize-gb``.

Providers (``--providers``):

* ``eager``: what a straightforward torch implementation does, with plain autograd: ``bmm`` in the
  input dtype for the Gram (cuBLAS on a GPU); one masked ``bmm`` per mask; for the autocorrelation
  loss the ``torch.fft`` pipeline ``irfft2(|rfft2(pad F)|^2)``, the lag window gathered and
  compared with the style's; the localized Grams materialized;
* ``compile``: ``torch.compile`` of the eager function;
* ``fused-torch``: our fused autograd Functions / formulas on the torch backend (the CPU path): the
  Gram loss with its one-pass backward, the batched masked reference, the Parseval-domain
  autocorrelation loss, the expanded localized loss (``O(C H W)`` memory);
* ``triton``: our Triton kernels (CUDA only: the CPU interpreter is for tests, not timing);
* ``syrk``: the Gram forward by cuBLAS SYRK (``kernels/csrc``; float32 CUDA only; Gram ops only).

``--dtype bfloat16`` runs the Gram ops on bf16 features (fp32 accumulation in ours, cuBLAS bf16
``bmm`` for eager); ``--tf32`` allows TF32 for fp32 matmuls in torch and in the Triton kernels
(``torch.set_float32_matmul_precision("high")``); compare providers at matched precision only.

Figures: median ms; GB/s of the minimum traffic (``F`` read once, masks read once, ``dF`` written
once and ``F`` read again for a backward); GFLOP/s counting ``2 C^2 HW`` per Gram (the full product
a plain matmul computes; none for the autocorrelation); on an H100 or H200 the fraction of its HBM
bandwidth (:data:`HBM_PEAK_GBPS`). ``--gram-warps 4 8`` times the Triton Gram ops once per warp
count (providers ``triton-w4``, ``triton-w8``) instead of the built-in choice (8 for 64-channel
tiles).

Usage::

    python benchmarks/bench_kernels.py [--sizes 512 1024] [--providers eager compile triton syrk]
        [--ops gram/fwd ...] [--dtype float32] [--tf32] [--masks 4] [--device auto] [--min-run-time 1.0]

Results go to ``benchmarks/results/kernels-<device>.json`` (``--tag`` adds a suffix, for example
``bf16``, so that runs at other settings do not replace it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from nst_deploy.kernels import (  # noqa: E402
    autocorr_fft,
    autocorr_spectrum,
    autocorr_style_loss,
    gram,
    gram_loss,
    local_gram_loss,
    local_gram_ref,
    masked_gram,
    masked_gram_style_loss,
)

from nst_deploy.lossnets import layer_info  # noqa: E402

# the module (the package's attribute of that name is the function)
gram_kernel = importlib.import_module("nst_deploy.kernels.gram")

SUBJECT = "kernels"
PROVIDERS = ("eager", "fused-torch", "compile", "triton", "syrk")
OPS = ("gram/fwd", "gram/fwd+bwd", "gram_loss/fwd+bwd", "masked_gram/fwd", "masked_loss/fwd+bwd",
       "autocorr_loss/fwd+bwd", "local_loss/fwd+bwd")
GRAM_OPS = OPS[:3]
#: (op, provider) pairs that do not exist: fused-torch is a loss path; syrk is the Gram's forward
SKIP = {("gram/fwd", "fused-torch"), ("gram/fwd+bwd", "fused-torch")} | {(op, "syrk") for op in OPS[3:]}
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: HBM bandwidth (GB/s) of the GPUs the fraction of peak is given for, by a part of the device name
#: (first match): H200 4.8 TB/s, H100 NVL 3.9, H100 PCIe 2.0, H100 SXM 3.35.
HBM_PEAK_GBPS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0))


def hbm_peak_gbps(device_name: str) -> float | None:
    """The HBM bandwidth of a device by its name (:data:`HBM_PEAK_GBPS`), ``None`` if not listed."""
    return next((gbps for part, gbps in HBM_PEAK_GBPS if part in device_name), None)


def style_shapes(size: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``(layer, (1, C, H, W))`` of VGG19's style layers for a ``size`` x ``size`` input."""
    return [(name, (1, c, h, w)) for name, c, h, w in layer_info("vgg19", size) if name in STYLE_LAYERS]


def applies(op: str, provider: str) -> bool:
    return (op, provider) not in SKIP


# --- the eager baselines: plain torch with autograd ------------------------------------------------

def eager_gram(x: torch.Tensor) -> torch.Tensor:
    """``bmm`` in the input dtype (cuBLAS on a GPU, bf16 with fp32 accumulation for bf16), then ``/ HW``."""
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def eager_masked_grams(x: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """One masked ``bmm`` per mask: ``(F M_k)(F M_k)^T / sum M_k``."""
    b, c, h, w = x.shape
    out = []
    for k in range(masks.shape[1]):
        m = masks[:, k:k + 1]
        f = (x * m).reshape(b, c, h * w)
        out.append(torch.bmm(f, f.transpose(1, 2)) / m.sum())
    return out


def make_masks(k: int, h: int, w: int, device: str, generator: torch.Generator) -> torch.Tensor:
    """``(1, K, H, W)`` soft masks that sum to 1 at every pixel (smooth random fields, softmax)."""
    logits = torch.randn(1, k, max(1, h // 8), max(1, w // 8), device=device, generator=generator)
    logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return torch.softmax(4.0 * logits, dim=1)


# --- one measurement ------------------------------------------------------------------------------

def local_bytes(shape, window: int) -> float:
    """Working bytes of the materialized float32 localized Gram ``(B, C, C, H, W)``: the Gram, and
    for a window the ``(2s+1)^2``-fold buffer its convolution may unfold into (the CPU's did: a run
    at conv5_1, s = 2, was killed at 24 GB)."""
    b, c, h, w = shape
    return 4.0 * b * c * c * h * w * (1 if window == 0 else (2 * window + 1) ** 2)


def _fn(op: str, provider: str, x: torch.Tensor, g: torch.Generator, n_masks: int, window: int = 0):
    """The zero-argument callable timed for ``(op, provider)`` on features ``x``; it returns the op's
    output (forward ops) or its loss (after the backward), so that providers can be compared."""
    b, c, h, w = x.shape
    dev = x.device.type if x.device.type == "cpu" else str(x.device)
    backend = {"triton": "triton", "syrk": "syrk"}.get(provider, "torch")
    scale = 1.0 / (4.0 * c * c)
    with torch.no_grad():
        y = torch.randn(x.shape, device=x.device, generator=g, dtype=x.dtype)
        target = eager_gram(y.float())
        dg = torch.randn(target.shape, device=x.device, generator=g)
        masks = make_masks(n_masks, h, w, dev, g) if op.startswith("masked") else None
        m_targets = torch.stack(eager_masked_grams(y.float(), masks), 1)[0] if masks is not None else None
        spectrum = autocorr_spectrum(y) if op.startswith("autocorr") else None
        r_style = autocorr_fft(y) if op.startswith("autocorr") and provider in ("eager", "compile") else None

    def backward(loss):
        loss.backward()
        x.grad = None
        return loss.detach()

    def gram_of():
        return eager_gram(x) if provider in ("eager", "compile") else gram(x, "hw", backend=backend)

    def gram_fwd():
        with torch.no_grad():
            return gram_of()

    def gram_fwd_bwd():
        return backward((gram_of().float() * dg).sum())

    def gram_loss_fwd_bwd():
        if provider in ("eager", "compile"):
            return backward((eager_gram(x).float() - target).square().sum() * scale)
        else:
            return backward(gram_loss(x, target, normalize="hw", scale=scale, backend=backend))

    def masked_fwd():
        with torch.no_grad():
            if provider in ("eager", "compile"):
                return eager_masked_grams(x, masks)
            return masked_gram(x, masks, backend=backend)

    def masked_loss_fwd_bwd():
        if provider in ("eager", "compile"):
            grams = eager_masked_grams(x, masks)
            return backward(sum((gk[0].float() - m_targets[k]).square().sum() for k, gk in enumerate(grams)) * scale)
        else:
            return backward(masked_gram_style_loss(x, masks, m_targets, backend=backend))

    def autocorr_loss_fwd_bwd():
        if provider in ("eager", "compile"):
            return backward((autocorr_fft(x) - r_style).square().sum())
        else:
            return backward(autocorr_style_loss(x, spectrum, backend=backend))

    def local_loss_fwd_bwd():
        if provider in ("eager", "compile"):
            return backward((local_gram_ref(x, window) - local_target).square().sum())
        return backward(local_gram_loss(x, y, window=window, backend=backend))

    if op.startswith("local") and provider in ("eager", "compile"):
        with torch.no_grad():
            local_target = local_gram_ref(y, window)

    fn = {"gram/fwd": gram_fwd, "gram/fwd+bwd": gram_fwd_bwd, "gram_loss/fwd+bwd": gram_loss_fwd_bwd,
          "masked_gram/fwd": masked_fwd, "masked_loss/fwd+bwd": masked_loss_fwd_bwd,
          "autocorr_loss/fwd+bwd": autocorr_loss_fwd_bwd, "local_loss/fwd+bwd": local_loss_fwd_bwd}[op]
    if provider != "compile":
        return fn
    # A fresh static-shape compile per measurement: dynamo's cache would otherwise turn the later
    # shapes of the same function into one dynamic-shape graph, or fall back to eager at its limit.
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def min_bytes(op: str, shape, element_size: int, n_masks: int) -> float:
    """The least traffic of ``op``: ``F`` read once (and the masks), plus ``F`` read and ``dF`` written
    for a backward."""
    b, c, h, w = shape
    feat = float(b * c * h * w * element_size)
    masks = float(n_masks * h * w * 4) if op.startswith("masked") else 0.0
    return feat + masks if op.endswith("/fwd") else 3.0 * feat + 2.0 * masks


def flops(op: str, shape, n_masks: int) -> float | None:
    b, c, h, w = shape
    if op.startswith(("autocorr", "local")):
        return None
    one = 2.0 * b * c * c * h * w * (n_masks if op.startswith("masked") else 1)
    return one if op.endswith("/fwd") else 2.0 * one


def precision_name(device: str, dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return "tf32" if device.startswith("cuda") and torch.get_float32_matmul_precision() != "highest" else "fp32"


def run_one(size: int, layer: str, shape, op: str, provider: str, device: str, min_run_time: float,
            dtype: torch.dtype = torch.float32, n_masks: int = 4, window: int = 0,
            max_materialize_gb: float = 2.0) -> dict:
    extra: dict = {"device": device, "op": op, "layer": layer, "image_size": size}
    if op.startswith("masked"):
        extra["masks"] = n_masks
    if op.startswith("local"):
        extra["window"] = window
    timing = None
    try:
        if provider in ("triton", "syrk") and not device.startswith("cuda"):
            raise RuntimeError(f"the {provider} provider is timed on CUDA only")
        if provider == "syrk" and dtype != torch.float32:
            raise RuntimeError("the syrk provider is float32 only")
        if op.startswith("local") and provider in ("eager", "compile"):
            gb = local_bytes(shape, window) / 1e9
            if gb > max_materialize_gb:
                raise RuntimeError(f"skipped: materializing the localized Gram needs about {gb:.1f} GB "
                                   f"(--max-materialize-gb {max_materialize_gb:g})")
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(shape, device=device, generator=g, dtype=dtype).requires_grad_(not op.endswith("/fwd"))
        fn = _fn(op, provider, x, g, n_masks, window)
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if provider == "compile":
            extra["compile_s"] = time.perf_counter() - start
        timing = harness.bench(fn, device=device, min_run_time=min_run_time)
        sec = timing["median_ms"] / 1e3
        extra["gb_per_s"] = min_bytes(op, shape, x.element_size(), n_masks) / sec / 1e9
        fl = flops(op, shape, n_masks)
        extra["gflops_per_s"] = None if fl is None else fl / sec / 1e9
        peak = hbm_peak_gbps(harness.device_name(device)) if device.startswith("cuda") else None
        if peak is not None:
            extra["fraction_of_peak"] = extra["gb_per_s"] / peak
            extra["hbm_peak_gbps"] = peak
    except Exception as exc:  # record the failure and go on
        extra["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        timing = None
    dname = str(dtype).removeprefix("torch.")
    return harness.row(SUBJECT, provider, list(shape), dname, precision_name(device, dtype), timing, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=None,
                        help="default: all on CUDA; eager fused-torch compile on CPU")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--layers", nargs="+", choices=STYLE_LAYERS, default=list(STYLE_LAYERS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="feature dtype (half dtypes: Gram ops only)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls (torch and Triton)")
    parser.add_argument("--masks", type=int, default=4, help="masks of the masked ops")
    parser.add_argument("--compile-ops", nargs="+", choices=OPS, default=None,
                        help="the ops the compile provider runs on (default: all; each shape compiles afresh)")
    parser.add_argument("--windows", type=int, nargs="+", default=[0], help="windows s of the localized loss")
    parser.add_argument("--max-materialize-gb", type=float, default=2.0,
                        help="skip the eager localized loss above this size of one materialized Gram")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement (CPU)")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix of the results file name (e.g. bf16, tf32)")
    parser.add_argument("--gram-warps", type=int, nargs="+", choices=(2, 4, 8, 16), default=None,
                        help="time the triton Gram ops once per warp count (providers triton-wN)")
    args = parser.parse_args(argv)
    if args.masks < 1:
        parser.error("--masks must be at least 1")
    if min(args.windows) < 0:
        parser.error("--windows must be at least 0")
    device = harness.device_from_arg(args.device)
    dtype = DTYPES[args.dtype]
    ops = list(args.ops) if dtype == torch.float32 else [op for op in args.ops if op in GRAM_OPS]
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    cpu_default = ["eager", "fused-torch", "compile"]
    providers = args.providers or (list(PROVIDERS) if device.startswith("cuda") else cpu_default)
    rows = []
    subject = f"{SUBJECT}-{harness.slug(args.tag)}" if args.tag else SUBJECT
    with harness.keep_partial(subject, rows, args.out_dir):
        for size in args.sizes:
            for layer, shape in style_shapes(size):
                if layer not in args.layers:
                    continue
                for op in ops:
                    for window in args.windows if op.startswith("local") else [0]:
                        for provider in providers:
                            if not applies(op, provider):
                                continue
                            if provider == "compile" and args.compile_ops and op not in args.compile_ops:
                                continue
                            warps = args.gram_warps if provider == "triton" and op in GRAM_OPS else None
                            for w in warps or [None]:
                                gram_kernel.GRAM_WARPS = w
                                r = run_one(size, layer, shape, op, provider, device, args.min_run_time, dtype,
                                            args.masks, window, args.max_materialize_gb)
                                if w is not None:
                                    r.update(provider=f"triton-w{w}", num_warps=w)
                                harness.emit(r)
                                rows.append(r)
                            gram_kernel.GRAM_WARPS = None
    path = harness.write_results(subject, rows, out_dir=args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    expected = [r for r in rows if (device.startswith("cuda") or not r["provider"].startswith(("triton", "syrk")))
                and not str(r.get("error", "")).startswith("RuntimeError: skipped:")]
    return 1 if any(r.get("error") for r in expected) else 0


if __name__ == "__main__":
    raise SystemExit(main())
