"""Shared benchmark harness: environment capture, timing, result rows and atomic JSON output.

Scripts in ``benchmarks/`` import it as a plain module::

    sys.path.insert(0, os.path.dirname(__file__))
    import harness

Triton is imported lazily (only for CUDA timing and version reporting), so the harness works on
machines without it. All times are in milliseconds.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nst_deploy.fsutil import atomic_write

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_from_arg(s: str) -> str:
    """Resolve a ``--device`` argument: ``"auto"`` becomes ``"cuda"`` if available, else ``"cpu"``."""
    if s == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return s


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: str | None = None) -> str:
    """The CUDA device name, or the CPU model name, for ``device`` (default: ``"auto"``)."""
    device = device_from_arg(device or "auto")
    if device.startswith("cuda"):
        try:
            return torch.cuda.get_device_name(torch.device(device))
        except (AssertionError, RuntimeError):  # no CUDA build or device: name it, don't fail
            return f"{device}-unavailable"
    return _cpu_model()


def environment(device: str | None = None) -> dict[str, Any]:
    """Describe the machine and software versions, with the current UTC time.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None``/``"auto"``.

    Returns:
        A JSON-serializable dict.
    """
    device = device_from_arg(device or "auto")
    env: dict[str, Any] = {"device": device, "device_name": device_name(device)}
    if not device.startswith("cuda"):
        env["cpu_cores"] = os.cpu_count()
        env["torch_threads"] = torch.get_num_threads()
        with contextlib.suppress(OSError):  # other work on the machine skews CPU timings
            env["loadavg_1m"] = os.getloadavg()[0]
    try:
        import triton  # optional: imported lazily

        triton_version: str | None = triton.__version__
    except Exception:  # absent or broken: never fail because of it
        triton_version = None
    try:
        import nst_deploy

        nst_version: str | None = nst_deploy.__version__
    except Exception:
        nst_version = None
    env["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "nst_deploy": nst_version,
    }
    env["utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return env


def bench(fn: Callable[[], Any], *, device: str, min_run_time: float = 2.0, min_runs: int = 3) -> dict[str, Any]:
    """Time a zero-argument callable after one warm-up call.

    On CUDA this uses ``triton.testing.do_bench``; on CPU,
    ``torch.utils.benchmark.Timer.blocked_autorange``, with quantiles over its per-run times.

    Args:
        fn: The callable to time.
        device: ``"cpu"`` or a CUDA device string.
        min_run_time: Minimum total measuring time in seconds (CPU only).
        min_runs: On CPU, stretch ``min_run_time`` to about this many calls of the warm-up's
            duration, so that slow callables still get quantiles over several runs.

    Returns:
        ``{"median_ms", "p20_ms", "p80_ms", "runs"}`` (``runs`` is ``None`` on CUDA, where
        ``do_bench`` picks the count itself).
    """
    start = time.perf_counter()
    fn()  # warm-up
    warm_s = time.perf_counter() - start
    if device_from_arg(device).startswith("cuda"):
        torch.cuda.synchronize()
        import triton.testing  # lazy: CPU machines may lack triton

        median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": float(median), "p20_ms": float(p20), "p80_ms": float(p80), "runs": None}
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())  # default: 1 thread
    m = timer.blocked_autorange(min_run_time=max(min_run_time, min_runs * warm_s))
    times_ms = np.asarray(m.times, dtype=np.float64) * 1e3
    return {
        "median_ms": float(m.median * 1e3),
        "p20_ms": float(np.quantile(times_ms, 0.2)),
        "p80_ms": float(np.quantile(times_ms, 0.8)),
        "runs": int(len(m.times) * m.number_per_run),
    }


def row(
    subject: str,
    provider: str,
    shape: Sequence[int],
    dtype: str,
    precision: str,
    timing: dict[str, Any] | None,
    **derived: Any,
) -> dict[str, Any]:
    """Build one result row.

    Args:
        subject: What is measured, e.g. ``"lossnet_vgg19"``.
        provider: The implementation variant, e.g. ``"eager"``.
        shape: The input shape.
        dtype: The dtype, e.g. ``"float32"``.
        precision: The precision mode, e.g. ``"fp32"`` or ``"tf32"``.
        timing: The dict from :func:`bench`, or ``None`` (e.g. when the run failed).
        **derived: Extra figures (``gflops_per_s``, ``gb_per_s``, ``fraction_of_peak``, ``error``...).

    Returns:
        A JSON-serializable dict; unknown derived figures are ``None``.
    """
    timing = timing or {}
    r: dict[str, Any] = {
        "subject": subject,
        "provider": provider,
        "shape": [int(s) for s in shape],
        "dtype": str(dtype).removeprefix("torch."),
        "precision": precision,
    }
    for key in ("median_ms", "p20_ms", "p80_ms", "runs"):
        r[key] = timing.get(key)
    for key in ("gflops_per_s", "gb_per_s", "fraction_of_peak"):
        r[key] = derived.pop(key, None)
    r.update(derived)
    r["environment"] = environment(derived.get("device"))
    return r


def run_row(cmd: list[str], subject: str, provider: str, shape: Sequence[int], dtype: str, precision: str,
            **fields: Any) -> dict[str, Any]:
    """Run a ``--one`` child process that prints its row as the last stdout line; an error row if it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["failed"])[-1]
        return row(subject, provider, shape, dtype, precision, None, error=err[:200], **fields)
    return json.loads(out.stdout.strip().splitlines()[-1])


def emit(r: dict[str, Any]) -> None:
    """Print one row as a compact JSON line on stdout."""
    print(json.dumps(r, separators=(",", ":"), default=str), flush=True)


def slug(name: str) -> str:
    """Lowercase ``name`` with runs of non-alphanumerics replaced by one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def write_results(subject: str, rows: list[dict[str, Any]], out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``rows`` atomically to ``<out_dir>/<subject>-<device-slug>.json``.

    The device slug comes from the first row's environment (else the current default device).

    Returns:
        The path written.
    """
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = rows[0]["environment"]["device_name"] if rows else device_name()
    path = folder / f"{subject}-{slug(name)}.json"
    with atomic_write(path, "w") as fh:
        json.dump(rows, fh, indent=2, default=str)
        fh.write("\n")
    return path


@contextlib.contextmanager
def keep_partial(subject: str, rows: list[dict[str, Any]], out_dir: str | os.PathLike | None = None):
    """Run a benchmark loop that appends to ``rows``; on an interrupt (Ctrl-C, or the SIGINT that
    ``timeout --signal=INT`` sends) write the rows measured so far with :func:`write_results` and
    exit with status 130, so that a run cut short still leaves its JSON."""
    try:
        yield
    except KeyboardInterrupt:
        if rows:
            path = write_results(subject, rows, out_dir)
            print(f"interrupted: wrote the {len(rows)} rows measured so far to {path}", file=sys.stderr)
        else:
            print("interrupted before any row was measured", file=sys.stderr)
        raise SystemExit(130) from None
