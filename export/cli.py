"""``nst-export``: export a trained feed-forward network to TorchScript and ONNX, verified."""

from __future__ import annotations

import argparse
import sys
import warnings

from nst_deploy import __version__
from nst_deploy.errors import NSTError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from .core import OPSETS  # imports torch: inside main's Ctrl-C handler

    p = argparse.ArgumentParser(
        prog="nst-export",
        description="Export a trained feed-forward style network to TorchScript and ONNX, verified "
        "against eager PyTorch at several sizes (odd, non-square, batch 2), with a manifest of sha256s.",
    )
    p.add_argument("--version", action="version", version=f"nst-deploy {__version__}")
    p.add_argument("model", help="a model file written by 'nst train', or a bundled model's name")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--format", default="torchscript,onnx", help="torchscript, onnx or both (default both)")
    p.add_argument("--opset", type=int, default=18,
                   help=f"ONNX opset, {OPSETS[0]} to {OPSETS[1]} (default 18; recorded in the manifest)")
    p.add_argument("--fp16", action="store_true",
                   help="half-precision weights and activations with float32 input and output (verified at rtol 1e-2)")
    p.add_argument("--fp16-io", action="store_true", help="fully half precision: float16 input and output too")
    p.add_argument("--static", nargs=2, type=int, metavar=("H", "W"),
                   help="fix the ONNX height and width (multiples of 4); the batch stays dynamic")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx (ONNX Runtime static quantization, faster on the CPU), its "
                        "quality drop against float32 measured and bounded")
    p.add_argument("--no-graph-opt", action="store_true",
                   help="leave out the exact graph rewrites that speed up ONNX Runtime (space-to-depth of the last "
                        "convolution)")
    p.add_argument("--calibration", metavar="DIR",
                   help="photographs to calibrate --int8 on (default: the bundled ones)")
    t = p.add_argument_group("serving with NVIDIA Triton Inference Server")
    t.add_argument("--triton-repo", metavar="DIR", help="also write a Triton model repository into DIR")
    t.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (default 8)")
    t.add_argument("--instances", type=int, default=1, help="Triton model instances per device (default 1)")
    t.add_argument("--triton-kind", choices=("gpu", "cpu"), default="gpu", help="Triton instance kind (default gpu)")
    t.add_argument("--triton-python", action="store_true",
                   help="also write NAME_python: the ONNX model run by ONNX Runtime in Triton's Python backend, "
                        "which nst serve --repository (and any Triton with the Python backend) loads")
    t.add_argument("--tensorrt-fp16", action="store_true",
                   help="ask Triton's onnxruntime backend for the TensorRT accelerator in FP16")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # the export cleans its staging folder on the way out: the output folder is as it was
        print("nst-export: interrupted; nothing written", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from nst_deploy.nets.io import model_path

    from .core import export_model

    precision = "fp16-io" if args.fp16_io else "fp16" if args.fp16 else "fp32"
    triton = {"max_batch_size": args.max_batch_size, "instances": args.instances, "kind": args.triton_kind,
              "tensorrt_fp16": args.tensorrt_fp16, "python": args.triton_python}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = export_model(model_path(args.model), args.output,
                                    [f.strip() for f in args.format.split(",") if f.strip()], args.opset,
                                    check=not args.no_verify, precision=precision, static=args.static,
                                    triton_repo=args.triton_repo, triton=triton, int8=args.int8,
                                    calibration=args.calibration, graph_opt=not args.no_graph_opt,
                                    log=lambda msg: print(f"nst-export: {msg}", file=sys.stderr))
    except NSTError as e:
        print(f"nst-export: error: {e}", file=sys.stderr)
        return 2
    for fmt, a in manifest["artifacts"].items():
        err = (manifest["verification"] or {}).get(fmt, {}).get("max_abs_error")
        check = f", max error vs eager {err:.2e}" if err is not None else ""
        if fmt == "onnx_int8":
            w = manifest["int8"]["worst"]
            check = (f", vs float32: {100 * w['style_drift']:.1f}% of the stylization lost, content drift "
                     f"{w['content_drift']:.2f}, PSNR {w['psnr_db']:.1f} dB")
        print(f"nst-export: {fmt}: {args.output}/{a['file']} ({a['bytes'] / 1e6:.2f} MB{check})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
