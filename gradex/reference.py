"""Gradual Extrapolation in plain PyTorch: the oracle every backend is tested against.

The math (DESIGN.md §1), for each sample b on its own:

    g = H[b]                                   (float32 from here on; a map finer than the
                                               deepest stage is first area-pooled to its grid)
    for each stage k, deepest first:
        g = bilinear(g, (H_k, W_k))            (align_corners=False)
        g = g * S_k / M_k                      S_k = Σ_c A_k[b, c],  M_k = max A_k[b]
                                               (M_k <= 0 or not finite: the stage is dead, g = 0)
    optionally g = bilinear(g, output_size)
    normalise: z = clip((g - mean) / std, -1, 1), then min-max to [0, 1]; a constant map gives 0

That is the paper's formula (per sample), kept as ``stage_weighting='global'`` with
``normalize='standardize'``. gradex's defaults, chosen by the evaluation (docs/evaluation):

- ``stage_weighting='local'``: before the chain, each stage's S is divided by its own mean over
  windows of 2×2 cells of the coarse map (``local_weighting``). The upsampling blurs each coarse
  value over that neighbourhood, and GE should undo that blur, not move the evidence towards
  distant regions that merely fire more strongly: with the raw S, whose strength differs across
  an image by orders of magnitude over five stages, a class map in a dim region was drawn into a
  bright one (grid cells of a dark photo beside a textured one lost up to half their evidence).
- ``normalize='minmax'``: (g - min) / (max - min). The paper's standardise-and-clip saturates
  everything above one standard deviation and lifts a sparse map's background well above zero
  (a pixel at 0 lands at (1 - mean/std) / 2); it lowered GE's localisation scores on both
  testbeds.

A map that is constant within the float32 rounding of the chain (``map_is_varying``) normalises
to zeros under either normalisation: stretching rounding noise to [0, 1] would draw a confident
pattern where there is nothing to show.

A backend replaces two pieces: ``reduce_stage`` (one read of each activation, in the forward
hook) and ``chain`` (everything after it, on maps C_k times smaller). Reduced stages are
``Stage`` partials, so that a parallel reduction can leave per-block results behind instead of
combining them with atomics or a second launch; the reference's have a single part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._validation import (
    check_extrapolate_args,
    check_normalize,
    check_stage_transform,
    check_stage_weighting,
)

# The options of ``extrapolate`` (and the Explainer) that compute GE as the paper does, per image.
PAPER_FORMULA = {"stage_weighting": "global", "normalize": "standardize"}

# Coarse-map cells per side of the windows that 'local' stage weighting balances S over: the
# support of the bilinear kernel that spread each coarse value.
LOCAL_WINDOW = 2
# The local mean is floored at this fraction of the stage's largest window mean (and at
# MIN_FLOOR), so that a window that never fired gives 0 / floor = 0, never 0 / 0.
LOCAL_FLOOR = 1e-6
MIN_FLOOR = 1e-30

# A map whose spread (max - min) is at most this fraction of its magnitude (max |g|) is constant:
# the float32 rounding of the chain, not a pattern. Each stage rounds a value about ten times
# (the bilinear taps of g and of the window means, the floor, the divide, the multiply), each by
# at most u = 2^-24 of it, so a chain of K stages and the final resize move a constant map by at
# most ~(10K + 4)u, and two pixels differ by twice that: 2^-15 = 512u covers 25 stages (the tests
# measure ~20u on constant inputs) and is still ~30x below a faint map of 0.1 % contrast.
CONSTANT_RTOL = 2.0**-15


class Stage(NamedTuple):
    """A GE stage reduced to what the chain reads, as partial results.

    ``sums`` (n,B,1,H,W) float32: partial channel sums, S = their sum over the first dim;
    ``maxima`` (B,m) float32: partial maxima, M = their max (NaN if any is NaN). A fused
    reduction writes one part per block it ran, so that nothing has to be zeroed first or
    combined by atomics (which would also make S depend on the order blocks finished in).
    """

    sums: torch.Tensor
    maxima: torch.Tensor

    def channel_sum(self) -> torch.Tensor:
        """S: (B,1,H,W) float32."""
        return self.sums[0] if self.sums.shape[0] == 1 else self.sums.sum(dim=0)

    def sample_max(self) -> torch.Tensor:
        """M: (B,) float32, NaN where the stage held a NaN."""
        return self.maxima[:, 0] if self.maxima.shape[1] == 1 else self.maxima.amax(dim=1)


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
    """(B,C,H,W) activation -> its channel sum S (B,1,H,W) and per-sample max M (B,), in fp32.

    M is reported clamped at 0 (a non-positive max makes the stage dead either way; the fused
    kernels start their max at 0), and NaN where the stage holds a NaN.
    """
    a = apply_transform(activation.detach(), transform)
    channel_sum = a.sum(dim=1, keepdim=True, dtype=torch.float32)
    sample_max = a.amax(dim=(1, 2, 3)).float().clamp_min(0)
    return Stage(channel_sum.unsqueeze(0), sample_max.unsqueeze(1))


def stage_is_live(sample_max: torch.Tensor) -> torch.Tensor:
    """A stage whose max is not a positive finite number fired nowhere (or overflowed)."""
    return torch.isfinite(sample_max) & (sample_max > 0)


def upsample_multiply(g: torch.Tensor, channel_sum: torch.Tensor, sample_max: torch.Tensor):
    """One GE step: carry ``g`` to the stage's resolution and weight it by how the stage fired."""
    g = F.interpolate(g, size=tuple(channel_sum.shape[-2:]), mode="bilinear", align_corners=False)
    live = stage_is_live(sample_max).view(-1, 1, 1, 1)
    safe_max = torch.where(live, sample_max.view(-1, 1, 1, 1), torch.ones_like(g[:, :, :1, :1]))
    # where(), not a multiply by 0: a dead stage may hold Inf, and 0 * Inf is NaN.
    return torch.where(live, g * channel_sum / safe_max, torch.zeros_like(g))


def local_windows(coarse_size: Sequence[int]) -> tuple[int, int]:
    """How many windows of ``LOCAL_WINDOW``² coarse cells cover a coarse map, per side."""
    return tuple(max(1, -(-int(side) // LOCAL_WINDOW)) for side in coarse_size)


def local_weighting(
    channel_sum: torch.Tensor, sample_max: torch.Tensor, windows: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """'local' stage weighting: S divided by its mean over ``windows`` (pooled, then upsampled
    bilinearly, so no window edges show).

    The window means are summed in float64: exact for a constant S, so a constant stage stays
    constant. M is replaced by 1 on live stages (the per-sample scale it removed no longer
    matters) and kept where it marks a dead stage (<= 0 or not finite), so those still give zeros.
    """
    pooled = F.adaptive_avg_pool2d(channel_sum.double(), windows).float()
    local_mean = F.interpolate(
        pooled, size=tuple(channel_sum.shape[-2:]), mode="bilinear", align_corners=False
    )
    floor = (pooled.amax(dim=(1, 2, 3), keepdim=True) * LOCAL_FLOOR).clamp_min(MIN_FLOOR)
    weight = torch.where(stage_is_live(sample_max), torch.ones_like(sample_max), sample_max)
    return channel_sum / (local_mean + floor), weight


def map_is_varying(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per sample: does a map spanning [lo, hi] vary by more than the chain's rounding
    (``CONSTANT_RTOL``)? False for NaN and infinite spans."""
    return (hi - lo) > CONSTANT_RTOL * torch.maximum(lo.abs(), hi.abs())


def normalize_maps(g: torch.Tensor) -> torch.Tensor:
    """Per sample: standardise (unbiased std), clip to [-1, 1], min-max to [0, 1].

    A constant map (a dead stage, an all-zero CAM, a constant input) becomes all zeros rather than
    NaN or stretched noise. Constancy is decided on the map itself (``map_is_varying``), not on its
    std, which float rounding of the mean leaves non-zero on a constant map.
    """
    flat = g.flatten(1)
    lo, hi = flat.aminmax(dim=1)
    varying = map_is_varying(lo, hi) & (flat.shape[1] > 1)
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


def minmax_maps(g: torch.Tensor) -> torch.Tensor:
    """Per sample: (g - min) / (max - min); a constant map (``map_is_varying``) becomes zeros."""
    flat = g.flatten(1)
    lo, hi = flat.aminmax(dim=1)
    varying = map_is_varying(lo, hi).unsqueeze(1)
    span = (hi - lo).unsqueeze(1)
    out = torch.where(varying, (flat - lo.unsqueeze(1)) / span.where(varying, 1), 0.0)
    return out.view_as(g)


NORMALIZERS = {"minmax": minmax_maps, "standardize": normalize_maps}


# Overflow. GE does not depend on the scale of the heatmap or of any stage (each stage enters as
# S/M or S over its local mean, and the normalisations are scale-free), but float32 does: a
# 3e38 heatmap pixel times a channel sum, or g*S before the division by M, overflowed to Inf and
# turned a finite input into a NaN or all-zero map. So the chain works on copies scaled by a
# power of two, chosen per sample from the heatmap's largest finite magnitude and from each live
# stage's M, that brings each near 1. A power of two scales every product, sum and quotient of
# the chain exactly (subnormals aside), so on ordinary inputs nothing changes by a bit; the raw
# map (normalize=None) gets the heatmap's scale back at the end.
def pow2_shift(magnitude: torch.Tensor) -> torch.Tensor:
    """Per value: s (int32, in [-126, 127]) such that magnitude * 2^s lies in [1, 2) where it
    can (a non-negative float32; 0 and subnormals get 127, the top exponents -126).

    Read from the float's exponent bits, as the kernels do (gradex/csrc/stage_ops.h)."""
    biased = (magnitude.float().contiguous().view(torch.int32) >> 23) & 0xFF
    return (127 - biased).clamp(-126, 127)


def pow2(shift: torch.Tensor) -> torch.Tensor:
    """2^shift as float32, exactly, for int32 shifts in [-126, 127]."""
    return ((shift.to(torch.int32) + 127) << 23).view(torch.float32)


def unscale(g: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """g * 2^-shift, per sample, in two exact steps (2^-127 itself is not a normal float)."""
    half = torch.div(-shift, 2, rounding_mode="trunc")
    view = (-1,) + (1,) * (g.dim() - 1)
    return g * pow2(half).view(view) * pow2(-shift - half).view(view)


def heatmap_shift(heatmap: torch.Tensor) -> torch.Tensor:
    """Per sample: the shift of the heatmap's largest finite magnitude."""
    finite = torch.where(torch.isfinite(heatmap), heatmap.abs(), torch.zeros_like(heatmap))
    return pow2_shift(finite.float().amax(dim=(1, 2, 3)))


def stage_shift(sample_max: torch.Tensor) -> torch.Tensor:
    """Per sample: the shift of a live stage's M; 0 (scale 1) on a dead one."""
    return torch.where(
        stage_is_live(sample_max),
        pow2_shift(sample_max.clamp_min(0)),
        torch.zeros_like(sample_max, dtype=torch.int32),
    )


def chain(
    heatmap: torch.Tensor,
    stages: Sequence[Stage],
    output_size: tuple[int, int] | None,
    stage_weighting: str = "local",
    normalize: str | None = "minmax",
) -> torch.Tensor:
    """Carry a (B,1,h,w) heatmap through reduced stages ordered shallow to deep, resize it to
    ``output_size`` and normalise it: everything GE does after the reductions."""
    local = check_stage_weighting(stage_weighting) == "local"
    normalize = check_normalize(normalize)
    return chain_op(
        heatmap,
        [stage.sums for stage in stages],
        [stage.maxima for stage in stages],
        local_windows(heatmap.shape[-2:]),
        output_size,
        local,
        normalize,
    )


def chain_op(
    heatmap: torch.Tensor,
    sums: Sequence[torch.Tensor],
    maxima: Sequence[torch.Tensor],
    windows: Sequence[int],
    output_size: Sequence[int] | None,
    local: bool,
    normalize: str | None,
) -> torch.Tensor:
    """The reference of the fused ``extrapolate_chain`` ops, with their arguments: a (B,1,h,w)
    heatmap, each stage's partial sums and maxima, the local weighting's windows (those of the
    real heatmap, which a chain split over several calls keeps). Differentiable in ``heatmap``:
    the fused ops' backward runs through it."""
    g = heatmap.float()
    shift = heatmap_shift(g)
    g = g * pow2(shift).view(-1, 1, 1, 1)
    for stage in reversed([Stage(s, m) for s, m in zip(sums, maxima, strict=True)]):
        channel_sum, sample_max = stage.channel_sum(), stage.sample_max()
        scale = pow2(stage_shift(sample_max))
        channel_sum = channel_sum * scale.view(-1, 1, 1, 1)
        sample_max = sample_max * scale
        if local:
            channel_sum, sample_max = local_weighting(channel_sum, sample_max, tuple(windows))
        g = upsample_multiply(g, channel_sum, sample_max)
    if output_size is not None and tuple(g.shape[-2:]) != tuple(output_size):
        g = F.interpolate(g, size=tuple(output_size), mode="bilinear", align_corners=False)
    # The raw map gets the heatmap's scale back; the normalisations do not depend on it.
    g = unscale(g, shift) if normalize is None else NORMALIZERS[normalize](g)
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
    A heatmap finer than the deepest stage is area-pooled to that stage's grid first.
    ``transform`` ('relu' or 'abs') is applied to each activation first; without one, negative
    activations are refused when ``check`` is on. ``stage_weighting='global'`` with
    ``normalize='standardize'`` is the paper's formula.
    """
    heatmap, activations, output_size = check_extrapolate_args(
        heatmap, activations, output_size, transform, check
    )
    normalize = check_normalize(normalize)
    check_stage_weighting(stage_weighting)
    stages = [reduce_stage(a, transform) for a in activations]
    return chain(heatmap, stages, output_size, stage_weighting, normalize)


def extrapolate_paper(heatmap: torch.Tensor, activations: Sequence[torch.Tensor]) -> torch.Tensor:
    """The original repository's batch-global behaviour, to verify against it.

    As in github.com/szandala/gradual-extrapolation: each stage divides by the max over the whole
    batch, and the normalisation takes mean, std (unbiased), min and max over the whole batch, so
    one image's map depends on its batch-mates. The only departure: where the original divides by
    a non-positive max or a zero std and returns NaN (or stretches a map that is constant up to
    rounding), this returns zeros.
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
    if not map_is_varying(lo, hi):
        return torch.zeros_like(g)
    z = ((g - g.mean()) / g.std()).clamp(-1, 1)
    return (z - z.min()) / (z.max() - z.min())
