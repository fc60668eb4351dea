"""Backend choice and dispatch for Gradual Extrapolation.

A backend supplies the two halves of GE: ``reduce_stage`` (one read of a stage activation, to its
channel sum S and maximum M, as partials: ``reference.Stage``) and ``chain`` (everything after
the reductions: the stage weighting, the upsample-multiply steps, the resize and the
normalisation). The fused backends run each half as one op: a stage costs one kernel launch and
the whole chain one more.

Backends: ``reference`` (plain PyTorch, any device), ``cpu`` and ``cuda`` (the compiled ops
``torch.ops.gradex.*`` of gradex._C), ``triton`` (``torch.ops.gradex_triton.*``). Nothing is
loaded or compiled until a backend is first asked for.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import _ext, reference
from ._validation import check_extrapolate_args, check_normalize, check_stage_weighting
from .partition import reduction_partition

# Stages one chain op carries: the CUDA kernel passes them by value in its launch arguments.
# Longer lists (rare: one stage per resolution is the usual) go through several calls.
MAX_STAGES_PER_CALL = 16


@dataclass(frozen=True)
class Backend:
    name: str
    reduce_stage: Callable  # (activation, transform) -> reference.Stage
    chain: Callable  # (heatmap, stages, output_size, stage_weighting, normalize) -> map
    # (device or None) -> (available, reason); called when asked, never at import, so no GPU
    # is touched then. With a device: whether it runs on that device.
    availability: Callable[..., tuple[bool, str]]
    devices: tuple[str, ...]  # device types it runs on


_REGISTRY: dict[str, Backend] = {}
# What 'auto' tries, first to last, for each device type; the reference closes every list.
_AUTO_ORDER: dict[str, list[str]] = {}


def register_backend(backend: Backend, auto_for: Sequence[str] = ()) -> None:
    """Make ``backend`` selectable by name, and tried by 'auto' on the ``auto_for`` device types
    (in registration order, before the reference)."""
    _REGISTRY[backend.name] = backend
    for device_type in auto_for:
        _AUTO_ORDER.setdefault(device_type, []).append(backend.name)


register_backend(
    Backend(
        name="reference",
        reduce_stage=reference.reduce_stage,
        chain=reference.chain,
        availability=lambda device=None: (True, "plain PyTorch ops; runs on any device"),
        devices=("*",),
    )
)


@functools.cache
def _multiprocessors_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _cuda_multiprocessors(device: torch.device) -> int:
    return _multiprocessors_of(_ext.cuda_index(device))


@dataclass(frozen=True)
class _FusedOps:
    """The two halves as calls of one registered op namespace (``torch.ops.<ns>``), looked up at
    call time, so nothing is loaded before first use."""

    namespace: Callable[[], object]
    # SMs the reduction splits a stage for, on a device of this type; None: one part (the CPU
    # kernel spreads its threads itself).
    multiprocessors: Callable[[torch.device], int | None]

    def reduce_stage(self, activation: torch.Tensor, transform: str | None) -> reference.Stage:
        batch, channels, height, width = activation.shape
        multiprocessors = self.multiprocessors(activation.device)
        splits, chunks = (
            (1, 1)
            if multiprocessors is None
            else reduction_partition(batch, channels, height * width, multiprocessors)
        )
        code = _ext.TRANSFORM_CODES[transform]
        sums, maxima = self.namespace().reduce_stage(activation.detach(), code, splits, chunks)
        return reference.Stage(sums, maxima)

    def chain(
        self,
        heatmap: torch.Tensor,
        stages: Sequence[reference.Stage],
        output_size: tuple[int, int] | None,
        stage_weighting: str = "local",
        normalize: str | None = "minmax",
    ) -> torch.Tensor:
        op = self.namespace().extrapolate_chain
        local = check_stage_weighting(stage_weighting) == "local"
        code = _ext.NORMALIZE_CODES[check_normalize(normalize)]
        windows = list(reference.local_windows(heatmap.shape[-2:]))
        g = heatmap.float()
        stages = list(stages)
        if output_size is None:  # the shallowest stage's size, as the reference leaves it
            output_size = tuple((stages[0].sums if stages else g).shape[-2:])
        # The deepest groups first, each handing its raw map (at its shallowest stage's size)
        # to the next group as its heatmap; the windows stay those of the real heatmap.
        while len(stages) > MAX_STAGES_PER_CALL:
            group, stages = stages[-MAX_STAGES_PER_CALL:], stages[:-MAX_STAGES_PER_CALL]
            size = list(group[0].sums.shape[-2:])
            g = op(g, [s.sums for s in group], [s.maxima for s in group], windows, size, local, 0)
        sums, maxima = [s.sums for s in stages], [s.maxima for s in stages]
        return op(g, sums, maxima, windows, list(output_size), local, code)


def _compiled_multiprocessors(device: torch.device) -> int | None:
    return _cuda_multiprocessors(device) if device.type == "cuda" else None


_COMPILED = _FusedOps(lambda: torch.ops.gradex, _compiled_multiprocessors)

for _name, _availability in (("cpu", _ext.cpu_availability), ("cuda", _ext.cuda_availability)):
    # One set of ops: the dispatcher routes them to the CPU or CUDA kernels by device.
    register_backend(
        Backend(
            name=_name,
            reduce_stage=_COMPILED.reduce_stage,
            chain=_COMPILED.chain,
            availability=_availability,
            devices=(_name,),
        ),
        auto_for=(_name,),
    )


def _triton_ops():
    from . import triton_kernels  # noqa: F401  (imports triton; registers torch.ops.gradex_triton)

    return torch.ops.gradex_triton


# Triton runs CPU tensors only in its interpreter, which it reads from the environment.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter's 'GPU': small, so that the tests also exercise split reductions.
INTERPRETER_MULTIPROCESSORS = 4


def _triton_multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_multiprocessors(device)
    return INTERPRETER_MULTIPROCESSORS


_TRITON = _FusedOps(_triton_ops, _triton_multiprocessors)


def _triton_availability(device: torch.device | None = None) -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    if _TRITON_INTERPRET:
        return True, "Triton kernels, interpreted on CPU tensors (TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():  # asks the driver; creates no CUDA context
        return False, "Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)"
    return True, "Triton kernels (compiled on first use)"


register_backend(
    Backend(
        name="triton",
        reduce_stage=_TRITON.reduce_stage,
        chain=_TRITON.chain,
        availability=_triton_availability,
        devices=("cuda", "cpu") if _TRITON_INTERPRET else ("cuda",),
    ),
    auto_for=("cuda",),
)

# Device types 'auto' has already warned about falling back to the reference on.
_WARNED_FALLBACK: set[str] = set()


def backends() -> dict[str, tuple[bool, str]]:
    """Every known backend: ``{name: (available, reason)}``."""
    return {name: backend.availability() for name, backend in _REGISTRY.items()}


def check_backend_name(name) -> None:
    """Refuse a backend name that is neither 'auto' nor registered (built or not)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name != "auto" and name not in _REGISTRY:
        choices = ", ".join(["auto", *_REGISTRY])
        raise ValueError(f"backend must be one of: {choices}; got {name!r}")


def resolve_backend(name: str, device: torch.device) -> Backend:
    """The backend that ``name`` means for tensors on ``device``."""
    check_backend_name(name)
    if name == "auto":
        reasons = []
        for candidate in _AUTO_ORDER.get(device.type, ()):
            backend = _REGISTRY[candidate]
            available, reason = backend.availability(device)
            if available:
                return backend
            reasons.append(f"{candidate}: {reason}")
        if reasons and device.type not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add(device.type)
            warnings.warn(
                f"gradex: no fused backend for {device.type} tensors, using the reference "
                f"(slower); {'; '.join(reasons)}",
                RuntimeWarning,
                stacklevel=3,
            )
        return _REGISTRY["reference"]
    backend = _REGISTRY[name]
    available, reason = backend.availability(device)
    if not available:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    if "*" not in backend.devices and device.type not in backend.devices:
        raise ValueError(
            f"backend {name!r} runs on {', '.join(backend.devices)} tensors, not {device.type}"
        )
    return backend


def extrapolate_reduced(
    heatmap: torch.Tensor,
    stages: Sequence[reference.Stage],
    output_size: tuple[int, int] | None,
    backend: Backend,
    normalize: str | bool | None = "minmax",
    stage_weighting: str = "local",
) -> torch.Tensor:
    """The chain on stages that are already reduced (the Explainer reduces them in its hooks);
    every backend's chain checks the option names."""
    return backend.chain(heatmap, stages, output_size, stage_weighting, normalize)


def extrapolate(
    heatmap: torch.Tensor,
    activations: Sequence[torch.Tensor],
    output_size=None,
    normalize: str | bool | None = "minmax",
    backend: str = "auto",
    *,
    stage_weighting: str = "local",
    transform: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Gradual Extrapolation of a coarse class map through earlier feature maps.

    Args:
        heatmap: (B,1,h,w) or (B,h,w) class map (Grad-CAM or any other heatmap), at any
            resolution: a map finer than the deepest stage (one upsampled to the input's size,
            as pytorch-grad-cam's are) is first area-pooled to that stage's grid
            (``F.adaptive_avg_pool2d``), so that GE starts from the coarse map, not a blur of it.
        activations: (B,C_k,H_k,W_k) tensors of the same forward pass, ordered shallow to deep.
        output_size: int or (H, W) of the result; default: the shallowest stage's size.
        normalize: 'minmax' (default; True) maps each sample to [0, 1]; 'standardize' is the
            paper's (standardise, clip to ±1 std, min-max); None or False returns the raw chain.
        backend: 'auto' or a name from ``gradex.backends()``.
        stage_weighting: 'local' (default) balances each stage's strength over windows of 2×2
            coarse-map cells, so GE sharpens where the map points without moving evidence
            towards distant regions that fire more strongly; 'global' is the paper's.
        transform: None, 'relu' or 'abs', applied to each activation (for stages that are not
            post-activation maps); without one, negative activations are refused.
        check: validate values (finite, non-negative); turn off on a trusted low-latency path.

    The paper's formula: ``stage_weighting='global', normalize='standardize'``.

    Returns:
        (B,1,H_out,W_out) float32 on the heatmap's device. The inputs are never modified.
    """
    heatmap, activations, output_size = check_extrapolate_args(
        heatmap, activations, output_size, transform, check
    )
    normalize = check_normalize(normalize)  # refuse a bad name before any work
    check_stage_weighting(stage_weighting)
    chosen = resolve_backend(backend, heatmap.device)
    stages = [chosen.reduce_stage(a, transform) for a in activations]
    return extrapolate_reduced(heatmap, stages, output_size, chosen, normalize, stage_weighting)
