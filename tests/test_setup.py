"""setup.py's choice of kernels, without building: what it hands to setuptools."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# Runs setup.py with setuptools.setup replaced, printing the extension sources it would build.
PROBE = """
import json, runpy, sys, setuptools
seen = {}
setuptools.setup = lambda **kw: seen.update(kw)
sys.argv = ["setup.py"]
runpy.run_path("setup.py", run_name="__main__")
print(json.dumps([s for e in seen.get("ext_modules") or [] for s in e.sources]))
"""


def planned_sources(env):
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def fake_toolkit(root: Path, release: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.0"\n')
    nvcc.chmod(0o755)
    return root


needs_cuda_torch = pytest.mark.skipif(
    torch.version.cuda is None, reason="a CPU-only torch builds no CUDA kernels anyway"
)


@needs_cuda_torch
def test_a_toolkit_of_another_major_version_builds_the_cpu_kernels_with_a_warning(tmp_path):
    major = int(torch.version.cuda.split(".")[0])
    toolkit = fake_toolkit(tmp_path / "cuda", f"{major + 1}.0")
    sources, stderr = planned_sources({"CUDA_HOME": str(toolkit)})
    assert "csrc/gradex.cpp" in sources and any(s.startswith("csrc/cpu/") for s in sources)
    assert not any(s.endswith(".cu") for s in sources)
    assert f"torch was built with CUDA {torch.version.cuda}" in stderr
    assert "building the CPU kernels only" in stderr


@needs_cuda_torch
def test_a_toolkit_of_torchs_major_version_builds_the_cuda_kernels(tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda", torch.version.cuda)
    sources, _ = planned_sources({"CUDA_HOME": str(toolkit), "GRADEX_BUILD_CUDA": "1"})
    assert any(s.endswith(".cu") for s in sources)


def test_gradex_build_cuda_0_builds_the_cpu_kernels_only():
    sources, _ = planned_sources({"GRADEX_BUILD_CUDA": "0"})
    assert "csrc/gradex.cpp" in sources and not any(s.endswith(".cu") for s in sources)
