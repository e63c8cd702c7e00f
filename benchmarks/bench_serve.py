"""Benchmark: ``nst serve`` (Triton Inference Server) against direct ``Stylizer`` calls in one process.

For each image size (512x512 and 1920x1080 by default), the bundled model (``--model``) is timed:

* ``direct``: ``Stylizer`` calls in this process on the same NCHW float batch the server gets (what the
  served model runs), one at a time;
* ``HTTP`` / ``gRPC`` through the server (tritonclient, binary tensors), with Triton's dynamic batcher on
  (``--max-queue-delay-ms``) and off, for 1, 4 and 16 concurrent clients, each client sending its
  requests back to back.

Rows hold p50 and p99 latency per request, images/s over the run, the server's resident memory (with its
model processes) after the run, and for one client the serving overhead: served p50 over the p50 of as many
direct calls made just before, with the server up and idle (the same machine state for both; not
interleaved, since ONNX Runtime's threads spin for a while after a call and slow whatever runs next; the
``direct Stylizer`` rows are measured before any server runs).
Every server request is checked (shape, finite values); an error fails the run. Usage::

    python benchmarks/bench_serve.py [--sizes 512x512,1920x1080] [--clients 1,4,16] [--out-dir DIR]

Results go to ``benchmarks/results/serve-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_clients(url: str, protocol: str, model: str, x: np.ndarray, clients: int, per_client: int) -> tuple:
    """``clients`` threads, each with its own client, sending ``per_client`` requests back to back:
    (latencies in seconds, wall seconds)."""
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def one() -> None:
        # a large image behind 15 others waits minutes on 2 cores: past tritonclient's 60 s HTTP default
        kw = {"network_timeout": 900.0} if protocol == "http" else {}
        c = tc.InferenceServerClient(url, **kw)
        inp = tc.InferInput("image", list(x.shape), "FP32")
        if protocol == "http":
            inp.set_data_from_numpy(x, binary_data=True)
            outputs = [tc.InferRequestedOutput("stylized", binary_data=True)]
        else:
            inp.set_data_from_numpy(x)
            outputs = [tc.InferRequestedOutput("stylized")]
        mine = []
        try:
            start.wait()
            for _ in range(per_client):
                t = time.perf_counter()
                y = c.infer(model, [inp], outputs=outputs).as_numpy("stylized")
                mine.append(time.perf_counter() - t)
                if y.shape != x.shape or not np.isfinite(y).all():
                    raise AssertionError(f"bad answer {y.shape}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            c.close()
            with lock:
                lat.extend(mine)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    return lat, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="starry_night")
    ap.add_argument("--sizes", default="512x512,1920x1080", help="WxH list")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=float, default=12.0,
                    help="requests per configuration at 512x512 (scaled down with the image area, at least one "
                         "per client; default 12)")
    ap.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--out-dir")
    args = ap.parse_args(argv)
    from nst_deploy.models import load_paths, model_path
    from nst_deploy.runtime import Stylizer
    from nst_deploy.serve import Server, free_port

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    rows: list[dict] = []
    path, fallback = load_paths(model_path(args.model), on_cpu=True)

    def record(provider: str, w: int, h: int, n_clients: int, lat: list[float], wall: float, **more) -> dict:
        p50 = _percentile(lat, 50)
        r = harness.row("serve", provider, [1, 3, h, w], "float32", "fp32", None, device="cpu", model=args.model,
                        clients=n_clients, requests=len(lat), p50_ms=round(1e3 * p50, 2),
                        p99_ms=round(1e3 * _percentile(lat, 99), 2), images_per_s=round(len(lat) / wall, 3),
                        **more)
        harness.emit(r)
        rows.append(r)
        return r

    with harness.keep_partial("serve", rows, args.out_dir):
        st = Stylizer.load(path, fallback=fallback, device="cpu")
        for w, h in sizes:
            x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
            n = max(3, round(args.requests * 512 * 512 / (w * h)))
            nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            st(nhwc)
            lat = []
            t0 = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                st(nhwc).transpose(0, 3, 1, 2)
                lat.append(time.perf_counter() - t)
            record("direct Stylizer", w, h, 1, lat, time.perf_counter() - t0)
        for batching in (True, False):
            ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
            with Server([args.model], batching=batching, max_batch_size=args.max_batch_size,
                        max_queue_delay_ms=args.max_queue_delay_ms if batching else 0.0, **ports) as srv:
                url = srv.urls["http"].split("//", 1)[1]
                mode = f"dynamic batching ({args.max_queue_delay_ms:g} ms)" if batching else "no batching"
                for w, h in sizes:
                    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
                    base = max(3, round(args.requests * 512 * 512 / (w * h)))
                    run_clients(url, "http", args.model, x, 1, 1)  # warm-up: this size's first call
                    protocols = ("http", "grpc") if batching else ("http",)
                    for protocol in protocols:
                        target = url if protocol == "http" else srv.urls["grpc"]
                        for k in clients if protocol == "http" else [1]:
                            per = max(1, -(-base // k))
                            more = {"batching": batching}
                            if k == 1:  # direct calls just before, back to back, with this server idle
                                time.sleep(1.0)  # the previous run's threads settle
                                direct = []
                                for _ in range(per):
                                    t = time.perf_counter()
                                    st(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
                                    direct.append(time.perf_counter() - t)
                                lat, wall = run_clients(target, protocol, args.model, x, 1, per)
                                more["direct_p50_ms"] = round(1e3 * _percentile(direct, 50), 2)
                                more["overhead_vs_direct"] = round(_percentile(lat, 50) / _percentile(direct, 50), 3)
                            else:
                                lat, wall = run_clients(target, protocol, args.model, x, k, per)
                            more["server_rss_mb"] = round(srv.rss_mb(), 1)
                            record(f"{protocol.upper()}, {mode}", w, h, k, lat, wall, **more)
    out = harness.write_results("serve", rows, args.out_dir)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
