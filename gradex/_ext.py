"""Loads gradex's compiled kernels (``gradex._C``) on first use and says why when it cannot.

The extension registers ``torch.ops.gradex.{reduce_stage, upsample_multiply, normalize_maps}``
(schemas in csrc/gradex.cpp) with CPU kernels and, when built with the CUDA toolkit, CUDA
kernels. Their fake (meta) implementations live here, so the ops trace under torch.compile.
Nothing is loaded at ``import gradex``.
"""

from __future__ import annotations

import functools

import torch

BUILD_COMMAND = (
    'pip install --no-build-isolation -e ".[test]" from a clone, with a C++ compiler '
    "(and the CUDA toolkit, or CUDA_HOME, for the CUDA kernels); see README.md"
)

# The `transform` argument of gradex::reduce_stage (csrc/stage_ops.h).
TRANSFORM_CODES = {None: 0, "relu": 1, "abs": 2}


@functools.cache
def load() -> tuple[bool, str]:
    """(loaded, reason). Loads the extension once and registers the fake implementations."""
    try:
        from . import _C  # noqa: F401  (loading the library registers the ops)
    except ImportError as error:
        return False, f"gradex._C is not built ({error}); build it with: {BUILD_COMMAND}"
    _register_fakes()
    return True, "gradex._C loaded"


def has_kernel(device_type: str) -> bool:
    """Whether the loaded extension carries kernels for ``device_type`` ('CPU' or 'CUDA')."""
    return load()[0] and torch._C._dispatch_has_kernel_for_dispatch_key(
        "gradex::reduce_stage", device_type
    )


def cpu_availability() -> tuple[bool, str]:
    loaded, reason = load()
    if not loaded:
        return False, reason
    if not has_kernel("CPU"):
        return False, f"gradex._C has no CPU kernels; rebuild with: {BUILD_COMMAND}"
    return True, f"C++ kernels in gradex._C, {torch.get_num_threads()} threads"


def cuda_availability() -> tuple[bool, str]:
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
    return True, "CUDA kernels in gradex._C"


# Fake (meta) implementations: output shapes and dtypes only. The compiled ops and the Triton
# ops (gradex/triton_kernels.py) share them, as they share the schemas.
def reduce_stage_fake(activation, transform):
    torch._check(activation.dim() == 4, lambda: "activation must be (B,C,H,W)")
    batch, _, height, width = activation.shape
    return (
        activation.new_empty((batch, 1, height, width), dtype=torch.float32),
        activation.new_empty((batch,), dtype=torch.float32),
    )


def upsample_multiply_fake(g, channel_sum, sample_max):
    torch._check(g.dim() == 4 and channel_sum.dim() == 4, lambda: "maps must be (B,1,H,W)")
    torch._check(g.shape[0] == channel_sum.shape[0], lambda: "batch sizes differ")
    return g.new_empty(channel_sum.shape, dtype=torch.float32)


def normalize_maps_fake(g):
    torch._check(g.dim() == 4, lambda: "g must be (B,1,H,W)")
    return g.new_empty(g.shape, dtype=torch.float32)


def _register_fakes() -> None:
    torch.library.register_fake("gradex::reduce_stage", reduce_stage_fake)
    torch.library.register_fake("gradex::upsample_multiply", upsample_multiply_fake)
    torch.library.register_fake("gradex::normalize_maps", normalize_maps_fake)
