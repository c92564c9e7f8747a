#!/usr/bin/env bash
# Everything that needs a GPU, in one call, on a bare machine that has a GPU,
# torch, nvcc, pytest and ninja but no network (nothing is installed):
#   1. build the extension for the card,  2. the whole test suite (CUDA tests
#   included),  3. compute-sanitizer memcheck on a small run of every kernel,
#   4. the GPU benchmark, with its table printed last.
# Usage: bash benchmarks/gpu_check.sh [OUTDIR]   (logs and results go there)
# Takes about 3 minutes on an H200 (build 1, CUDA tests, sanitizer and
# benchmark 1, CPU suite 1).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$ROOT/gpu_check_out}}"
mkdir -p "$OUTDIR"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

# At most 8 files come back from the device tool: logs are kept to 8.
step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1
# Python's sysconfig there links extensions with /opt/gcc/bin/g++, which put a
# second, mismatched copy of libstdc++'s stream code into the .so (seen on an
# H200 image, 2026-11-27: SIGSEGV in std::ostream::operator<<(long) inside a
# TORCH_CHECK message). Build and link with the system compiler instead.
if [ -x /usr/bin/g++ ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -pthread -shared"
fi

step "build"
CAP="$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
if ! TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$CAP}" MAX_JOBS="${MAX_JOBS:-16}" \
    timeout 300 "$PY" setup.py build_ext --inplace >"$OUTDIR/build.log" 2>&1; then
  tail -40 "$OUTDIR/build.log"; echo "BUILD FAILED"; exit 1
fi
grep -iE "warning|error" "$OUTDIR/build.log" | grep -v "No CUDA runtime\|SetuptoolsWarning\|Deprecat" | head -20
echo "built for sm_${CAP/./}"

step "diagnostics: which fused_linear_relu path and kernels"
timeout 120 "$PY" benchmarks/gpu_diag.py >"$OUTDIR/diag.log" 2>&1 || status=1
cut -c1-400 "$OUTDIR/diag.log"

step "tests (CUDA suite)"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider --tb=short tests/test_cuda.py >"$OUTDIR/tests_cuda.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)" "$OUTDIR/tests_cuda.log" | cut -c1-300 | head -40
tail -1 "$OUTDIR/tests_cuda.log"

step "compute-sanitizer memcheck"
if command -v compute-sanitizer >/dev/null; then
  timeout 240 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
    "$PY" benchmarks/sanitizer_smoke.py >"$OUTDIR/sanitizer.log" 2>&1
  rc=$?
  tail -5 "$OUTDIR/sanitizer.log"
  echo "compute-sanitizer exit code: $rc"; [ $rc = 0 ] || status=1
else
  echo "compute-sanitizer not found"
fi

step "benchmark"
timeout 240 "$PY" benchmarks/gpu_bench.py ${BENCH_ARGS:-} --json "$OUTDIR/gpu_bench.json" --md "$OUTDIR/gpu_bench.md" >>"$OUTDIR/diag.log" 2>&1 || status=1

step "tests (CPU suite, its own process)"
# Last, and without the CMake/LibTorch build (minutes on a fresh machine;
# CI runs it): the CUDA results above come back even if this runs long.
timeout 150 "$PY" -m pytest -q -p no:cacheprovider --tb=short tests --ignore=tests/test_cuda.py \
  --ignore=tests/test_libtorch.py >"$OUTDIR/tests_cpu.log" 2>&1
rc=$?
tail -3 "$OUTDIR/tests_cpu.log"
if [ $rc -ge 128 ] || [ $rc = 134 ] || [ $rc = 139 ]; then
  echo "CPU suite crashed (rc $rc): native backtrace of tests/test_errors.py under cuda-gdb"
  timeout 120 cuda-gdb -batch -ex run -ex bt --args "$PY" -m pytest -q -p no:cacheprovider tests/test_errors.py \
    >>"$OUTDIR/tests_cpu.log" 2>&1
  grep -E "^#|signal|SIG" "$OUTDIR/tests_cpu.log" | cut -c1-300 | head -20
fi
[ $rc = 0 ] || status=1

step "summary"
echo "tests: cpu: $(grep -E "passed|failed" "$OUTDIR/tests_cpu.log" | tail -1) | cuda: $(tail -1 "$OUTDIR/tests_cuda.log")"
cat "$OUTDIR/gpu_bench.md" 2>/dev/null || tail -20 "$OUTDIR/diag.log"
exit $status
