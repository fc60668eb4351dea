"""Every Triton kernel compiles for sm_80 and sm_90, here, without a GPU (tests/triton_compile.py
says how). The interpreter tests check what the kernels compute; this checks that a GPU could run
them at all: a kernel that only works interpreted cannot land."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ARCHES = (80, 90)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def test_every_triton_kernel_compiles_for_sm80_and_sm90(tmp_path):
    # One process per architecture, side by side, each with a cache of its own that starts
    # empty: nothing compiled earlier (or for the other architecture) can stand in.
    runs = {}
    for arch in ARCHES:
        env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / f"cache_sm{arch}")}
        env.pop("TRITON_INTERPRET", None)
        runs[arch] = subprocess.Popen(
            [sys.executable, str(HERE / "triton_compile.py"), str(arch)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    reports = {arch: run.communicate(timeout=1500)[0] for arch, run in runs.items()}
    for arch, run in runs.items():
        assert run.returncode == 0, f"sm_{arch}:\n{reports[arch][-6000:]}"
        assert f"sm_{arch}: " in reports[arch] and " cases compiled" in reports[arch]
