"""Input checks shared by every public entry point.

Each check raises with a message that names the argument (``activations[2]``, ``heatmap``) and
says what was expected, so that bad input never turns into a silent wrong map or a NaN image.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STAGE_TRANSFORMS = (None, "relu", "abs")
FLOAT32_MAX = torch.finfo(torch.float32).max
# The largest side of a map gradex makes: a 16384² float32 map is 1 GiB per sample already.
# Larger sizes were a typo or a runaway allocation (100000² asked the allocator for 40 GB per
# sample); resize the result yourself if you really mean it.
MAX_OUTPUT_SIDE = 16384


def check_float_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {value.dtype}"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)})")
    if value.device.type == "meta":
        raise ValueError(
            f"{name} is a meta tensor (a shape without values); gradex maps values: pass a "
            "tensor on a real device (cpu or cuda)"
        )
    return value


def check_finite(value: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def as_heatmap(heatmap, check: bool = True) -> torch.Tensor:
    """Return ``heatmap`` as a (B,1,h,w) tensor (a view; the caller's tensor is never modified)."""
    check_float_tensor(heatmap, "heatmap")
    if heatmap.dim() == 3:
        heatmap = heatmap.unsqueeze(1)
    if heatmap.dim() != 4 or heatmap.shape[1] != 1:
        raise ValueError(
            f"heatmap must have shape (B,1,h,w) or (B,h,w), got {tuple(heatmap.shape)}"
        )
    if check:
        check_finite(heatmap, "heatmap")
    return heatmap


def check_stage_transform(transform) -> None:
    if transform not in STAGE_TRANSFORMS:
        raise ValueError(f"transform must be one of {STAGE_TRANSFORMS}, got {transform!r}")


def check_activations(
    activations, heatmap: torch.Tensor, transform=None, check: bool = True
) -> list[torch.Tensor]:
    """Check the stage activations against the heatmap they will carry back.

    With ``check``, every value is also checked: finite, and non-negative unless a ``transform``
    makes it so (a negative channel sum would flip the sign of the map without a word).
    """
    if isinstance(activations, torch.Tensor) or not isinstance(activations, Sequence):
        raise TypeError(
            "activations must be a list or tuple of (B,C,H,W) tensors ordered shallow to deep, "
            f"got {type(activations).__name__}"
        )
    if len(activations) == 0:
        raise ValueError("activations is empty: pass at least one (B,C,H,W) stage activation")
    check_stage_transform(transform)
    batch = heatmap.shape[0]
    previous = None
    for k, a in enumerate(activations):
        name = f"activations[{k}]"
        check_float_tensor(a, name)
        if a.dim() != 4:
            raise ValueError(f"{name} must have shape (B,C,H,W), got {tuple(a.shape)}")
        if a.shape[0] != batch:
            raise ValueError(
                f"{name} has batch size {a.shape[0]} but heatmap has batch size {batch}"
            )
        if a.device != heatmap.device:
            raise ValueError(f"{name} is on {a.device} but heatmap is on {heatmap.device}")
        size = tuple(a.shape[-2:])
        if previous is not None and (size[0] > previous[0] or size[1] > previous[1]):
            raise ValueError(
                f"activations must be ordered shallow to deep (non-increasing H and W): "
                f"activations[{k - 1}] is {previous[0]}x{previous[1]} but {name} is "
                f"{size[0]}x{size[1]}"
            )
        previous = size
        if check:
            low, high = torch.aminmax(a.detach())
            if not (torch.isfinite(low) and torch.isfinite(high)):
                raise ValueError(f"{name} contains NaN or Inf values")
            if transform is None and low < 0:
                raise ValueError(
                    f"{name} has negative values (min {float(low):.4g}); Gradual Extrapolation "
                    "multiplies by the channel sum, so negative activations can flip the sign of "
                    "the map. Pass a post-activation (non-negative) tensor, or transform='relu' "
                    "or transform='abs'"
                )
            check_channel_sum_fits(a, float(low), float(high), transform, name)
    return list(activations)


def check_channel_sum_fits(a: torch.Tensor, low: float, high: float, transform, name: str):
    """The channel sum S is accumulated in float32: refuse a stage whose values are so large that
    it can overflow (C times the largest kept value beyond float32's range), rather than let an
    Inf S zero the map. GE does not depend on a stage's scale, so rescaling it is always safe."""
    largest = max(abs(low), abs(high)) if transform == "abs" else max(high, 0.0)
    if largest * a.shape[1] > FLOAT32_MAX:
        raise ValueError(
            f"{name} is too large for its channel sum to fit float32: {a.shape[1]} channels of "
            f"values up to {largest:.4g} can sum past {FLOAT32_MAX:.4g}. Gradual Extrapolation "
            "does not depend on a stage's scale: divide the activation by a constant first"
        )


NORMALIZATIONS = ("minmax", "standardize")
STAGE_WEIGHTINGS = ("local", "global")


def check_normalize(normalize) -> str | None:
    """'minmax', 'standardize' or None; True means the default 'minmax', False means None."""
    if normalize is True:
        return "minmax"
    if normalize is False or normalize is None:
        return None
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {NORMALIZATIONS}, True, False or None; got {normalize!r}"
        )
    return normalize


def check_stage_weighting(stage_weighting) -> str:
    if stage_weighting not in STAGE_WEIGHTINGS:
        raise ValueError(
            f"stage_weighting must be one of {STAGE_WEIGHTINGS}, got {stage_weighting!r}"
        )
    return stage_weighting


def on_deepest_grid(heatmap: torch.Tensor, deepest: torch.Tensor) -> torch.Tensor:
    """``heatmap`` brought down to the deepest stage's (H_K, W_K) grid where it is finer.

    Heatmaps made elsewhere usually come upsampled to the input's size (pytorch-grad-cam's do,
    to 224x224). GE's first step is a bilinear upsample to H_K x W_K: from a finer map that step
    is a bilinear downsample, which reads a few pixels near each cell's centre, and the chain then
    returned little more than the blurry map it was given (r = 0.998 with plain bilinear). Area
    pooling (``adaptive_avg_pool2d``: the exact mean of each cell's pixels when the sizes divide)
    gives each cell what the whole cell held, as the coarse layer would have. A side that is
    already at most the stage's is kept; the caller's tensor is never modified (a new one is made).
    """
    h, w = heatmap.shape[-2:]
    grid_h, grid_w = deepest.shape[-2:]
    if h <= grid_h and w <= grid_w:
        return heatmap
    return F.adaptive_avg_pool2d(heatmap.float(), (min(h, grid_h), min(w, grid_w)))


def check_extrapolate_args(heatmap, activations, output_size, transform=None, check=True):
    """(heatmap as (B,1,h,w) at most at the deepest stage's resolution, activations as a list,
    output_size as a pair or None)."""
    heatmap = as_heatmap(heatmap, check)
    activations = check_activations(activations, heatmap, transform, check)
    return on_deepest_grid(heatmap, activations[-1]), activations, as_output_size(output_size)


def _is_int(value) -> bool:
    """A Python or numpy integer (numbers.Integral); never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_output_size(output_size) -> tuple[int, int] | None:
    if output_size is None:
        return None
    if _is_int(output_size):
        output_size = (output_size, output_size)
    if (
        not isinstance(output_size, (tuple, list, torch.Size))
        or len(output_size) != 2
        or not all(_is_int(v) for v in output_size)
        or min(int(v) for v in output_size) < 1
    ):
        raise ValueError(
            f"output_size must be None, a positive int or a pair of positive ints, "
            f"got {output_size!r}"
        )
    size = (int(output_size[0]), int(output_size[1]))
    if max(size) > MAX_OUTPUT_SIDE:
        raise ValueError(
            f"output_size {size} is larger than gradex makes maps (at most {MAX_OUTPUT_SIDE} "
            "per side: a float32 map of that size is 1 GiB per sample); resize the result "
            "yourself if you need more"
        )
    return size


def check_image_batch(x) -> torch.Tensor:
    """Type and shape of an image batch; values are checked by the caller, after the device."""
    check_float_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be an image batch of shape (B,C,H,W), got {tuple(x.shape)}")
    return x
