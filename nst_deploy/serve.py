"""Style networks on NVIDIA Triton Inference Server: ``nst serve`` and :class:`Server`.

The server is the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships (the ``serve`` extra),
started as a child process on a model repository written into a work folder: one Python-backend model
per style network (:func:`nst_deploy.export.triton.write_serve_model`), whose ``model.py`` runs the
network through :class:`nst_deploy.Stylizer`. Triton gives the rest: HTTP/REST and gRPC (the KServe v2
protocol), dynamic batching of same-shape requests, queue timeouts, health and readiness endpoints and
Prometheus metrics.

What this module adds around the binary:

- the Python backend's stub is the one built for this interpreter's version, and the interpreter's own
  ``libpython`` comes first on ``LD_LIBRARY_PATH``: the stub links the first ``libpython3.X.so`` it finds,
  and another build of the same version (a system Python beside a venv's) fails model loading with
  ``'_thread.RLock' object has no attribute '_recursion_count'``;
- the stub runs this interpreter's environment (its ``bin`` first on ``PATH``), so the models see the
  same nst-deploy, numpy and onnxruntime as the caller;
- ports and models are checked before the start, and a failed start is one error line (the server's log
  is kept for ``log``);
- the server runs in its own session (Ctrl-C in a terminal reaches only this process, which then asks
  the server to drain), and dies with this process if it is killed (``PR_SET_PDEATHSIG``);
- :meth:`Server.stop` sends SIGTERM: Triton refuses new requests, finishes those in flight (up to
  ``exit_timeout_s``) and exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import NSTError

__all__ = ["DEFAULT_PORTS", "Server", "free_port", "model_names", "repository_models", "server_files"]

SERVE_EXTRA = "nst serve needs the serve extra: pip install 'nst-deploy[serve]'"
#: Triton's own default ports: HTTP, gRPC, metrics.
DEFAULT_PORTS = (8000, 8001, 8002)
_NAME_OK = re.compile(r"[A-Za-z0-9_.-]+")
#: Lines of the server's log that say nothing on a CPU machine (no NVIDIA driver for NVML or DCGM).
#: Triton's own exit wait once the models are unloaded: idle HTTP keep-alive connections hold it this long.
_EXIT_WAIT_S = 2
_QUIET = re.compile(r"NVML|DCGM|nvml|libcuda|CUDA driver|cuda driver|GPU metrics")


@dataclass(frozen=True)
class ServerFiles:
    """Where the server binary, its Python backend and its libraries are."""

    binary: Path
    backend: Path  # the Python backend folder: libtriton_python.so, triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this interpreter's Python version
    libs: Path | None  # the wheel's bundled shared libraries
    caches: Path | None


def server_files() -> ServerFiles:
    """The ``tritonserver`` files of the installed ``nvidia-pytriton`` wheel, for this Python version.

    Raises:
        NSTError: not Linux x86_64, the extra is not installed, or the wheel lacks a file (one line each).
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NSTError(f"nst serve runs the tritonserver binary of nvidia-pytriton, built for Linux x86_64 only "
                       f"(this is {sys.platform} {platform.machine()})")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise NSTError(SERVE_EXTRA)
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = ServerFiles(binary=root / "bin" / "tritonserver", backend=root / "backends" / "python",
                        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
                        libs=next((p for p in (root.parent.parent / "nvidia_pytriton.libs",) if p.is_dir()), None),
                        caches=root / "caches" if (root / "caches").is_dir() else None)
    for path, what in ((files.binary, "the tritonserver binary"),
                       (files.backend / "libtriton_python.so", "the Python backend"),
                       (files.stub, f"the Python backend stub for Python {version}")):
        if not path.is_file():
            raise NSTError(f"the nvidia-pytriton install has no {what} ({path}): reinstall the serve extra")
    return files


def _libpython_dir() -> str | None:
    """The folder of this interpreter's ``libpython3.X.so``, where it has one."""
    for var in ("LIBDIR", "LIBPL"):
        d = sysconfig.get_config_var(var)
        if d and any(Path(d).glob(f"libpython{sys.version_info.major}.{sys.version_info.minor}*.so*")):
            return d
    return None


def server_environment(files: ServerFiles, base: dict | None = None) -> dict[str, str]:
    """The server's environment: this interpreter's ``libpython`` and ``bin`` first (see the module doc)."""
    env = dict(os.environ if base is None else base)
    libs = [d for d in (_libpython_dir(), files.libs and str(files.libs)) if d]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _backends_dir(work: Path, files: ServerFiles) -> Path:
    """``work/backends/python/`` with the backend and the stub of this Python version (Triton looks for the
    stub beside ``libtriton_python.so``; the wheel keeps one per Python version elsewhere)."""
    d = work / "backends" / "python"
    d.mkdir(parents=True)
    for src in (files.backend / "libtriton_python.so", files.backend / "triton_python_backend_utils.py", files.stub):
        (d / src.name).symlink_to(src)
    return work / "backends"


# -- models
def model_names(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (a bundled name, an ``nst train`` file, an ``nst-export`` folder or file) to
    served name and model file. Without ``NAME=`` the name is the bundled style's name, the export folder's
    name or the file's stem.

    Raises:
        NSTError: a missing model, a name Triton cannot serve, or two models under one name.
    """
    from .models import model_path

    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, given = spec.partition("=")
        if not sep:
            name, given = "", spec
        path = model_path(given)
        if not name:
            p = Path(given)
            if p.is_dir():
                name = p.resolve().name
            elif p.exists():
                name = p.parent.resolve().name if p.name in ("model.onnx", "model.pt") and (
                    p.parent / "manifest.json").is_file() else p.stem
            else:  # a bundled name: the style's name (johnson__starry_night -> starry_night)
                name = path.stem.split("__", 1)[-1]
        if not _NAME_OK.fullmatch(name) or name.startswith("."):
            raise NSTError(f"model name {name!r} is not allowed: use letters, digits, '_', '.', '-' (NAME=PATH)")
        if name in out:
            raise NSTError(f"two models named '{name}': give one another name with NAME=PATH")
        out[name] = path
    if not out:
        raise NSTError("no model to serve")
    return out


def repository_models(repo: Path, names: list[str]) -> dict[str, Path]:
    """The models of a repository this server can load (``backend: "python"``), by name: ``names`` (each
    checked), or all of them.

    Raises:
        NSTError: no such folder, a named model missing or not a Python-backend model, or none to load.
    """
    if not repo.is_dir():
        raise NSTError(f"model repository '{repo}' is not a folder")
    found: dict[str, str] = {}
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        m = re.search(r'^\s*(backend|platform)\s*:\s*"([^"]*)"', text, re.M)
        found[config.parent.name] = f"{m.group(1)} {m.group(2)}" if m else "no backend"
    for name in names:
        if name not in found:
            raise NSTError(f"model repository '{repo}' has no model '{name}' (it has: {', '.join(found) or 'none'})")
    chosen = names or [n for n, kind in found.items() if kind == "backend python"]
    for name in chosen:
        if found[name] != "backend python":
            raise NSTError(f"model '{name}' in '{repo}' is for {found[name]}: this server build runs Python-backend "
                           f"models only (nst-export --triton-python writes '<name>_python')")
    if not chosen:
        raise NSTError(f"model repository '{repo}' has no Python-backend model to serve (nst-export --triton-python "
                       f"writes one)")
    return {name: repo / name for name in chosen}


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on ``host`` (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
                children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, StopIteration):
            total += next(int(ln.split()[1]) for ln in Path(f"/proc/{p}/status").read_text().splitlines()
                          if ln.startswith("VmRSS:")) / 1024
        todo += children.get(p, [])
    return total


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGTERM when this process dies, however it dies (Linux prctl)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """A Triton Inference Server serving style networks; see the module docstring.

    ``Server(["starry_night"]).start()`` returns once every model is ready; :attr:`urls` says where; use it
    as a context manager to stop it on the way out. One request is ``image``: float32 ``[N, 3, H, W]`` RGB
    in [0, 1] (``N <= max_batch_size``); the response ``stylized`` has the same layout (``H*s x W*s`` for a
    model of output scale ``s``). A multistyle model also takes an optional ``style`` vector.

    Args:
        models: ``NAME=PATH`` or ``PATH`` strings (see :func:`model_names`), or a ``{name: path}`` dict; with
            ``repository``, the names of its models to load (default: every Python-backend model in it).
        repository: an existing model repository to serve as it is, e.g. one written by
            ``nst-export --triton-repo DIR --triton-python`` (its ``*_python`` models: this server build has
            only the Python backend); the batching and limit arguments then come from its configs.
        host: the address the three endpoints listen on (``0.0.0.0`` for every interface).
        http_port, grpc_port, metrics_port: the ports (Triton's defaults 8000, 8001, 8002).
        max_batch_size: the most images a batch holds (a request's and the batcher's).
        max_queue_delay_ms: how long the dynamic batcher waits for more same-shape requests (0: never waits).
        batching: whether queued requests of one size run together (a request's own batch always does);
            default: on a GPU yes, on the CPU no (measured on the CPU: no faster, and several times the
            memory; ``benchmarks/bench_serve.py``).
        instances: model instances (processes) per model, each running one batch at a time.
        max_pixels: the most pixels (images x height x width) one request may carry.
        request_timeout_s: a request still queued after this long is refused (0: no limit).
        device: ``cpu`` or ``gpu`` (instances on the GPUs, ``cuda:<id>`` each).
        threads: CPU threads per instance (default: the cores shared among the instances).
        memory_mb: working-memory budget of one instance's call; larger images run in tiles (default: half
            the memory available, shared among the instances).
        log: a file that receives the server's log; ``verbose`` also copies it to stderr.
        exit_timeout_s: how long a stop waits for requests in flight.
    """

    def __init__(self, models=(), *, repository: str | os.PathLike | None = None, host: str = "127.0.0.1",
                 http_port: int = DEFAULT_PORTS[0], grpc_port: int = DEFAULT_PORTS[1],
                 metrics_port: int = DEFAULT_PORTS[2], max_batch_size: int = 8,
                 max_queue_delay_ms: float = 0.0, batching: bool | None = None, instances: int = 1,
                 max_pixels: int | None = None, request_timeout_s: float = 0.0, device: str = "cpu",
                 threads: int | None = None, memory_mb: float | None = None, log: str | os.PathLike | None = None,
                 verbose: bool = False, exit_timeout_s: int = 30):
        from .export.triton import MAX_PIXELS

        self.repository = Path(repository) if repository is not None else None
        if self.repository is not None:
            self.models = repository_models(self.repository, list(models))
        else:
            self.models = dict(models) if isinstance(models, dict) else model_names(list(models))
        self.host = host
        self.ports = {"http": int(http_port), "grpc": int(grpc_port), "metrics": int(metrics_port)}
        self.max_batch_size = int(max_batch_size)
        self.max_queue_delay_ms = float(max_queue_delay_ms)
        self.batching = (device == "gpu") if batching is None else bool(batching)
        self.instances = int(instances)
        self.max_pixels = int(max_pixels if max_pixels is not None else MAX_PIXELS)
        self.request_timeout_s = float(request_timeout_s)
        self.device = device
        self.threads = threads
        self.memory_mb = memory_mb
        self.log_path = Path(log) if log else None
        self.verbose = verbose
        self.exit_timeout_s = int(exit_timeout_s)
        self.process: subprocess.Popen | None = None
        self.work: Path | None = None
        self.returncode: int | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._reader: threading.Thread | None = None
        self._check()

    def _check(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise NSTError(f"device must be cpu or gpu, not {self.device!r}")
        for what, low, value in (("max_batch_size", 1, self.max_batch_size), ("instances", 1, self.instances),
                                 ("max_pixels", 64, self.max_pixels), ("exit_timeout_s", 0, self.exit_timeout_s)):
            if value < low:
                raise NSTError(f"{what} must be at least {low}, got {value}")
        if not 0 <= self.max_queue_delay_ms <= 60_000:
            raise NSTError(f"max_queue_delay_ms must be between 0 and 60000, got {self.max_queue_delay_ms:g}")
        if not 0 <= self.request_timeout_s <= 86_400:
            raise NSTError(f"request_timeout_s must be between 0 and 86400, got {self.request_timeout_s:g}")
        if self.threads is not None and self.threads < 1:
            raise NSTError(f"threads must be at least 1, got {self.threads}")
        if self.memory_mb is not None and not self.memory_mb > 0:
            raise NSTError(f"memory_mb must be positive, got {self.memory_mb:g}")
        ports = list(self.ports.values())
        for what, port in self.ports.items():
            if not 1 <= port <= 65535:
                raise NSTError(f"the {what} port must be between 1 and 65535, got {port}")
        if len(set(ports)) != len(ports):
            raise NSTError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")

    # -- where
    @property
    def urls(self) -> dict[str, str]:
        """``http``, ``grpc`` (host:port, as gRPC clients take it) and ``metrics`` addresses."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        host = f"[{host}]" if ":" in host else host
        return {"http": f"http://{host}:{self.ports['http']}", "grpc": f"{host}:{self.ports['grpc']}",
                "metrics": f"http://{host}:{self.ports['metrics']}/metrics"}

    # -- starting
    def _write_repository(self, repo: Path) -> None:
        from .devices import available_memory
        from .export.triton import write_serve_model
        from .models import load_paths
        from .runtime import Stylizer

        cores = os.cpu_count() or 1
        instances_total = self.instances * len(self.models)
        threads = self.threads or max(1, cores // instances_total)
        memory = self.memory_mb
        if memory is None:
            have = available_memory("cpu")
            memory = 0.5 * have / 2**20 / instances_total if have else None
        for name, path in self.models.items():
            load, fallback = load_paths(path, on_cpu=self.device == "cpu")
            # loaded here first: a bad model is one error line before any server starts, and its metadata
            # (styles, output scale, static size) shapes the model's configuration
            st = Stylizer.load(load, device="cpu" if self.device == "cpu" else "cuda", warmup=False)
            write_serve_model(repo, name, load, fallback=fallback, n_styles=st.n_styles, output_scale=st.scale,
                              static_hw=st.static, max_batch_size=self.max_batch_size, dynamic_batching=self.batching,
                              max_queue_delay_us=int(self.max_queue_delay_ms * 1000),
                              timeout_us=int(self.request_timeout_s * 1e6), instances=self.instances,
                              kind=self.device, max_pixels=self.max_pixels, memory_mb=memory, threads=threads,
                              meta=st.meta)

    def _command(self, files: ServerFiles, repo: Path, backends: Path) -> list[str]:
        cmd = [str(files.binary), "--model-repository", str(repo), "--backend-directory", str(backends),
               "--http-address", self.host, "--http-port", str(self.ports["http"]),
               "--grpc-address", self.host, "--grpc-port", str(self.ports["grpc"]),
               "--metrics-address", self.host, "--metrics-port", str(self.ports["metrics"]),
               "--allow-metrics", "true", "--allow-gpu-metrics", "false", "--allow-cpu-metrics", "true",
               # explicit control: stop() unloads the models first (see there), so Triton's own exit wait,
               # which is spent on idle keep-alive connections first, can stay short
               "--model-control-mode", "explicit", *[a for name in self.models for a in ("--load-model", name)],
               "--exit-timeout-secs", str(_EXIT_WAIT_S), "--strict-readiness", "true",
               "--exit-on-error", "true", "--log-verbose", "0"]
        if files.caches is not None:
            cmd += ["--cache-directory", str(files.caches)]
        return cmd

    def start(self, timeout: float = 180.0) -> Server:
        """Write the repository, start the server and wait until every model is ready.

        Raises:
            NSTError: a port in use, a bad model, no serve extra, or a server that failed to start or did
                not become ready within ``timeout`` seconds (its most telling log line in the message).
        """
        if self.process is not None:
            raise NSTError("this server is already started")
        files = server_files()
        for what, port in self.ports.items():
            if not _port_free(self.host, port):
                raise NSTError(f"port {port} ({what}) is in use on {self.host}: choose another with "
                               f"--{what}-port")
        self.work = Path(tempfile.mkdtemp(prefix="nst-serve-"))
        try:
            repo = self.repository.resolve() if self.repository is not None else self.work / "models"
            if self.repository is None:
                self._write_repository(repo)
            backends = _backends_dir(self.work, files)
            self.process = subprocess.Popen(
                self._command(files, repo, backends), env=server_environment(files), cwd=self.work,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_set_pdeathsig)
        except BaseException:
            self._cleanup()
            raise
        self._reader = threading.Thread(target=self._read_log, name="tritonserver-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _read_log(self) -> None:
        sink = open(self.log_path, "a", buffering=1) if self.log_path else None  # noqa: SIM115 - thread-long
        try:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self._tail.append(line)
                if sink is not None:
                    sink.write(line + "\n")
                if self.verbose and not _QUIET.search(line):
                    print(line, file=sys.stderr)
        finally:
            if sink is not None:
                sink.close()

    def _failure(self) -> str:
        """The most telling line of the server's log."""
        lines = [ln for ln in self._tail if not _QUIET.search(ln)]
        for pattern in (r"failed to load '([^']+)'.*?: (.*)", r"(failed to start [^:]*): (.*)",
                        r"Error: (.*)", r"error: (.*)", r"^E\d+ [\d:.]+ \d+ \S+\] (.*)"):
            for ln in reversed(lines):
                m = re.search(pattern, ln)
                if m:
                    return " ".join(m.groups())[:400]
        return (lines[-1] if lines else "no output")[:400]

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(self.urls["http"] + path, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(5)
                raise NSTError(f"the server stopped at start (exit code {self.process.returncode}): {self._failure()}")
            if self._get("/v2/health/ready") == 200 and all(
                    self._get(f"/v2/models/{name}/ready") == 200 for name in self.models):
                return
            time.sleep(0.2)
        raise NSTError(f"the server was not ready after {timeout:g} s: {self._failure()}")

    # -- state
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def ready(self) -> bool:
        """Whether the server answers and every model is ready."""
        return self.process is not None and self.process.poll() is None and self._get("/v2/health/ready") == 200

    def rss_mb(self) -> float:
        """Resident memory of the server and its model processes (Linux ``/proc``), in MB; 0 when stopped."""
        return _tree_rss_mb(self.pid) if self.pid is not None else 0.0

    def log_tail(self, n: int = 50) -> list[str]:
        """The last ``n`` lines of the server's log."""
        return list(self._tail)[-n:]

    # -- stopping
    def stop(self, timeout: float | None = None) -> int:
        """Drain, then stop: returns the exit code (0 for a clean stop).

        The models are unloaded through Triton's repository API: Triton refuses new requests for them
        ("not ready") and unloads each once its requests in flight have finished (at most ``timeout``
        seconds, default ``exit_timeout_s``); then SIGTERM. Triton's own SIGTERM drain waits for every HTTP
        connection to close before it unloads anything, so clients holding idle keep-alive connections
        would use up its timeout and make it exit 1 with the models still loaded. A server that does not
        exit is killed.
        """
        if self.process is None:
            return self.returncode if self.returncode is not None else 0
        wait = self.exit_timeout_s if timeout is None else timeout
        if self.process.poll() is None:
            self._unload_all(wait)
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_EXIT_WAIT_S + 30)
        except subprocess.TimeoutExpired:
            self.kill()
        return self._finish()

    def _unload_all(self, wait: float) -> None:
        """Ask Triton to unload every model and wait (at most ``wait`` s) until none is loaded."""
        for name in self.models:
            self._post(f"/v2/repository/models/{name}/unload")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.process.poll() is None:
            index = self._post("/v2/repository/index", want_json=True)
            if index is None or not any(m.get("state") in ("READY", "LOADING", "UNLOADING") for m in index):
                return
            time.sleep(0.1)

    def _post(self, path: str, want_json: bool = False, timeout: float = 5.0):
        req = urllib.request.Request(self.urls["http"] + path, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except (urllib.error.URLError, OSError):
            return None
        if not want_json:
            return body
        import json

        try:
            return json.loads(body or b"[]")
        except ValueError:
            return None

    def kill(self) -> int:
        """SIGKILL the server and its model processes at once."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return self._finish()

    def wait(self) -> int:
        """Wait until the server exits; its exit code."""
        if self.process is not None:
            self.process.wait()
        return self._finish()

    def _finish(self) -> int:
        if self.process is not None:
            self.returncode = self.process.returncode
            if self._reader is not None:
                self._reader.join(5)
            self.process = None
        self._cleanup()
        return self.returncode if self.returncode is not None else 0

    def _cleanup(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def __enter__(self) -> Server:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
