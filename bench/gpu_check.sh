#!/usr/bin/env bash
# Everything a GPU session must check: build the extension with its CUDA kernels, run every GPU
# test (the fused kernels against the reference on every dtype and layout, CUDA-graph capture,
# launches per explanation counted with the profiler, Triton compiled for the card, not
# interpreted), then the end-to-end benchmark (gradex vs inference vs the peers), the kernel
# benchmark (default and paper chains, per stage and whole, GB/s against the card's roofline,
# kernel launches per GE) and the peak memory, writing results (with the card's name and
# versions) to $OUT.
#
#   bench/fetch_device_wheels.sh                   # here, first: the wheels the device lacks
#   OUT=... bench/gpu_check.sh                     # every step (over 10 minutes: split it)
#   bench/gpu_check.sh build tests kernels         # or in two calls on one warm machine:
#   bench/gpu_check.sh build e2e memory            #   (build is quick when already done)
#
# With the device tool: run(command="bench/gpu_check.sh build tests kernels", carry=[".whl"],
# timeout_s=560). Triton compiles into a fresh cache ($TRITON_CACHE_DIR, a new temporary folder
# unless set), so nothing compiled earlier stands in. $OUT defaults to bench/results. The tool
# returns at most 8 files: one log, e2e (3 files), kernels (2), memory (2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
STEPS=" ${*:-build tests e2e kernels memory} "
mkdir -p "$OUT"
LOG="$OUT/gpu_check_log.txt"
exec > >(tee -a "$LOG") 2>&1
step() { echo "== $* ($(date +%T))"; }
has() { [[ "$STEPS" == *" $1 "* ]]; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if has build; then
  step "build (CPU + CUDA kernels)"
  if [ -d .whl ]; then  # no package index on the device machine: the carried wheels
    "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
    INSTALL=(--no-index --no-deps)
  else
    INSTALL=()
  fi
  if [ -z "${GRADEX_REBUILD:-}" ] && "$PY" -c "import gradex._C" 2>/dev/null; then
    echo "gradex is already built on this machine (a warm one): set GRADEX_REBUILD=1 to rebuild"
  else
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install -q --no-build-isolation "${INSTALL[@]}" \
      -e ".[test]" > /tmp/gpu_build.log 2>&1 || { tail -40 /tmp/gpu_build.log; exit 1; }
  fi
  "$PY" -m gradex.info
fi

export TRITON_INTERPRET=0 GRADEX_EXPECT_KERNELS="CPU CUDA"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$(mktemp -d)}"
echo "TRITON_CACHE_DIR=$TRITON_CACHE_DIR"
if has tests; then
  step "GPU tests (Triton compiled for the card, not interpreted)"
  # A failure is recorded and the timings still run: they are then not to be quoted.
  # pytest-xdist, where installed, spreads the tests (and their Triton compiles) over the cores.
  # -v names every test with its outcome as it finishes, so a run cut off by the time limit
  # still says which failed (one was, on 2026-11-27: six failures, names lost with the summary).
  # The whole log goes to $OUT; the failures and the tail to this log.
  PARALLEL=(); "$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 8)
  timeout "${GPU_TESTS_TIMEOUT_S:-330}" "$PY" -m pytest -v -rfE -p no:cacheprovider \
    "${PARALLEL[@]}" -m needs_cuda tests/ \
    tests/test_kernel_registration.py::test_the_build_carries_the_kernels_ci_expects \
    > "$OUT/gpu_tests_log.txt" 2>&1 || echo "!! GPU tests FAILED (see $OUT/gpu_tests_log.txt)"
  grep -E "(FAILED|ERROR) " "$OUT/gpu_tests_log.txt" | head -60 || true
  tail -20 "$OUT/gpu_tests_log.txt"
fi

if has e2e; then
  step "end-to-end benchmark: inference, gradex, peers"
  timeout "${E2E_TIMEOUT_S:-300}" "$PY" bench/bench_e2e.py --device cuda --reps "${E2E_REPS:-30}" --budget-s 2 --out "$OUT" \
    || echo "!! e2e benchmark failed or a peer disagreed (see above)"
fi

if has kernels; then
  step "kernel benchmark"
  timeout 200 "$PY" bench/bench_kernels.py --device cuda --out "$OUT" \
    || echo "!! kernel benchmark failed (see above)"
fi

if has memory; then
  step "peak memory"
  timeout 60 "$PY" bench/bench_memory.py --device cuda --model resnet50 --batch 64 --out "$OUT" \
    || echo "!! memory benchmark failed (see above)"
fi
step "done"
