"""Backend choice and dispatch for the per-stage primitives of Gradual Extrapolation.

A backend supplies the three primitives of ``gradex.reference`` (reduce a stage to its channel
sum and max, one upsample-multiply step, the final normalisation). ``chain`` strings them together
the same way for every backend, so a backend differs from the reference only in its kernels.
Only the reference backend exists in this version; the compiled ones register here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import reference
from ._validation import check_extrapolate_args


@dataclass(frozen=True)
class Backend:
    name: str
    reduce_stage: Callable  # (activation, transform) -> (S, M)
    step: Callable  # (g, S, M) -> g
    normalize: Callable  # (g) -> g
    # () -> (available, reason); called when asked, never at import, so no GPU is touched then.
    availability: Callable[[], tuple[bool, str]]
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
        step=reference.upsample_multiply,
        normalize=reference.normalize_maps,
        availability=lambda: (True, "plain PyTorch ops; runs on any device"),
        devices=("*",),
    )
)


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
        for candidate in _AUTO_ORDER.get(device.type, ()):
            backend = _REGISTRY[candidate]
            if backend.availability()[0]:
                return backend
        return _REGISTRY["reference"]
    backend = _REGISTRY[name]
    available, reason = backend.availability()
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
    normalize: bool,
    backend: Backend,
) -> torch.Tensor:
    """The chain on stages that are already reduced (the Explainer reduces them in its hooks)."""
    return reference.chain(
        heatmap, stages, output_size, normalize, step=backend.step, finish=backend.normalize
    )


def extrapolate(
    heatmap: torch.Tensor,
    activations: Sequence[torch.Tensor],
    output_size=None,
    normalize: bool = True,
    backend: str = "auto",
    *,
    transform: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Gradual Extrapolation of a coarse class map through earlier feature maps.

    Args:
        heatmap: (B,1,h,w) or (B,h,w) coarse map (Grad-CAM or any other heatmap).
        activations: (B,C_k,H_k,W_k) tensors of the same forward pass, ordered shallow to deep.
        output_size: int or (H, W) of the result; default: the shallowest stage's size.
        normalize: map each sample to [0, 1] (standardise, clip to ±1 std, min-max).
        backend: 'auto' or a name from ``gradex.backends()``.
        transform: None, 'relu' or 'abs', applied to each activation (for stages that are not
            post-activation maps); without one, negative activations are refused.
        check: validate values (finite, non-negative); turn off on a trusted low-latency path.

    Returns:
        (B,1,H_out,W_out) float32 on the heatmap's device. The inputs are never modified.
    """
    heatmap, activations, output_size = check_extrapolate_args(
        heatmap, activations, output_size, transform, check
    )
    chosen = resolve_backend(backend, heatmap.device)
    stages = [chosen.reduce_stage(a, transform) for a in activations]
    return extrapolate_reduced(heatmap, stages, output_size, normalize, chosen)
