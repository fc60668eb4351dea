#!/usr/bin/env bash
# Everything a GPU session must check, in one call (under 5 minutes on an H100/H200):
# build the extension with its CUDA kernels, run the GPU tests, benchmark the kernels and the
# peak memory, and write the results (with the card's name and versions) to $OUT.
#
#   OUT=bench/results bench/gpu_check.sh        # $OUT defaults to bench/results
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
step() { echo "== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu_machine.txt"

step "build (CPU + CUDA kernels)"
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch setuptools wheel ninja
fi
MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install -q --no-build-isolation -e ".[test]" \
  > "$OUT/gpu_build.log" 2>&1 || { tail -40 "$OUT/gpu_build.log"; exit 1; }
"$PY" -m gradex.info | tee "$OUT/gpu_info.txt"

step "GPU tests (Triton compiled for the card, not interpreted)"
export TRITON_INTERPRET=0 GRADEX_EXPECT_KERNELS="CPU CUDA"
# A failure is recorded and the timings still run: they are then not to be quoted.
timeout 170 "$PY" -m pytest -q -m needs_cuda tests/ tests/test_kernel_registration.py::test_the_build_carries_the_kernels_ci_expects \
  2>&1 | tail -15 | tee "$OUT/gpu_tests.txt" || echo "!! GPU tests FAILED: see $OUT/gpu_tests.txt" | tee -a "$OUT/gpu_tests.txt"

step "kernel benchmark"
timeout 200 "$PY" bench/bench_kernels.py --device cuda --out "$OUT"

step "peak memory"
timeout 60 "$PY" bench/bench_memory.py --device cuda --model resnet50 --batch 64 --out "$OUT"
step "done"
