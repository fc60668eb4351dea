"""Every fused backend against the reference: odd shapes, layouts, dtypes, dead stages, poison.

Backends run here: 'cpu' (the C++ kernels), 'triton' on CPU tensors (TRITON_INTERPRET=1, set by
conftest; fp32/fp16 only, as the interpreter has no bf16), and 'cuda' / 'triton' on a GPU (marked
needs_cuda). Outputs are poisoned: with deterministic mode's fill_uninitialized_memory, every
tensor the ops allocate starts as NaN, so an element a kernel forgot to write fails the test.
"""

import pytest
import torch
import torch.nn.functional as F

from gradex import ops, reference

# (B, C, H, W): 1×1 planes, odd sizes, 113×97, one channel and 2048, batch 1 and 64.
SHAPES = [
    (1, 1, 1, 1),
    (2, 3, 7, 9),
    (3, 5, 113, 97),
    (1, 2048, 7, 7),
    (64, 24, 7, 9),
    (4, 513, 14, 14),
    (2, 7, 33, 1),
]
LAYOUTS = ["nchw", "channels_last", "sliced", "strided_width"]
TRANSFORMS = [None, "relu", "abs"]

# What the kernels may differ from the reference by, per activation dtype. The channel sums are
# fp32 in every backend (a half input converts exactly), so only the summation order differs;
# the maps are compared after the same chain. Half-precision inputs are also checked against
# the fp32 reference on the fp32 original (the last column: what bf16/fp16 activations cost).
TOLERANCE = {  # dtype: (rtol, atol) same-dtype reference, (rtol, atol) fp32 original
    torch.float32: ((2e-5, 2e-5), (2e-5, 2e-5)),
    torch.float16: ((2e-5, 2e-5), (1e-2, 1e-2)),
    torch.bfloat16: ((2e-5, 2e-5), (5e-2, 5e-2)),
}


def backend_params(dtypes_on_cpu):
    """(backend, device, dtype) triples; the GPU ones carry the needs_cuda mark."""
    params = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        if dtype in dtypes_on_cpu["cpu"]:
            params.append(pytest.param("cpu", "cpu", dtype, id=f"cpu-{str(dtype)[6:]}"))
        if dtype in dtypes_on_cpu["triton"]:
            params.append(
                pytest.param("triton", "cpu", dtype, id=f"triton-interp-{str(dtype)[6:]}")
            )
        for backend in ("cuda", "triton"):
            params.append(
                pytest.param(
                    backend,
                    "cuda",
                    dtype,
                    id=f"{backend}-gpu-{str(dtype)[6:]}",
                    marks=pytest.mark.needs_cuda,
                )
            )
    return params


ALL_BACKENDS = backend_params(
    {
        "cpu": (torch.float32, torch.float16, torch.bfloat16),
        "triton": (torch.float32, torch.float16),
    }
)


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Fill every freshly allocated tensor with NaN (ints with their max) while a test runs."""
    import torch.utils.deterministic

    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def backend_or_skip(name, device):
    try:
        return ops.resolve_backend(name, torch.device(device))
    except (RuntimeError, ValueError) as error:
        if name == "triton" and device == "cpu":
            pytest.skip(f"triton on CPU tensors needs TRITON_INTERPRET=1: {error}")
        raise  # a compiled backend that should be here and is not is a failure


def make_activation(shape, layout, dtype, device, signed=False, generator=None):
    """Random activation of `shape` in `layout`; values in (0, 1], or N(0, 1) when signed."""
    b, c, h, w = shape
    draw = torch.randn if signed else torch.rand

    def fresh(*size):  # converted before any slicing: .to() would make a view contiguous
        return draw(*size, generator=generator).to(dtype=dtype, device=device)

    if layout == "nchw":
        a = fresh(b, c, h, w)
    elif layout == "channels_last":
        a = fresh(b, c, h, w).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # every other channel of a cropped, larger tensor
        a = fresh(b, 2 * c + 1, h + 2, w + 3)[:, 1::2, 1 : h + 1, 2 : w + 2]
    elif layout == "strided_width":  # channels_last, then every other column
        a = fresh(b, c, h, 2 * w).contiguous(memory_format=torch.channels_last)[..., ::2]
    else:
        raise ValueError(layout)
    assert a.shape == shape
    if layout in ("sliced", "strided_width") and a.numel() > 1:
        assert not a.is_contiguous() and not a.is_contiguous(memory_format=torch.channels_last)
    return a


def sum_tolerance(channels):
    # fp32 sums of `channels` terms in another order: error grows about like sqrt(channels).
    return {"rtol": 2e-5, "atol": 2e-6 * max(1.0, channels**0.5)}


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reduce_stage_matches_reference(backend_name, device, dtype, layout, shape):
    backend = backend_or_skip(backend_name, device)
    for transform in TRANSFORMS:
        a = make_activation(shape, layout, dtype, device, signed=transform is not None)
        before = a.clone()
        channel_sum, sample_max = backend.reduce_stage(a, transform)
        expected_sum, expected_max = reference.reduce_stage(a, transform)
        assert channel_sum.shape == (shape[0], 1, *shape[2:]) and sample_max.shape == (shape[0],)
        assert channel_sum.dtype == sample_max.dtype == torch.float32
        torch.testing.assert_close(channel_sum, expected_sum, **sum_tolerance(shape[1]))
        torch.testing.assert_close(sample_max, expected_max, rtol=0, atol=0)
        assert torch.equal(a, before)  # the caller's activation is untouched


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
def test_reduce_stage_signed_stage_without_transform_reports_max_clamped_at_zero(
    backend_name, device, dtype
):
    backend = backend_or_skip(backend_name, device)
    a = -torch.rand(3, 4, 5, 6).to(dtype=dtype, device=device)  # all negative: a dead stage
    a[1] = a[1].abs()  # sample 1 fires
    channel_sum, sample_max = backend.reduce_stage(a, None)
    expected_sum, expected_max = reference.reduce_stage(a, None)
    torch.testing.assert_close(channel_sum, expected_sum, **sum_tolerance(4))
    assert sample_max[0] == 0 and sample_max[2] == 0 and sample_max[1] > 0
    torch.testing.assert_close(sample_max, expected_max, rtol=0, atol=0)


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_reduce_stage_marks_a_stage_holding_nan_or_inf_dead(backend_name, device, dtype, layout):
    backend = backend_or_skip(backend_name, device)
    a = make_activation((3, 40, 9, 7), layout, dtype, device)
    a[0, 17, 4, 3] = float("nan")
    a[2, 39, 8, 6] = float("inf")
    _, sample_max = backend.reduce_stage(a, None)
    assert torch.isnan(sample_max[0]) and torch.isinf(sample_max[2])
    assert torch.isfinite(sample_max[1]) and sample_max[1] > 0
    # ... and the step turns those samples into zeros, not NaN.
    stages = [backend.reduce_stage(a, None)]
    out = reference.chain(
        torch.rand(3, 1, 2, 2, device=device),
        stages,
        None,
        True,
        step=backend.step,
        finish=backend.normalize,
    )
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[2] == 0).all() and out[1].max() == 1


STEP_SHAPES = [  # (B, h, w) -> (H, W), including identity, downsampling and 1×1
    ((1, 1, 1), (1, 1)),
    ((2, 7, 7), (14, 14)),
    ((3, 7, 9), (113, 97)),
    ((2, 13, 11), (13, 11)),
    ((2, 20, 30), (7, 9)),
    ((64, 7, 7), (56, 56)),
]


@pytest.mark.parametrize(
    "backend_name, device, dtype", [p for p in ALL_BACKENDS if "float32" in p.id]
)
@pytest.mark.parametrize("sizes", STEP_SHAPES, ids=str)
def test_upsample_multiply_matches_reference(backend_name, device, dtype, sizes):
    backend = backend_or_skip(backend_name, device)
    (b, h, w), (H, W) = sizes
    g = torch.rand(b, 1, h, w, device=device)
    channel_sum = torch.rand(b, 1, H, W, device=device) * 10
    sample_max = torch.rand(b, device=device) + 0.5
    if b > 1:  # dead stages: zero max, NaN max (a NaN stage), +Inf max (an overflow)
        sample_max[0] = 0
    if b > 2:
        sample_max[1], sample_max[2] = float("nan"), float("inf")
    out = backend.step(g, channel_sum, sample_max)
    expected = reference.upsample_multiply(g, channel_sum, sample_max)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if b > 1:
        assert (out[0] == 0).all()


@pytest.mark.parametrize(
    "backend_name, device, dtype", [p for p in ALL_BACKENDS if "float32" in p.id]
)
def test_upsample_multiply_accepts_non_contiguous_maps(backend_name, device, dtype):
    backend = backend_or_skip(backend_name, device)
    g = torch.rand(3, 1, 10, 14, device=device)[..., ::2]
    channel_sum = torch.rand(3, 1, 30, 40, device=device)[:, :, 3:24, 1:38]
    sample_max = torch.rand(6, device=device)[::2] + 0.1
    torch.testing.assert_close(
        backend.step(g, channel_sum, sample_max),
        reference.upsample_multiply(g, channel_sum, sample_max),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "backend_name, device, dtype", [p for p in ALL_BACKENDS if "float32" in p.id]
)
@pytest.mark.parametrize("size", [(1, 1), (1, 2), (7, 9), (113, 97), (224, 224)], ids=str)
def test_normalize_maps_matches_reference(backend_name, device, dtype, size):
    backend = backend_or_skip(backend_name, device)
    g = torch.rand(5, 1, *size, device=device) ** 3 * 50
    g[1] = 3.0  # constant: zeros
    g[2] = 0.0  # dead: zeros
    g[3, 0, 0, 0] = float("nan")  # NaN: zeros, as the reference gives
    out = backend.normalize(g)
    expected = reference.normalize_maps(g)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-6)
    assert (out[1:4] == 0).all()
    if size[0] * size[1] > 1:
        assert out[0].min() == 0 and out[0].max() == 1


# The defaults, and the paper's formula (which runs the fused standardise-and-clip kernel).
CHAIN_OPTIONS = {
    "defaults": {},
    "paper": {"stage_weighting": "global", "normalize": "standardize"},
}


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("options", list(CHAIN_OPTIONS))
def test_whole_chain_matches_reference(backend_name, device, dtype, layout, batch, options):
    options = CHAIN_OPTIONS[options]
    backend_or_skip(backend_name, device)
    stage_shapes = [
        (batch, 16, 56, 56),
        (batch, 24, 28, 28),
        (batch, 40, 14, 14),
        (batch, 80, 7, 7),
    ]
    originals = [make_activation(s, layout, torch.float32, device) for s in stage_shapes]
    acts = [a.to(dtype) for a in originals]
    heatmap = torch.rand(batch, 1, 7, 7, device=device)
    out = ops.extrapolate(heatmap, acts, (112, 112), backend=backend_name, **options)
    same_dtype, fp32_original = TOLERANCE[dtype]
    expected = reference.extrapolate(heatmap, acts, (112, 112), **options)
    rtol, atol = same_dtype
    torch.testing.assert_close(out, expected, rtol=rtol, atol=max(atol, 1e-5))
    rtol, atol = fp32_original
    torch.testing.assert_close(
        out, reference.extrapolate(heatmap, originals, (112, 112), **options), rtol=rtol, atol=atol
    )
    assert out.device.type == device and out.dtype == torch.float32


@pytest.mark.parametrize(
    "backend_name, device, dtype", [p for p in ALL_BACKENDS if "float32" in p.id]
)
def test_empty_batch_gives_empty_results(backend_name, device, dtype):
    backend = backend_or_skip(backend_name, device)
    channel_sum, sample_max = backend.reduce_stage(torch.rand(0, 3, 5, 5, device=device), None)
    assert channel_sum.shape == (0, 1, 5, 5) and sample_max.shape == (0,)
    assert backend.step(torch.rand(0, 1, 2, 2, device=device), channel_sum, sample_max).shape == (
        0,
        1,
        5,
        5,
    )
    assert backend.normalize(torch.rand(0, 1, 4, 4, device=device)).shape == (0, 1, 4, 4)


def test_compiled_ops_refuse_bad_arguments_naming_them():
    backend_or_skip("cpu", "cpu")
    with pytest.raises(RuntimeError, match="activation must be float32, float16 or bfloat16"):
        torch.ops.gradex.reduce_stage(torch.ones(1, 2, 3, 3, dtype=torch.int32), 0)
    with pytest.raises(RuntimeError, match=r"activation must be \(B,C,H,W\)"):
        torch.ops.gradex.reduce_stage(torch.rand(2, 3, 3), 0)
    with pytest.raises(RuntimeError, match="transform must be 0"):
        torch.ops.gradex.reduce_stage(torch.rand(1, 2, 3, 3), 7)
    with pytest.raises(RuntimeError, match="must share the batch size"):
        torch.ops.gradex.upsample_multiply(
            torch.rand(2, 1, 2, 2), torch.rand(3, 1, 4, 4), torch.rand(3)
        )
    with pytest.raises(RuntimeError, match="g must be a"):
        torch.ops.gradex.normalize_maps(torch.rand(2, 3, 4, 4))


def test_resize_semantics_match_torch_interpolate_exactly_on_cpu():
    # The taps are ATen's: identical to F.interpolate when the multiply is by S/M = 1.
    backend = backend_or_skip("cpu", "cpu")
    g = torch.rand(2, 1, 7, 9)
    ones = torch.ones(2, 1, 31, 23)
    out = backend.step(g, ones, torch.ones(2))
    expected = F.interpolate(g, size=(31, 23), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
