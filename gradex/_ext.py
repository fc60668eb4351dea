"""Loads gradex's compiled kernels (``gradex._C``) on first use and says why when it cannot.

The extension registers ``torch.ops.gradex.{reduce_stage, extrapolate_chain}`` (schemas in
csrc/gradex.cpp) with CPU kernels and, when built with the CUDA toolkit, CUDA kernels. Their
fake (meta) implementations live here, so the ops trace under torch.compile; the Triton ops
(gradex/triton_kernels.py) share schemas and fakes. Nothing is loaded at ``import gradex``.
"""

from __future__ import annotations

import functools

import torch

BUILD_COMMAND = (
    'pip install --no-build-isolation -e ".[test]" from a clone, with a C++ compiler '
    "(and the CUDA toolkit, or CUDA_HOME, for the CUDA kernels); see README.md"
)

# The `transform` argument of reduce_stage and the `normalize` argument of extrapolate_chain
# (csrc/stage_ops.h).
TRANSFORM_CODES = {None: 0, "relu": 1, "abs": 2}
NORMALIZE_CODES = {None: 0, "minmax": 1, "standardize": 2}


@functools.cache
def load() -> tuple[bool, str]:
    """(loaded, reason). Loads the extension once and registers the fake implementations."""
    try:
        from . import _C  # noqa: F401  (loading the library registers the ops)
    except ImportError as error:
        # pip compiles the kernels only when torch can be imported while it builds: a plain
        # `pip install` builds in an isolated environment without torch, and installs gradex
        # without them (the build's warning is hidden unless pip runs with -v).
        return False, (
            f"gradex._C is not built ({error}): this gradex was installed without its compiled "
            "kernels, as pip does without --no-build-isolation (torch must be importable while "
            f"building) or without a C++ compiler; build them with: {BUILD_COMMAND}"
        )
    _register_fakes()
    return True, "gradex._C loaded"


@functools.cache
def has_kernel(device_type: str) -> bool:
    """Whether the loaded extension carries kernels for ``device_type`` ('CPU' or 'CUDA'); asked
    on every dispatch, and a fixed fact once the library is loaded, hence cached."""
    return load()[0] and torch._C._dispatch_has_kernel_for_dispatch_key(
        "gradex::reduce_stage", device_type
    )


def cpu_availability(device: torch.device | None = None) -> tuple[bool, str]:
    loaded, reason = load()
    if not loaded:
        return False, reason
    if not has_kernel("CPU"):
        return False, f"gradex._C has no CPU kernels; rebuild with: {BUILD_COMMAND}"
    return True, f"C++ kernels in gradex._C ({cpu_isa()}), {torch.get_num_threads()} threads"


@functools.cache
def cpu_isa() -> str:
    """The instruction set the CPU kernels were chosen for, once per process: 'avx2' or
    'baseline' (GRADEX_CPU_ISA=baseline forces the latter)."""
    return torch.ops.gradex.cpu_isa()


def cuda_index(device: torch.device) -> int:
    """The GPU a CUDA device means: its index, or the current one for a bare 'cuda'."""
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _device_supported(index: int) -> bool:
    return bool(torch.ops.gradex.cuda_device_supported(index))


def cuda_availability(device: torch.device | None = None) -> tuple[bool, str]:
    """Whether the CUDA kernels can run (on ``device``, when given: the build must carry a kernel
    image or PTX for its architecture, or 'auto' would pick kernels that fail at launch)."""
    loaded, reason = load()
    if not loaded:
        return False, reason
    if not has_kernel("CUDA"):
        return False, (
            "gradex._C was built without CUDA kernels (no CUDA toolkit or a CPU-only torch at "
            f"build time); rebuild with: {BUILD_COMMAND}"
        )
    if not torch.cuda.is_available():  # asks the driver; creates no CUDA context
        return False, "CUDA kernels are built, but no CUDA device is visible"
    if device is not None and device.type == "cuda":
        index = cuda_index(device)
        if not _device_supported(index):
            major, minor = torch.cuda.get_device_capability(index)
            return False, (
                f"gradex._C has no kernel image for {torch.cuda.get_device_name(index)} "
                f"(compute capability {major}.{minor}); rebuild with "
                f'TORCH_CUDA_ARCH_LIST="{major}.{minor}" and: {BUILD_COMMAND}'
            )
    return True, "CUDA kernels in gradex._C"


# The ops' argument checks for the Triton ops (the compiled ones run csrc/gradex.cpp's), with the
# same messages; the fakes run them too.
REDUCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_reduce_stage_args(activation, transform, splits, chunks, op="reduce_stage") -> None:
    torch._check(
        activation.dim() == 4,
        lambda: f"{op}: activation must be (B,C,H,W), got {activation.dim()} dims",
    )
    torch._check(
        activation.dtype in REDUCE_DTYPES,
        lambda: (
            f"{op}: activation must be float32, float16, bfloat16 or float64, got "
            f"{activation.dtype}"
        ),
    )
    torch._check(
        0 <= transform <= 2,
        lambda: f"{op}: transform must be 0 (none), 1 (relu) or 2 (abs), got {transform}",
    )
    torch._check(
        splits >= 1 and chunks >= 1,
        lambda: f"{op}: splits and chunks must be >= 1, got {splits} and {chunks}",
    )


def check_chain_args(
    heatmap, sums, maxima, windows, output_size, normalize, op="extrapolate_chain"
):
    torch._check(
        heatmap.dim() == 4 and heatmap.shape[1] == 1 and heatmap.dtype == torch.float32,
        lambda: (
            f"{op}: heatmap must be a (B,1,h,w) float32 map, got {heatmap.dtype} "
            f"{tuple(heatmap.shape)}"
        ),
    )
    batch = heatmap.shape[0]
    torch._check(
        len(sums) == len(maxima),
        lambda: (
            f"{op}: sums and maxima must have one entry per stage, got {len(sums)} and "
            f"{len(maxima)}"
        ),
    )
    for k, (s, m) in enumerate(zip(sums, maxima, strict=True)):
        torch._check(
            s.dim() == 5 and s.shape[1] == batch and s.shape[2] == 1 and s.dtype == torch.float32,
            lambda k=k, s=s: (
                f"{op}: sums[{k}] must be (n,B,1,H,W) float32 with B={batch}, got "
                f"{s.dtype} {tuple(s.shape)}"
            ),
        )
        torch._check(
            m.dim() == 2 and m.shape[0] == batch and m.dtype == torch.float32,
            lambda k=k, m=m: (
                f"{op}: maxima[{k}] must be (B,m) float32 with B={batch}, got "
                f"{m.dtype} {tuple(m.shape)}"
            ),
        )
    torch._check(
        len(windows) == 2 and min(windows) >= 1,
        lambda: f"{op}: windows must be two positive ints, got {list(windows)}",
    )
    torch._check(
        len(output_size) == 2 and min(output_size) >= 1,
        lambda: f"{op}: output_size must be two positive ints, got {list(output_size)}",
    )
    torch._check(
        0 <= normalize <= 2,
        lambda: (
            f"{op}: normalize must be 0 (none), 1 (min-max) or 2 (standardize), got {normalize}"
        ),
    )


# Fake (meta) implementations: output shapes and dtypes only, shared with the Triton ops.
def reduce_stage_fake(activation, transform, splits, chunks):
    check_reduce_stage_args(activation, transform, splits, chunks)
    batch, _, height, width = activation.shape
    return (
        activation.new_empty((splits, batch, 1, height, width), dtype=torch.float32),
        activation.new_empty((batch, splits * chunks), dtype=torch.float32),
    )


def extrapolate_chain_fake(heatmap, sums, maxima, windows, output_size, local, normalize):
    check_chain_args(heatmap, sums, maxima, windows, output_size, normalize)
    return heatmap.new_empty((heatmap.shape[0], 1, *output_size), dtype=torch.float32)


def _register_fakes() -> None:
    torch.library.register_fake("gradex::reduce_stage", reduce_stage_fake)
    torch.library.register_fake("gradex::extrapolate_chain", extrapolate_chain_fake)
    from . import chain_autograd  # imports reference, which must not load at import of _ext

    chain_autograd.register("gradex::extrapolate_chain")
