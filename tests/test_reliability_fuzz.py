"""Standing reliability suite: a seeded fuzz of gradex.extrapolate on every available backend
against the reference. Random shapes (odd sizes, 1×1 maps, up to four stages), dtypes, layouts,
options and scales from 1e-30 to 1e30, with random, constant, near-constant and dead-stage
inputs. A map is never NaN, a constant input never comes back as stretched noise, and every
backend agrees with the reference."""

import math
import random

import pytest
import torch
from test_kernels import (  # noqa: F401
    ALL_BACKENDS,
    LAYOUTS,
    backend_or_skip,
    make_activation,
    poisoned_outputs,
)

import gradex

CASES = 30  # per backend and dtype: a few seconds each, interpreted Triton included
OPTIONS = [
    ("local", "minmax"),
    ("global", "minmax"),
    ("global", "standardize"),
    ("local", "standardize"),
    ("local", None),
    ("global", None),
]
# Constant stages, with a constant heatmap or one with float32-rounding noise (1 + 1e-7).
CONSTANT_KINDS = ("constant", "near-constant heatmap")
KINDS = ("random", "random", "random", *CONSTANT_KINDS, "dead stage")
# Scales the dtype holds with room for a channel sum (float16 tops out at 65504).
EXPONENTS = {torch.float16: (-3, 3)}


def draw_case(rng: random.Random, dtype, device, generator):
    batch = rng.randint(1, 3)
    heat = (rng.randint(1, 9), rng.randint(1, 9))
    sizes, size = [], heat
    for _ in range(rng.randint(1, 4)):  # deepest first, each at least as large as the last
        size = (size[0] + rng.randint(0, 2 * size[0]), size[1] + rng.randint(0, 2 * size[1]))
        sizes.insert(0, size)
    low, high = EXPONENTS.get(dtype, (-30, 30))
    kind = rng.choice(KINDS)
    acts = []
    for h, w in sizes:
        shape = (batch, rng.randint(1, 9), h, w)
        a = make_activation(shape, rng.choice(LAYOUTS), dtype, device, generator=generator)
        scale = 10.0 ** rng.uniform(low, high)
        acts.append(a.fill_(0.37 * scale) if kind in CONSTANT_KINDS else a * scale)
    heatmap = torch.rand(batch, 1, *heat, generator=generator).to(device)
    heatmap = heatmap * 10.0 ** rng.uniform(-30, 30)
    if kind == "constant":
        heatmap.fill_(0.61)
    elif kind == "near-constant heatmap":
        heatmap = 1 + 1e-7 * torch.randn(batch, 1, *heat, generator=generator).to(device)
    elif kind == "dead stage":
        acts[rng.randrange(len(acts))].zero_()
    output = rng.choice([None, (rng.randint(1, 70), rng.randint(1, 70))])
    return kind, heatmap, acts, output


@pytest.mark.parametrize("backend, device, dtype", ALL_BACKENDS)
def test_fuzzed_inputs_give_finite_maps_that_agree_with_the_reference(backend, device, dtype):
    backend_or_skip(backend, device)
    rng = random.Random(f"{backend}-{device}-{dtype}")
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    for case in range(CASES):
        kind, heatmap, acts, output = draw_case(rng, dtype, device, generator)
        weighting, normalize = rng.choice(OPTIONS)
        args = dict(normalize=normalize, stage_weighting=weighting)
        what = f"case {case}: {kind}, {weighting}/{normalize}, output {output}"
        got = gradex.extrapolate(heatmap, acts, output, backend=backend, **args).cpu()
        expected = gradex.extrapolate(
            heatmap.cpu(), [a.cpu() for a in acts], output, backend="reference", **args
        )
        assert got.shape == expected.shape, what
        assert not got.isnan().any(), what
        if (kind in CONSTANT_KINDS or kind == "dead stage") and normalize:
            # Nothing to localise: zeros, never stretched noise. (A dead stage zeroes the map.)
            assert (got == 0).all(), what
            continue
        if normalize:
            assert got.amin() >= 0 and got.amax() <= 1, what
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=what)
        else:
            assert torch.isfinite(got).all(), what
            top = expected.abs().amax().item()
            if top > 0 and math.isfinite(top):
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * top, msg=what)
