"""Compile every Triton kernel of ``nst_deploy.kernels`` for the H100 (sm_90) without a GPU.

Run as a script in a process where ``TRITON_INTERPRET`` is unset (the kernels are then real
``JITFunction`` objects)::

    python tests/kernels/sm90_compile.py [--arch 90]

It calls the public ops with ``backend="triton"`` on small CPU tensors, with every kernel launch
replaced by a recorder (nothing runs: the outputs are garbage and are ignored), then compiles each
recorded launch, specialized as the JIT specializes it on a GPU (argument types, constexprs, the
``tt.divisibility`` hints of 16-aligned pointers and integers, integers equal to 1 as constants,
launch options), through Triton's own pipeline down to a cubin for ``sm_<arch>`` (Triton ships
``ptxas``), and reads the registers, spills and shared memory of the result. One JSON line per
distinct kernel configuration on stdout; exit status 1 if any fails to compile. This catches what
the interpreter cannot: code the GPU compiler rejects (types, layouts, constexpr use), and it says
how heavy each kernel is.
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

LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


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
    # CPU tensors may take the Triton path: the launches are recorded, never run
    importlib.import_module("nst_deploy.kernels._dispatch").triton_interpreted = lambda: True

    def grad(fn, x):
        x = x.detach().requires_grad_(True)
        out = fn(x)
        (out if out.dim() == 0 else out.float().sum()).backward()

    g = torch.Generator().manual_seed(0)
    # a map whose sizes are multiples of 16 (the JIT then adds divisibility hints, as on the usual
    # 512 x 512 inputs) and an odd one (no hints: the worst case for vectorization and registers)
    for hw in ((16, 16), (11, 9)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(1, 64, *hw, generator=g).to(dtype)
            for precision in ("ieee", "tf32x3", "tf32") if dtype == torch.float32 else (None,):
                grad(lambda v, p=precision: k.gram(v, backend="triton", precision=p), x)
            a = k.gram_ref(x.float())[0]
            grad(lambda v, a=a: k.gram_loss(v, a, backend="triton"), x)
            masks = torch.rand(1, 4, *hw, generator=g)  # a full group of 4
            grad(lambda v, m=masks: k.masked_gram(v, m, backend="triton"), x)
            targets = k.masked_gram_ref(x.float(), masks)[0]
            grad(lambda v, m=masks, a=targets: k.masked_gram_style_loss(v, m, a, backend="triton"), x)
            small = torch.randn(1, 8, hw[0] - 3, hw[1] - 2, generator=g).to(dtype)
            grad(lambda v: k.autocorr(v, method="direct", backend="triton"), small)
            grad(lambda v, s=small: k.autocorr_style_loss(v, k.autocorr_spectrum(s.float()), backend="triton"),
                 small)
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


def specialize(fn, backend, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """Signature, constexprs, attributes and options of one launch, exactly as ``JITFunction.run``
    derives them for a GPU: the same binder (integers equal to 1 become constants, pointers and
    integers divisible by 16 get ``tt.divisibility`` hints) and the same option parsing."""
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options.__dict__


def compile_all(arch: int) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    seen, failed = set(), 0
    for fn, args, kwargs in record_launches():
        signature, constexprs, attrs, options = specialize(fn, backend, args, kwargs)
        names = [p.name for p in fn.params]
        named = {names[path[0]]: v for path, v in constexprs.items() if len(path) == 1}
        explicit = {p.name: named[p.name] for p in fn.params if p.is_constexpr}  # the tl.constexpr parameters
        launch = {o: kwargs[o] for o in LAUNCH_OPTIONS if o in kwargs}
        hints = sorted(names[path[0]] for path, a in attrs.items() if a)
        key = (fn.__name__, repr(sorted(signature.items())), repr(sorted(named.items())), repr(sorted(attrs.items())),
               repr(sorted(launch.items())))
        if key in seen:
            continue
        seen.add(key)
        row = {"kernel": fn.__name__, "arch": f"sm_{arch}", "constexprs": explicit, "options": launch,
               "types": sorted({t for t in signature.values() if t.startswith("*")}),
               "specialized_to_1": sorted(k for k in named if k not in explicit), "divisible_by_16": hints}
        try:
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                      target=target, options=options)
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
