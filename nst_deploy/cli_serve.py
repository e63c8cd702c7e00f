"""``nst serve``: style networks on NVIDIA Triton Inference Server (see :mod:`nst_deploy.serve`).

Starts the server, prints one line naming its URLs once every model is ready, and runs until SIGTERM or
Ctrl-C; then it drains (requests in flight finish, new ones are refused) and exits 0. A port in use, a
bad model or a server that fails to start is one error line and exit code 2; a server that dies while
serving is exit code 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .errors import NSTError

__all__ = ["add_serve", "cmd_serve"]


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Server

    if not args.models and not args.repository:
        raise NSTError("give one or more models to serve (bundled names, nst train files, nst-export folders), "
                       "or --repository DIR")
    server = Server(args.models, repository=args.repository, host=args.host, http_port=args.http_port,
                    grpc_port=args.grpc_port, metrics_port=args.metrics_port, max_batch_size=args.max_batch_size,
                    max_queue_delay_ms=args.max_queue_delay_ms, batching={"on": True, "off": False}.get(args.batching),
                    instances=args.instances, max_pixels=args.max_pixels, request_timeout_s=args.request_timeout,
                    device=args.device, threads=args.threads, memory_mb=args.memory_mb, log=args.log,
                    verbose=args.verbose, exit_timeout_s=args.exit_timeout)
    stop = threading.Event()
    got: list[str] = []

    def on_signal(signum, _frame):
        got.append(signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"nst serve: starting Triton Inference Server with {', '.join(server.models)} ...", file=sys.stderr)
        server.start(timeout=args.start_timeout)
        u = server.urls
        print(f"nst serve: ready: {', '.join(server.models)} on HTTP {u['http']}, gRPC {u['grpc']}, "
              f"metrics {u['metrics']} (Ctrl-C stops)", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                code = server.wait()
                tail = "; ".join(server.log_tail(3))
                print(f"nst serve: error: the server exited with code {code}: {tail[-300:]}", file=sys.stderr)
                return 1
        print(f"nst serve: {got[0]}: finishing the requests in flight, refusing new ones", file=sys.stderr,
              flush=True)
        code = server.stop()
        print(f"nst serve: stopped (server exit code {code})", file=sys.stderr)
        return 0 if code == 0 else 1
    except BaseException:
        server.kill()
        raise
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def add_serve(sub) -> None:
    from .export.triton import MAX_PIXELS
    from .serve import DEFAULT_PORTS

    p = sub.add_parser(
        "serve", help="serve style networks on NVIDIA Triton Inference Server (HTTP, gRPC, metrics)",
        description="Serve style networks on NVIDIA Triton Inference Server: HTTP/REST and gRPC (KServe v2), "
                    "dynamic batching, Prometheus metrics. A request sends 'image', FP32 [N, 3, H, W] RGB in "
                    "[0, 1], to /v2/models/NAME/infer and gets 'stylized' back. Needs the serve extra.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="bundled name, nst train file or nst-export folder/file; NAME=MODEL chooses the served name")
    p.add_argument("--repository", metavar="DIR",
                   help="serve an existing model repository (nst-export --triton-repo DIR --triton-python); "
                        "MODEL then names which of its models to load (default all)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--http-port", type=int, default=DEFAULT_PORTS[0], help=f"default {DEFAULT_PORTS[0]}")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_PORTS[1], help=f"default {DEFAULT_PORTS[1]}")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS[2], help=f"default {DEFAULT_PORTS[2]}")
    p.add_argument("--max-batch-size", type=int, default=8, help="most images per batch (default 8)")
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                   help="how long the batcher waits for more requests of the same size (default 0)")
    p.add_argument("--batching", choices=("auto", "on", "off"), default="auto",
                   help="run queued requests of one size together (auto: on a GPU; on the CPU it gains nothing "
                        "and costs memory)")
    p.add_argument("--instances", type=int, default=1, help="model instances (processes) per model (default 1)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"most pixels (images x height x width) per request (default {MAX_PIXELS}, one 4K frame)")
    p.add_argument("--request-timeout", type=float, default=0.0, metavar="S",
                   help="refuse a request still queued after S seconds (default 0: no limit)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where instances run (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads per instance (default: the cores shared)")
    p.add_argument("--memory-mb", type=float,
                   help="working memory of one instance's call; larger images run in tiles (default: shared half)")
    p.add_argument("--exit-timeout", type=int, default=30, metavar="S",
                   help="on stop, how long requests in flight may take (default 30)")
    p.add_argument("--start-timeout", type=float, default=180.0, metavar="S",
                   help="how long the models may take to load (default 180)")
    p.add_argument("--log", metavar="FILE", help="append the server's log to FILE")
    p.add_argument("-v", "--verbose", action="store_true", help="copy the server's log to stderr")
    p.set_defaults(func=cmd_serve)
