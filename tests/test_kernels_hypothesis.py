"""Property-based: the C++ CPU kernels equal the reference on any shape, stride and dtype."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradex import _ext, reference

pytestmark = pytest.mark.skipif(not _ext.cpu_availability()[0], reason="gradex._C not built")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    channel_sum, sample_max = torch.ops.gradex.reduce_stage(a, _ext.TRANSFORM_CODES[transform])
    expected_sum, expected_max = reference.reduce_stage(a, transform)
    torch.testing.assert_close(channel_sum, expected_sum, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(sample_max, expected_max, rtol=0, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 3),
    src=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    dst=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    seed=st.integers(0, 2**31 - 1),
)
def test_cpu_step_and_normalize_equal_reference(b, src, dst, seed):
    generator = torch.Generator().manual_seed(seed)
    g = torch.rand(b, 1, *src, generator=generator)
    channel_sum = torch.rand(b, 1, *dst, generator=generator)
    sample_max = torch.rand(b, generator=generator) + 0.05
    out = torch.ops.gradex.upsample_multiply(g, channel_sum, sample_max)
    torch.testing.assert_close(
        out, reference.upsample_multiply(g, channel_sum, sample_max), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        torch.ops.gradex.normalize_maps(out), reference.normalize_maps(out), rtol=1e-5, atol=2e-6
    )
