"""``nst serve`` on a real Triton Inference Server (the nvidia-pytriton binary), on localhost ports chosen free.

One server per module serves the two bundled styles and a three-style network; the lifecycle tests
(file deleted, SIGTERM under load, SIGKILL and restart, the CLI) start their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs the serve extra")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from nst_deploy.errors import NSTError  # noqa: E402
from nst_deploy.models import load_paths, model_path  # noqa: E402
from nst_deploy.runtime import Stylizer  # noqa: E402
from nst_deploy.serve import Server, free_port  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[1] / "nst_deploy" / "data" / "models"
MAX_PIXELS = 2 * 256 * 256


def _ports() -> dict:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def _stylizer(name: str) -> Stylizer:
    path, fallback = load_paths(model_path(name), on_cpu=True)
    return Stylizer.load(path, fallback=fallback)


def _reference(st: Stylizer, x: np.ndarray, **kw) -> np.ndarray:
    """What the served model computes: the Stylizer on the NCHW float batch (clipped to [0, 1])."""
    return st(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), **kw).transpose(0, 3, 1, 2)


def _image(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32)


def _http_infer(client, model: str, x: np.ndarray, style: np.ndarray | None = None, dtype: str = "FP32",
                timeout=None) -> np.ndarray:
    inp = httpclient.InferInput("image", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=True)
    inputs = [inp]
    if style is not None:
        s = httpclient.InferInput("style", list(style.shape), "FP32")
        s.set_data_from_numpy(style, binary_data=True)
        inputs.append(s)
    out = httpclient.InferRequestedOutput("stylized", binary_data=True)
    return client.infer(model, inputs, outputs=[out], timeout=timeout).as_numpy("stylized")


@pytest.fixture(scope="module")
def multistyle(tmp_path_factory) -> Path:
    """A three-style network whose styles differ (random scales and shifts), saved as nst train saves."""
    import torch

    from nst_deploy.nets import create
    from nst_deploy.nets.io import save_model

    torch.manual_seed(0)
    net = create("multistyle", n_styles=3, width=0.25).eval()
    with torch.no_grad():
        for norm in net.norms():
            norm.gamma.uniform_(0.5, 1.5)
            norm.beta.normal_(0.0, 0.3)
    return save_model(tmp_path_factory.mktemp("multi") / "multi.pt", net, "multistyle")


@pytest.fixture(scope="module")
def server(multistyle):
    with Server(["starry_night", "the_scream", f"multi={multistyle}"], max_batch_size=8, max_queue_delay_ms=2,
                batching=True, max_pixels=MAX_PIXELS, **_ports()) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    client = httpclient.InferenceServerClient(server.urls["http"].split("//", 1)[1])
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server):
    client = grpcclient.InferenceServerClient(server.urls["grpc"])
    yield client
    client.close()


# -- results


def test_http_and_grpc_answer_what_the_stylizer_computes(server, http, grpc):
    st = _stylizer("starry_night")
    x = _image(1, 72, 96)
    want = _reference(st, x)
    got = _http_infer(http, "starry_night", x)
    assert got.shape == (1, 3, 72, 96) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    inp = grpcclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = grpc.infer("starry_night", [inp]).as_numpy("stylized")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(got - x).mean() > 0.05  # stylized, not the photo back


def test_a_batch_of_several_images(http):
    st = _stylizer("the_scream")
    x = _image(4, 64, 80, seed=1)
    got = _http_infer(http, "the_scream", x)
    np.testing.assert_allclose(got, _reference(st, x), atol=1e-5, rtol=0)
    for i in range(4):  # each image as if alone (instance norm is per image)
        np.testing.assert_allclose(got[i:i + 1], _reference(st, x[i:i + 1]), atol=1e-5, rtol=0)


def test_two_models_at_once(server):
    x = _image(1, 64, 64, seed=2)

    def call(model):  # a tritonclient HTTP client belongs to one thread (gevent)
        client = httpclient.InferenceServerClient(server.urls["http"].split("//", 1)[1])
        try:
            return _http_infer(client, model, x)
        finally:
            client.close()

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(call, ["starry_night", "the_scream"])
    np.testing.assert_allclose(a, _reference(_stylizer("starry_night"), x), atol=1e-5, rtol=0)
    np.testing.assert_allclose(b, _reference(_stylizer("the_scream"), x), atol=1e-5, rtol=0)
    assert np.abs(a - b).mean() > 0.02


def test_a_multistyle_model_takes_a_style_vector(http, multistyle):
    st = Stylizer.load(multistyle)
    x = _image(2, 48, 48, seed=3)
    np.testing.assert_allclose(_http_infer(http, "multi", x), _reference(st, x, style=0), atol=1e-5, rtol=0)
    got = _http_infer(http, "multi", x, style=np.array([[0, 1, 0]] * 2, np.float32))
    np.testing.assert_allclose(got, _reference(st, x, style=1), atol=1e-5, rtol=0)
    got = _http_infer(http, "multi", x, style=np.array([[0.5, 0, 0.5], [0, 0, 2]], np.float32))  # one per image
    np.testing.assert_allclose(got[:1], _reference(st, x[:1], style={0: 0.5, 2: 0.5}), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1:], _reference(st, x[1:], style=2), atol=1e-5, rtol=0)
    with pytest.raises(InferenceServerException, match="style"):
        _http_infer(http, "multi", x, style=np.array([[-1, 0, 0]] * 2, np.float32))


def test_health_and_metrics(server, http):
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("starry_night")
    _http_infer(http, "starry_night", _image(1, 32, 32))
    with pytest.raises(InferenceServerException):
        _http_infer(http, "starry_night", _image(1, 4, 4))
    text = urllib.request.urlopen(server.urls["metrics"], timeout=10).read().decode()

    def metric(name, label=""):
        for line in text.splitlines():
            if line.startswith(name + "{") and 'model="starry_night"' in line and label in line:
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} {label} not in the metrics")

    # Triton's counters (a request the model answers with an error counts as a success there) and ours
    assert metric("nv_inference_request_success") >= 2
    assert metric("nv_inference_count") >= 2
    assert metric("nst_requests_refused", 'reason="bad_input"') >= 1
    assert metric("nst_images_stylized") >= 1


# -- bad input: each one clean error, and the server keeps serving


@pytest.mark.parametrize("case", ["dtype", "rank", "one_channel", "nan", "inf", "empty", "tiny", "pixels",
                                  "unknown_model"])
def test_bad_requests_get_one_clear_error(http, grpc, case):
    x = _image(1, 32, 32)
    model, dtype, expect = "starry_night", "FP32", None
    if case == "dtype":
        x, dtype, expect = (x * 255).astype(np.uint8), "UINT8", "data-type|datatype|FP32"
    elif case == "rank":
        x, expect = x[0], "shape|dims"
    elif case == "one_channel":
        x, expect = x[:, :1], "shape|dims"
    elif case == "nan":
        x[0, 1, 5, 5], expect = np.nan, "NaN or Inf"
    elif case == "inf":
        x[0, 0, 0, 0], expect = np.inf, "NaN or Inf"
    elif case == "empty":
        x, expect = np.zeros((1, 3, 0, 0), np.float32), "no pixels"
    elif case == "tiny":
        x, expect = _image(1, 4, 4), "between 8 and"
    elif case == "pixels":
        x, expect = _image(1, 400, 400), f"at most {MAX_PIXELS} pixels"
    elif case == "unknown_model":
        model, expect = "no_such_style", "unknown model|not found"
    with pytest.raises(InferenceServerException, match=expect) as err:
        _http_infer(http, model, x, dtype=dtype)
    assert "\n" not in str(err.value).strip() and "Traceback" not in str(err.value)
    assert str(err.value.status()) in ("400", "404", "StatusCode.INVALID_ARGUMENT")
    inp = grpcclient.InferInput("image", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException):  # the same refusal over gRPC
        grpc.infer(model, [inp])
    assert _http_infer(http, "starry_night", _image(1, 32, 32)).shape == (1, 3, 32, 32)  # still serving


def test_clients_that_disconnect_mid_request(server, http):
    host, port = server.urls["http"].split("//", 1)[1].rsplit(":", 1)
    x = _image(1, 256, 256)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp])
    head = (f"POST /v2/models/starry_night/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream"
            f"\r\nInference-Header-Content-Length: {json_size}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    for cut in (len(body), len(body) // 2, 10):  # whole request then gone; half a body; a few bytes
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head + body[:cut])
        time.sleep(0.05)
    time.sleep(0.5)
    assert server.ready()
    got = _http_infer(http, "starry_night", _image(1, 40, 40))
    np.testing.assert_allclose(got, _reference(_stylizer("starry_night"), _image(1, 40, 40)), atol=1e-5, rtol=0)


# -- load


def test_load_eight_clients_mixed_sizes_no_errors_and_bounded_memory(server):
    sizes = [(64, 64), (96, 128), (128, 96), (160, 120), (64, 64), (128, 128)]
    url = server.urls["http"].split("//", 1)[1]

    def client(k: int, n: int) -> list[float]:
        c = httpclient.InferenceServerClient(url)
        times = []
        try:
            for i in range(n):
                h, w = sizes[(k + i) % len(sizes)]
                x = _image(1 + (i % 2), h, w, seed=k * 1000 + i)
                t = time.perf_counter()
                y = _http_infer(c, "starry_night" if (k + i) % 3 else "the_scream", x)
                times.append(time.perf_counter() - t)
                assert y.shape == x.shape and np.isfinite(y).all()
        finally:
            c.close()
        return times

    with ThreadPoolExecutor(8) as pool:  # warm-up: the arenas reach their working size
        list(pool.map(lambda k: client(k, 3), range(8)))
    before = server.rss_mb()
    with ThreadPoolExecutor(8) as pool:
        times = sorted(t for ts in pool.map(lambda k: client(k, 26), range(8)) for t in ts)
    after = server.rss_mb()
    assert len(times) == 208
    print(f"\nload: 208 requests, 8 clients, p50 {1e3 * times[104]:.0f} ms, p99 {1e3 * times[205]:.0f} ms, "
          f"server memory {before:.0f} -> {after:.0f} MB")
    assert after - before < 150, f"server memory grew from {before:.0f} to {after:.0f} MB"
    assert server.ready()
    text = urllib.request.urlopen(server.urls["metrics"], timeout=10).read().decode()
    counts = {ln.split("{")[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
              if ln.startswith(("nv_inference_request_success{", "nv_inference_exec_count{"))
              and 'model="starry_night"' in ln}
    # fewer model executions than requests: the batcher put requests together
    assert counts["nv_inference_exec_count"] < counts["nv_inference_request_success"], counts


# -- lifecycle: each its own server


def test_the_model_file_deleted_after_start_keeps_serving(tmp_path):
    model = tmp_path / "copy.onnx"
    shutil.copyfile(MODELS_DIR / "johnson__starry_night.int8.onnx", model)
    x = _image(1, 48, 64)
    want = _reference(Stylizer.load(model), x)
    with Server([f"mine={model}"], **_ports()) as srv:
        model.unlink()
        client = httpclient.InferenceServerClient(srv.urls["http"].split("//", 1)[1])
        np.testing.assert_allclose(_http_infer(client, "mine", x), want, atol=1e-5, rtol=0)
        client.close()
    with pytest.raises(NSTError, match="does not exist"):  # and a restart says what is missing
        Server([f"mine={model}"], **_ports())


def _stubs_of(pid: int) -> list[int]:
    """The model-instance processes (Python-backend stubs) started by server ``pid``."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"triton_python_backend_stub" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_then_restart_serves_again():
    ports = _ports()
    srv = Server(["starry_night"], **ports).start()
    stubs = _stubs_of(srv.pid)
    assert stubs
    os.kill(srv.pid, signal.SIGKILL)  # the server alone: its model processes must not outlive it
    assert srv.wait() == -signal.SIGKILL and not srv.ready()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in stubs):
        time.sleep(0.2)
    assert not any(_alive(p) for p in stubs), "model processes outlived the server"
    with Server(["starry_night"], **ports) as again:  # the same ports, free again
        client = httpclient.InferenceServerClient(again.urls["http"].split("//", 1)[1])
        assert _http_infer(client, "starry_night", _image(1, 32, 32)).shape == (1, 3, 32, 32)
        client.close()


def test_request_timeout_refuses_what_waited_too_long_and_instances_share_the_queue():
    with Server(["starry_night"], max_batch_size=1, instances=2, request_timeout_s=0.25, **_ports()) as srv:
        assert len(_stubs_of(srv.pid)) == 2  # two model processes
        url = srv.urls["http"].split("//", 1)[1]
        x = _image(1, 384, 384)

        def send(_):
            c = httpclient.InferenceServerClient(url)
            try:
                return _http_infer(c, "starry_night", x)
            except InferenceServerException as e:
                return e
            finally:
                c.close()

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(send, range(10)))
        done = [r for r in results if isinstance(r, np.ndarray)]
        refused = [r for r in results if not isinstance(r, np.ndarray)]
        assert len(done) >= 2 and refused, results  # the first two run at once; the last waited > 0.25 s
        assert all("timeout" in str(e).lower() for e in refused), refused
        c = httpclient.InferenceServerClient(url)  # and it keeps serving
        assert _http_infer(c, "starry_night", _image(1, 32, 32)).shape == (1, 3, 32, 32)
        c.close()


def _serve_cli(*args: str) -> tuple[subprocess.Popen, list[str]]:
    """``nst serve ARGS`` in a subprocess; its stderr lines collected as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "nst_deploy.cli", "serve", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(ln.rstrip()) for ln in proc.stderr], daemon=True).start()
    return proc, lines


def _wait_for(lines: list[str], text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in ln for ln in lines):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no '{text}' from nst serve: {lines}")


def test_sigterm_under_load_finishes_requests_in_flight_and_exits_0():
    ports = _ports()
    proc, lines = _serve_cli("starry_night", *[f"--{k.replace('_', '-')}={v}" for k, v in ports.items()])
    _wait_for(lines, "ready:", proc)
    assert any(f"http://127.0.0.1:{ports['http_port']}" in ln for ln in lines)  # the startup line names URLs
    url = f"127.0.0.1:{ports['http_port']}"
    x = _image(1, 320, 320)
    results: list = [None] * 6

    def send(i):
        c = httpclient.InferenceServerClient(url, network_timeout=120)
        try:
            results[i] = _http_infer(c, "starry_night", x)
        except Exception as e:  # noqa: BLE001
            results[i] = e
        finally:
            c.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.4)  # all six sent: one running, the others queued
    proc.send_signal(signal.SIGTERM)
    _wait_for(lines, "SIGTERM", proc, timeout=10)
    time.sleep(0.2)
    late = httpclient.InferenceServerClient(url)
    with pytest.raises(Exception):  # noqa: B017 - refused: model unloading (400) or the port closed
        _http_infer(late, "starry_night", _image(1, 32, 32))
    for t in threads:
        t.join(120)
    assert proc.wait(60) == 0, lines
    assert all(isinstance(r, np.ndarray) and r.shape == x.shape for r in results), results
    assert any("stopped (server exit code 0)" in ln for ln in lines)


def test_cli_errors_are_one_line(tmp_path):
    ports = _ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["http_port"]))
        busy.listen()
        proc, lines = _serve_cli("starry_night", *[f"--{k.replace('_', '-')}={v}" for k, v in ports.items()])
        assert proc.wait(60) == 2
    time.sleep(0.1)
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1 and f"port {ports['http_port']} (http) is in use" in errors[0], lines
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    proc, lines = _serve_cli(str(bad), *[f"--{k.replace('_', '-')}={v}" for k, v in _ports().items()])
    assert proc.wait(60) == 2
    time.sleep(0.1)
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1 and "bad.onnx" in errors[0] and "Traceback" not in "\n".join(lines), lines
    proc, lines = _serve_cli("no_such_style", "--http-port=1")
    assert proc.wait(60) == 2


def test_the_nst_export_repository_loads(tmp_path):
    from nst_deploy.export.cli import main as export_main

    repo = tmp_path / "repo"
    out = tmp_path / "out"
    assert export_main([str(MODELS_DIR / "johnson__starry_night.pt"), "-o", str(out), "--format",
                        "onnx,torchscript", "--triton-repo", str(repo), "--triton-python", "--triton-kind", "cpu"]) == 0
    assert (repo / "johnson__starry_night_python" / "1" / "model.py").is_file()
    with pytest.raises(NSTError, match="Python-backend models only"):
        Server(["johnson__starry_night"], repository=repo, **_ports())
    x = _image(2, 64, 48)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    want = np.clip(sess.run(["stylized"], {"image": x})[0], 0, 1)
    with Server(repository=repo, **_ports()) as srv:
        assert list(srv.models) == ["johnson__starry_night_python"]
        client = httpclient.InferenceServerClient(srv.urls["http"].split("//", 1)[1])
        got = _http_infer(client, "johnson__starry_night_python", x)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        with pytest.raises(InferenceServerException, match="NaN or Inf"):
            _http_infer(client, "johnson__starry_night_python", np.full_like(x, np.inf))
        client.close()
    # the same export served by nst serve: the folder (its ONNX model) and its TorchScript file
    with Server([str(out), f"ts={out / 'model.pt'}"], **_ports()) as srv:
        assert list(srv.models) == ["out", "ts"]
        client = httpclient.InferenceServerClient(srv.urls["http"].split("//", 1)[1])
        np.testing.assert_allclose(_http_infer(client, "out", x), want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(_http_infer(client, "ts", x), want, atol=1e-4, rtol=0)
        client.close()


def test_ctrl_c_stops_cleanly():
    ports = _ports()
    proc, lines = _serve_cli("the_scream", *[f"--{k.replace('_', '-')}={v}" for k, v in ports.items()])
    _wait_for(lines, "ready:", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, lines
    time.sleep(0.1)
    assert any("SIGINT" in ln for ln in lines) and any("stopped (server exit code 0)" in ln for ln in lines), lines
    with socket.socket() as s:  # nothing listens there any more (connections closing may linger: REUSEADDR)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports["http_port"]))
