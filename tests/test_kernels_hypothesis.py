"""Property-based: the C++ CPU kernels equal the reference on any shape, stride, dtype, option."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradex import _ext, ops, reference

pytestmark = pytest.mark.skipif(not _ext.cpu_availability()[0], reason="gradex._C not built")

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@st.composite
def activations(draw):
    b = draw(st.integers(1, 4))
    c = draw(st.integers(1, 70))
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    # A random permutation of the dims gives every memory order; a random step slices.
    order = draw(st.permutations([0, 1, 2, 3]))
    steps = [draw(st.integers(1, 2)) for _ in range(4)]
    big = [size * step for size, step in zip((b, c, h, w), steps, strict=True)]
    base = torch.randn([big[d] for d in order], generator=generator).to(dtype)
    inverse = [order.index(d) for d in range(4)]
    a = base.permute(inverse)[:: steps[0], :: steps[1], :: steps[2], :: steps[3]]
    assert a.shape == (b, c, h, w)
    return a


@settings(max_examples=80, deadline=None)
@given(a=activations(), transform=st.sampled_from([None, "relu", "abs"]))
def test_cpu_reduce_stage_equals_reference(a, transform):
    sums, maxima = torch.ops.gradex.reduce_stage(a, _ext.TRANSFORM_CODES[transform], 1, 1)
    stage, expected = reference.Stage(sums, maxima), reference.reduce_stage(a, transform)
    torch.testing.assert_close(stage.channel_sum(), expected.channel_sum(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(stage.sample_max(), expected.sample_max(), rtol=0, atol=0)


side = st.integers(1, 20)


@settings(max_examples=80, deadline=None)
@given(
    b=st.integers(1, 3),
    heat=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    sizes=st.lists(st.tuples(side, side), max_size=4),
    output=st.one_of(st.none(), st.tuples(st.integers(1, 60), st.integers(1, 60))),
    weighting=st.sampled_from(["local", "global"]),
    normalize=st.sampled_from(["minmax", "standardize", None]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cpu_chain_equals_reference(b, heat, sizes, output, weighting, normalize, seed):
    sizes = sorted(sizes, reverse=True)  # shallow to deep
    generator = torch.Generator().manual_seed(seed)
    heatmap = torch.rand(b, 1, *heat, generator=generator)
    stages = [reference.reduce_stage(torch.rand(b, 3, h, w, generator=generator)) for h, w in sizes]
    backend = ops.resolve_backend("cpu", torch.device("cpu"))
    out = backend.chain(heatmap, stages, output, weighting, normalize)
    expected = reference.chain(heatmap, stages, output, weighting, normalize)
    scale = expected.abs().amax().item()
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5 * max(scale, 1e-30))
