"""The CPU kernels' instruction sets side by side: one stage's reduction, timed in cache on one
thread with the kernels this CPU gets by default (AVX2 where it has it) and with the baseline ones
(GRADEX_CPU_ISA=baseline, read once per process, hence one process each).

    python bench/cpu_isa_check.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

# (name, dtype, channels_last): a 1×96×56×56 stage (1.2 MB in fp32: in cache).
CASES = [
    ("fp32 nchw", torch.float32, False),
    ("fp32 channels_last", torch.float32, True),
    ("bf16 nchw", torch.bfloat16, False),
    ("bf16 channels_last", torch.bfloat16, True),
]


def measure() -> None:
    import time

    from gradex import _ext, ops

    torch.manual_seed(0)
    torch.set_num_threads(1)
    backend = ops.resolve_backend("cpu", torch.device("cpu"))
    stage = torch.rand(1, 96, 56, 56)
    cells = []
    for name, dtype, channels_last in CASES:
        a = stage.to(dtype)
        if channels_last:
            a = a.contiguous(memory_format=torch.channels_last)
        best = float("inf")
        for _ in range(300):
            start = time.perf_counter()
            backend.reduce_stage(a, None)
            best = min(best, time.perf_counter() - start)
        cells.append(f"{name} {a.numel() / best / 1e9:.1f}")
    print(f"{_ext.cpu_isa():<9} reduction, G elements/s (min of 300): " + " | ".join(cells))


def main() -> None:
    if "--measure" in sys.argv:
        measure()
        return
    for forced in ({}, {"GRADEX_CPU_ISA": "baseline"}):
        env = {**os.environ, **forced}
        subprocess.run([sys.executable, __file__, "--measure"], env=env, check=True)


if __name__ == "__main__":
    main()
