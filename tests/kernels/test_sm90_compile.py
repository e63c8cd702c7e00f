"""Every Triton kernel compiles for the H100 (sm_90) with the launch configuration it gets there.

The interpreter runs the kernels' arithmetic on the CPU but never compiles them; this test records
each launch of the public ops (nothing runs) and compiles it through Triton's GPU pipeline down to
a cubin (``tests/kernels/sm90_compile.py``, specialized as the JIT does on a GPU, divisibility hints
included), then bounds what the compiler reports: no kernel fails, and none spills more than a few
bytes to local memory (the masked Gram's fp32 tiles at 32 pixels on 8 warps spill 968 bytes per
thread; at 16 pixels, what they get, none with hints and 24 bytes without).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sm90_compile.py")
KERNELS = {"_gram_fwd_kernel", "_masked_gram_fwd_kernel", "xcorr2d_kernel", "spectral_loss_fwd_kernel",
           "spectral_loss_bwd_kernel", "_local_dots_kernel", "_local_grad_kernel"}
MAX_STACK_BYTES = 32


def _ptxas_available() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _ptxas_available(), reason="triton with its NVIDIA backend (ptxas) is not installed")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [(r["kernel"], r["constexprs"], r.get("error")) for r in rows if not r["ok"]]
    assert not failed, failed
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["kernel"] for r in rows} == KERNELS
    assert {t for r in rows for t in r["types"]} >= {"*fp32", "*bf16"}
    heavy = [(r["kernel"], r["constexprs"], r["stack_bytes"]) for r in rows if r["stack_bytes"] > MAX_STACK_BYTES]
    assert not heavy, f"kernels spilling to local memory: {heavy}"
    assert all(0 < r["registers"] <= 255 for r in rows)
    # both the hinted (sizes divisible by 16) and the unhinted specializations were compiled
    gram_hints = {"K" in r["divisible_by_16"] for r in rows if r["kernel"] == "_gram_fwd_kernel"}
    assert gram_hints == {True, False}
    assert len({(r["kernel"], tuple(r["divisible_by_16"])) for r in rows}) > len(KERNELS)
