"""Gradual Extrapolation in plain PyTorch: the oracle every backend is tested against.

The math (DESIGN.md §1), for each sample b on its own:

    g = H[b]                                   (float32 from here on)
    for each stage k, deepest first:
        g = bilinear(g, (H_k, W_k))            (align_corners=False)
        g = g * S_k / M_k                      S_k = Σ_c A_k[b, c],  M_k = max A_k[b]
                                               (M_k <= 0 or not finite: the stage is dead, g = 0)
    optionally g = bilinear(g, output_size)
    normalise: z = clip((g - mean) / std, -1, 1), then min-max to [0, 1]; a constant map gives 0

That is the paper's formula (per sample), kept as ``stage_weighting='global'`` with
``normalize='standardize'``. gradex's defaults, chosen by the evaluation (docs/evaluation):

- ``stage_weighting='local'``: before the chain, each stage's S is divided by its own mean over
  windows of 2×2 cells of the coarse map (``localise_stages``). The upsampling blurs each coarse
  value over that neighbourhood, and GE should undo that blur, not move the evidence towards
  distant regions that merely fire more strongly: with the raw S, whose strength differs across
  an image by orders of magnitude over five stages, a class map in a dim region was drawn into a
  bright one (grid cells of a dark photo beside a textured one lost up to half their evidence).
- ``normalize='minmax'``: (g - min) / (max - min). The paper's standardise-and-clip saturates
  everything above one standard deviation and lifts a sparse map's background well above zero
  (a pixel at 0 lands at (1 - mean/std) / 2); it lowered GE's localisation scores on both
  testbeds.

It is split into the three primitives a fused backend replaces (``reduce_stage``,
``upsample_multiply``, ``normalize_maps``) and the short ``chain`` that strings them together;
the local weighting and the min-max normalisation are plain PyTorch ops on the small (B,1,H,W)
maps, shared by every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ._validation import (
    check_extrapolate_args,
    check_normalize,
    check_stage_transform,
    check_stage_weighting,
)

Stage = tuple[torch.Tensor, torch.Tensor]  # (S: (B,1,H,W) float32, M: (B,) float32)

# The options of ``extrapolate`` (and the Explainer) that compute GE as the paper does, per image.
PAPER_FORMULA = {"stage_weighting": "global", "normalize": "standardize"}

# Coarse-map cells per side of the windows that 'local' stage weighting balances S over: the
# support of the bilinear kernel that spread each coarse value.
LOCAL_WINDOW = 2


def apply_transform(activation: torch.Tensor, transform: str | None) -> torch.Tensor:
    """Make a stage non-negative without touching the caller's tensor."""
    if transform is None:
        return activation
    if transform == "relu":
        return activation.clamp_min(0)
    if transform == "abs":
        return activation.abs()
    check_stage_transform(transform)  # raises with the allowed values
    raise AssertionError("unreachable")


def reduce_stage(activation: torch.Tensor, transform: str | None = None) -> Stage:
    """(B,C,H,W) activation -> (S, M): channel sum (B,1,H,W) and per-sample max (B,), in fp32.

    M is reported clamped at 0 (a non-positive max makes the stage dead either way; the fused
    kernels start their max at 0), and NaN where the stage holds a NaN.
    """
    a = apply_transform(activation.detach(), transform)
    channel_sum = a.sum(dim=1, keepdim=True, dtype=torch.float32)
    sample_max = a.amax(dim=(1, 2, 3)).float().clamp_min(0)
    return channel_sum, sample_max


def upsample_multiply(g: torch.Tensor, channel_sum: torch.Tensor, sample_max: torch.Tensor):
    """One GE step: carry ``g`` to the stage's resolution and weight it by how the stage fired."""
    g = F.interpolate(g, size=tuple(channel_sum.shape[-2:]), mode="bilinear", align_corners=False)
    live = (torch.isfinite(sample_max) & (sample_max > 0)).view(-1, 1, 1, 1)
    safe_max = torch.where(live, sample_max.view(-1, 1, 1, 1), torch.ones_like(g[:, :, :1, :1]))
    # where(), not a multiply by 0: a dead stage may hold Inf, and 0 * Inf is NaN.
    return torch.where(live, g * channel_sum / safe_max, torch.zeros_like(g))


def normalize_maps(g: torch.Tensor) -> torch.Tensor:
    """Per sample: standardise (unbiased std), clip to [-1, 1], min-max to [0, 1].

    A constant map (a dead stage, an all-zero CAM) becomes all zeros rather than NaN. Constancy is
    decided on the map itself (max == min), not on its std, because float rounding of the mean
    leaves a tiny non-zero std on a constant map that would turn into a noise pattern.
    """
    flat = g.flatten(1)
    lo, hi = flat.aminmax(dim=1)
    varying = (hi > lo) & (flat.shape[1] > 1)
    mean = flat.mean(dim=1, keepdim=True)
    if flat.shape[1] > 1:
        std = flat.std(dim=1, keepdim=True).where(varying.unsqueeze(1), torch.ones_like(mean))
    else:  # one pixel: no spread to standardise by, and std() would warn
        std = torch.ones_like(mean)
    z = ((flat - mean) / std).clamp(-1, 1)
    z_lo, z_hi = z.aminmax(dim=1)
    span = (z_hi - z_lo).unsqueeze(1)
    varying = varying & (z_hi > z_lo)
    out = torch.where(
        varying.unsqueeze(1), (z - z_lo.unsqueeze(1)) / span.where(span > 0, 1), torch.zeros_like(z)
    )
    return out.view_as(g)


def localise_stages(stages: Sequence[Stage], coarse_size: tuple[int, int]) -> list[Stage]:
    """'local' stage weighting: each S divided by its mean over windows of ``LOCAL_WINDOW``²
    cells of the coarse map (pooled, then upsampled bilinearly, so no window edges show).

    M is replaced by 1 on live stages (the per-sample scale it removed no longer matters) and
    kept where it marks a dead stage (<= 0 or not finite), so those still give zeros.
    """
    windows = tuple(max(1, -(-side // LOCAL_WINDOW)) for side in coarse_size)
    out = []
    for channel_sum, sample_max in stages:
        pooled = F.adaptive_avg_pool2d(channel_sum, windows)
        local_mean = F.interpolate(
            pooled, size=tuple(channel_sum.shape[-2:]), mode="bilinear", align_corners=False
        )
        # A window that never fired has S = 0 in it: 0 / floor = 0, never 0 / 0.
        floor = (pooled.amax(dim=(1, 2, 3), keepdim=True) * 1e-6).clamp_min(1e-30)
        live = torch.isfinite(sample_max) & (sample_max > 0)
        out.append(
            (
                channel_sum / (local_mean + floor),
                torch.where(live, torch.ones_like(sample_max), sample_max),
            )
        )
    return out


def minmax_maps(g: torch.Tensor) -> torch.Tensor:
    """Per sample: (g - min) / (max - min); a constant map becomes all zeros."""
    flat = g.flatten(1)
    lo, hi = flat.aminmax(dim=1)
    span = (hi - lo).unsqueeze(1)
    out = torch.where(span > 0, (flat - lo.unsqueeze(1)) / span.where(span > 0, 1), 0.0)
    return out.view_as(g)


def finish_for(normalize: str | None, standardize: Callable = normalize_maps) -> Callable | None:
    """The final normalisation a ``normalize`` name means; ``standardize`` is the backend's
    fused kernel for the paper's one."""
    normalize = check_normalize(normalize)
    if normalize is None:
        return None
    return minmax_maps if normalize == "minmax" else standardize


def weighted_stages(
    stages: Sequence[Stage], coarse_size: tuple[int, int], stage_weighting: str
) -> list[Stage]:
    if check_stage_weighting(stage_weighting) == "local":
        return localise_stages(stages, coarse_size)
    return list(stages)


def chain(
    heatmap: torch.Tensor,
    stages: Sequence[Stage],
    output_size: tuple[int, int] | None,
    normalize: bool,
    step: Callable = upsample_multiply,
    finish: Callable = normalize_maps,
) -> torch.Tensor:
    """Carry a (B,1,h,w) heatmap through reduced stages ordered shallow to deep.

    ``step`` and ``finish`` are the backend's primitives; the defaults are this module's.
    """
    g = heatmap.float()
    for channel_sum, sample_max in reversed(stages):
        g = step(g, channel_sum, sample_max)
    if output_size is not None and tuple(g.shape[-2:]) != tuple(output_size):
        g = F.interpolate(g, size=output_size, mode="bilinear", align_corners=False)
    if normalize:
        g = finish(g)
    return g.contiguous()


def extrapolate(
    heatmap: torch.Tensor,
    activations: Sequence[torch.Tensor],
    output_size=None,
    normalize: str | bool | None = "minmax",
    *,
    stage_weighting: str = "local",
    transform: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Gradual Extrapolation of ``heatmap`` through ``activations`` (shallow to deep), per sample.

    Returns a (B,1,H_out,W_out) float32 map; normalised, its values are in [0, 1].
    ``transform`` ('relu' or 'abs') is applied to each activation first; without one, negative
    activations are refused when ``check`` is on. ``stage_weighting='global'`` with
    ``normalize='standardize'`` is the paper's formula.
    """
    heatmap, activations, output_size = check_extrapolate_args(
        heatmap, activations, output_size, transform, check
    )
    finish = finish_for(normalize)
    stages = [reduce_stage(a, transform) for a in activations]
    stages = weighted_stages(stages, tuple(heatmap.shape[-2:]), stage_weighting)
    return chain(heatmap, stages, output_size, finish is not None, finish=finish or normalize_maps)


def extrapolate_paper(heatmap: torch.Tensor, activations: Sequence[torch.Tensor]) -> torch.Tensor:
    """The original repository's batch-global behaviour, to verify against it.

    As in github.com/szandala/gradual-extrapolation: each stage divides by the max over the whole
    batch, and the normalisation takes mean, std (unbiased), min and max over the whole batch, so
    one image's map depends on its batch-mates. The only departure: where the original divides by
    a non-positive max or a zero std and returns NaN, this returns zeros.
    """
    heatmap, activations, _ = check_extrapolate_args(heatmap, activations, None)
    g = heatmap.float()
    for a in reversed(activations):
        a = a.detach()
        g = F.interpolate(g, size=tuple(a.shape[-2:]), mode="bilinear", align_corners=False)
        batch_max = a.max().float()
        if batch_max <= 0:
            g = torch.zeros_like(g)
        else:
            g = g * (a.sum(dim=1, keepdim=True, dtype=torch.float32) / batch_max)
    lo, hi = g.aminmax()
    if not hi > lo:
        return torch.zeros_like(g)
    z = ((g - g.mean()) / g.std()).clamp(-1, 1)
    return (z - z.min()) / (z.max() - z.min())
