"""Compile every Triton kernel of gradex for a GPU architecture, with no GPU.

    TRITON_CACHE_DIR=$(mktemp -d) python tests/triton_compile.py 90     # sm_90; 80 for sm_80

The interpreter (TRITON_INTERPRET=1, what the CPU tests run) executes kernels as Python and
checks none of what the compiler checks: a module global read in a kernel that is not a
constexpr, a method called on an int argument that Triton specialised into a constant (ints
equal to 1 are), a type that differs between the branches of an if. This script goes the JIT's
own way instead: a stand-in driver answers ``get_current_target()`` with the architecture, and
every launch becomes ``run(..., warmup=True)`` (compile, do not launch). It calls the kernels
through the same wrappers users reach, on CPU tensors of every dtype, layout and shape class
the wrappers can choose (sides, channels and batches of 1 included), so every specialisation
the JIT would compile on a GPU is compiled here: Triton's front end, its optimiser and ptxas.

Prints one line per failure and a summary; exits 1 if anything failed to compile.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

os.environ["TRITON_INTERPRET"] = "0"  # read when the kernels are defined: before gradex imports

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

# Streaming multiprocessors of the card each architecture is checked for (A100, H100), so the
# reductions are split as they would be there.
MULTIPROCESSORS = {80: 108, 90: 132}


class StandInDriver:
    """What the JIT asks a driver while compiling; nothing here touches a GPU."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def compile_only() -> None:
    """Every ``kernel[grid](...)`` compiles (through the JIT's cache) and launches nothing."""
    run = JITFunction.run

    def warmup_run(self, *args, grid, warmup, **kwargs):
        return run(self, *args, grid=grid, warmup=True, **kwargs)

    JITFunction.run = warmup_run


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (B, C, H, W): sides of 1, odd sizes, sizes divisible by 16 (specialised differently), a deep
# stage the reduction splits over channels, a wide plane it splits into chunks, batch 64.
SHAPES = [
    (1, 1, 1, 1),
    (2, 3, 7, 9),
    (1, 2048, 7, 7),
    (4, 513, 14, 14),
    (3, 5, 113, 97),
    (2, 7, 33, 1),
    (1, 16, 1, 48),
    (2, 64, 112, 112),
    (64, 24, 16, 16),
]


def layouts(shape, dtype):
    b, c, h, w = shape
    a = torch.rand(shape, dtype=torch.float32).to(dtype)
    yield "nchw", a
    yield "channels_last", a.contiguous(memory_format=torch.channels_last)
    yield "sliced", torch.rand(b, 2 * c, h + 1, w, dtype=torch.float32).to(dtype)[:, ::2, 1:]


def reduction_cases(ops):
    for shape in SHAPES:
        for dtype in DTYPES:
            for layout, a in layouts(shape, dtype):
                transforms = (None, "relu", "abs") if dtype == torch.float32 else (None,)
                for transform in transforms:
                    yield (
                        f"reduce_stage {shape} {dtype} {layout} {transform}",
                        (lambda a=a, t=transform: ops._TRITON.reduce_stage(a, t)),
                    )


# (heatmap size, stage sizes shallow to deep, output size): no stage (the plain CAM), one, four,
# 1×1 maps, a stage as large as the output (the chain writes the output directly), a resize.
CHAINS = [
    ((7, 7), [], (7, 7)),
    ((7, 7), [], (224, 224)),
    ((1, 1), [(1, 1)], (1, 1)),
    ((1, 1), [(5, 1)], (9, 1)),
    ((7, 9), [(113, 97), (28, 28), (14, 14), (7, 9)], (113, 97)),
    ((7, 7), [(112, 112), (56, 56), (28, 28), (14, 14)], (224, 224)),
    ((14, 14), [(56, 56)], (56, 56)),
]


def chain_cases(ops):
    for heat, sizes, output in CHAINS:
        for batch in (1, 3):
            heatmap = torch.rand(batch, 1, *heat)
            stages = [ops._TRITON.reduce_stage(torch.rand(batch, 4, h, w), None) for h, w in sizes]
            for weighting in ("local", "global"):
                for normalize in ("minmax", "standardize", None):
                    name = f"{heat} {sizes} {output} b{batch} {weighting} {normalize}"
                    yield (
                        f"extrapolate_chain {name}",
                        (
                            lambda h=heatmap, s=stages, o=output, w=weighting, n=normalize: (
                                ops._TRITON.chain(h, s, o, w, n)
                            )
                        ),
                    )


def main(arch: int) -> int:
    driver.set_active(StandInDriver(arch))
    compile_only()
    from gradex import ops

    ops.INTERPRETER_MULTIPROCESSORS = MULTIPROCESSORS[arch]  # CPU tensors split as on the card
    failures, cases = [], 0
    start = time.perf_counter()
    for name, call in [*reduction_cases(ops), *chain_cases(ops)]:
        cases += 1
        try:
            call()
        except Exception as error:  # every failure is reported, then the next case runs
            first = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            failures.append(f"sm_{arch} {name}: {first}")
            if os.environ.get("GRADEX_COMPILE_TRACEBACK"):
                traceback.print_exc()
    for line in failures:
        print("FAILED", line)
    seconds = time.perf_counter() - start
    print(f"sm_{arch}: {cases - len(failures)} of {cases} cases compiled in {seconds:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
