"""D8: finite inputs never overflow inside the chain. GE does not depend on the scale of the
heatmap or of the activations, so scaling them must not change the map (exactly, for powers of
two), on every backend; before the fix a 3e38 heatmap pixel gave a NaN pixel and the paper's
options gave an all-zero map at heatmap and activations ×1e20."""

import pytest
import torch
from conftest import random_stages
from test_kernels import FP32_BACKENDS, backend_or_skip, poisoned_outputs  # noqa: F401

import gradex
from gradex import reference

EVERY_BACKEND = [pytest.param("reference", "cpu", torch.float32, id="reference"), *FP32_BACKENDS]
OPTIONS = [
    {},
    {"stage_weighting": "global", "normalize": "standardize"},
    {"stage_weighting": "global", "normalize": "minmax"},
    {"stage_weighting": "local", "normalize": None},
    {"stage_weighting": "global", "normalize": None},
]
SIZES = [(56, 56), (28, 28), (14, 14)]


def run(backend, device, heatmap, acts, **options):
    return gradex.extrapolate(
        heatmap.to(device), [a.to(device) for a in acts], 112, backend=backend, **options
    ).cpu()


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_the_map_does_not_depend_on_the_scale_of_its_inputs(backend, device, dtype, options):
    backend_or_skip(backend, device)
    heatmap = torch.rand(2, 1, 7, 7)
    acts = random_stages(2, SIZES)
    base = run(backend, device, heatmap, acts, **options)
    raw = options.get("normalize", "minmax") is None
    assert torch.isfinite(base).all() and base.abs().amax() > 0
    # Powers of two change no rounding: bit-identical maps.
    # (Kept clear of subnormals, which a power of two cannot scale exactly.)
    for h_exp, a_exp in ((100, -100), (-100, 90), (126, 120), (-90, -100)):
        out = run(backend, device, heatmap * 2.0**h_exp, [a * 2.0**a_exp for a in acts], **options)
        expected = base * 2.0**h_exp if raw else base
        assert torch.equal(out, expected), (h_exp, a_exp)
    # Any other scale: the same map up to the rounding of the scaled inputs.
    for h_scale, a_scale in ((1e20, 1e20), (1e-30, 1e30), (3e37, 1e-30)):
        out = run(backend, device, heatmap * h_scale, [a * a_scale for a in acts], **options)
        expected = base * h_scale if raw else base
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6 * expected.abs().amax())


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
@pytest.mark.parametrize("options", OPTIONS[:3], ids=str)
def test_a_heatmap_pixel_at_the_top_of_float32_gives_a_finite_map(backend, device, dtype, options):
    backend_or_skip(backend, device)
    heatmap = torch.rand(2, 1, 7, 7)
    heatmap[0, 0, 3, 3] = 3e38
    heatmap[1, 0, 0, 6] = torch.finfo(torch.float32).max
    out = run(backend, device, heatmap, random_stages(2, SIZES), **options)
    assert torch.isfinite(out).all()
    assert out.amin() == 0 and out.amax() == 1
    # The hot pixel dominates: the map peaks where it is (cell (3, 3) of 7 is 48..63 of 112),
    # and the cells far from it are near the bottom.
    assert out[0, 0, 48:64, 48:64].amax() == 1
    assert out[0, 0, :16, :16].amax() < 0.5


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
def test_the_raw_map_overflows_only_where_its_true_value_does(backend, device, dtype):
    backend_or_skip(backend, device)
    heatmap = torch.rand(1, 1, 7, 7) + 0.5
    acts = random_stages(1, SIZES)
    base = run(backend, device, heatmap, acts, normalize=None)
    huge = run(backend, device, heatmap * 2.0**127, acts, normalize=None)
    # The raw map is the heatmap's scale times S/M products of order 1..C: 2^127 times it
    # overflows where the product exceeds 2, and nowhere else.
    should_overflow = base * 2.0**127 > torch.finfo(torch.float32).max
    assert torch.equal(torch.isinf(huge), should_overflow)
    assert torch.equal(huge[~should_overflow], base[~should_overflow] * 2.0**127)


def test_a_channel_sum_that_would_overflow_float32_is_refused():
    heatmap = torch.rand(1, 1, 7, 7)
    big = torch.full((1, 512, 14, 14), 1e36)
    with pytest.raises(ValueError, match=r"activations\[0\] is too large for its channel sum"):
        gradex.extrapolate(heatmap, [big])
    with pytest.raises(ValueError, match=r"activations\[0\] is too large"):
        gradex.extrapolate(heatmap, [-big], transform="abs")
    # Negative values that relu drops cannot overflow the sum.
    assert torch.isfinite(gradex.extrapolate(heatmap, [-big], transform="relu")).all()
    # Just below the line: 512 channels of 6e35 sum to 3.1e38.
    assert torch.isfinite(gradex.extrapolate(heatmap, [big * 0.6])).all()


def test_the_shift_is_read_from_the_exponent():
    values = torch.tensor([1.0, 1.5, 2.0, 0.75, 3e38, 1e-40, 0.0, 2.0**-126])
    shift = reference.pow2_shift(values)
    assert shift.tolist() == [0, 0, -1, 1, -126, 127, 127, 126]
    scaled = values * reference.pow2(shift)
    normal = values >= 2.0**-126
    assert ((scaled[normal] >= 1) & (scaled[normal] < 4)).all()
    assert torch.equal(reference.unscale(scaled, shift), values)
