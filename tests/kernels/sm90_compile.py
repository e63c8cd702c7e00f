"""Compile every Triton kernel of ``nst_deploy.kernels`` for the H100 (sm_90) without a GPU.

Run as a script in a process where ``TRITON_INTERPRET`` is unset (the kernels are then real
``JITFunction`` objects)::

    python tests/kernels/sm90_compile.py [--arch 90]

It calls the public ops with ``backend="triton"`` on small CPU tensors, with every kernel launch
replaced by a recorder (nothing runs: the outputs are garbage and are ignored), then compiles each
recorded launch, with its argument types, constexprs and launch options, through Triton's own
pipeline down to a cubin for ``sm_<arch>`` (Triton ships ``ptxas``), and reads the registers,
spills and shared memory of the result. One JSON line per distinct kernel configuration on stdout;
exit status 1 if any fails to compile. This catches what the interpreter cannot: code the GPU
compiler rejects (types, layouts, constexpr use), and it says how heavy each kernel is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8", torch.bool: "i1"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def record_launches() -> list[tuple]:
    """Run the ops with every ``JITFunction`` launch recorded instead of run."""
    from triton.runtime.jit import JITFunction

    launches: list[tuple] = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    JITFunction.run = record
    import importlib

    from nst_deploy import kernels as k

    # the tile sizes the GPU gets, not the interpreter's (the module, not the function of that name)
    importlib.import_module("nst_deploy.kernels.masked_gram").GPU_TILES = True

    def grad(fn, x):
        x = x.detach().requires_grad_(True)
        out = fn(x)
        (out if out.dim() == 0 else out.float().sum()).backward()

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, 64, 12, 10, generator=g).to(dtype)
        for precision in ("ieee", "tf32x3", "tf32") if dtype == torch.float32 else (None,):
            grad(lambda v, p=precision: k.gram(v, backend="triton", precision=p), x)
        a = k.gram_ref(x.float())[0]
        grad(lambda v, a=a: k.gram_loss(v, a, backend="triton"), x)
        masks = torch.rand(1, 4, 12, 10, generator=g)  # a full group of 4
        grad(lambda v, m=masks: k.masked_gram(v, m, backend="triton"), x)
        targets = k.masked_gram_ref(x.float(), masks)[0]
        grad(lambda v, m=masks, a=targets: k.masked_gram_style_loss(v, m, a, backend="triton"), x)
        small = torch.randn(1, 8, 9, 7, generator=g).to(dtype)
        grad(lambda v: k.autocorr(v, method="direct", backend="triton"), small)
        grad(lambda v, s=small: k.autocorr_style_loss(v, k.autocorr_spectrum(s.float()), backend="triton"), small)
        for window in (0, 2):
            grad(lambda v, w=window, t=x: k.local_gram_loss(v, t, window=w, backend="triton"), x)
    return launches


def resource_usage(cubin: bytes) -> dict:
    """Registers, spill bytes and static shared memory from ``cuobjdump --dump-resource-usage``."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {"registers": int(fields.get("REG", -1)), "stack_bytes": int(fields.get("STACK", -1)),
            "local_bytes": int(fields.get("LOCAL", -1)), "shared_bytes": int(fields.get("SHARED", -1))}


def compile_all(arch: int) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    seen, failed = set(), 0
    for fn, args, kwargs in record_launches():
        params = fn.params
        values = list(args) + [kwargs[p.name] for p in params[len(args):] if p.name in kwargs]
        signature, constexprs = {}, {}
        for p, v in zip(params, values, strict=False):
            if p.is_constexpr:
                signature[p.name] = "constexpr"
                constexprs[p.name] = v
            else:
                signature[p.name] = _type(v)
        options = {o: kwargs[o] for o in LAUNCH_OPTIONS if o in kwargs}
        key = (fn.__name__, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())),
               tuple(sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        row = {"kernel": fn.__name__, "arch": f"sm_{arch}", "constexprs": constexprs, "options": options,
               "types": sorted({t for t in signature.values() if t.startswith("*")})}
        try:
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                      options=options)
            row.update(ok=True, **resource_usage(compiled.asm["cubin"]))
            row["shared_bytes"] = max(row["shared_bytes"], int(compiled.metadata.shared))  # dynamic too
        except Exception as exc:  # report and go on
            failed += 1
            row.update(ok=False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
        print(json.dumps(row, default=str), flush=True)
    return 1 if failed or not seen else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("sm90_compile: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    return compile_all(args.arch)


if __name__ == "__main__":
    raise SystemExit(main())
