"""Every fused backend against the reference: odd shapes, layouts, dtypes, partials, dead stages,
every option of the chain, poisoned outputs.

Backends run here: 'cpu' (the C++ kernels), 'triton' on CPU tensors (TRITON_INTERPRET=1, set by
conftest; no bf16, which the interpreter lacks), and 'cuda' / 'triton' on a GPU (marked
needs_cuda). Outputs are poisoned: with deterministic mode's fill_uninitialized_memory, every
tensor the ops allocate starts as NaN, so an element a kernel forgot to write fails the test.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_stages

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
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# What the kernels may differ from the reference by, per activation dtype. The channel sums are
# fp32 in every backend (a half input converts exactly), so only the summation order differs;
# the maps are compared after the same chain. Other dtypes are also checked against the fp32
# reference on the fp32 original (the last column: what bf16/fp16 activations cost).
TOLERANCE = {  # dtype: (rtol, atol) same-dtype reference, (rtol, atol) fp32 original
    torch.float32: ((2e-5, 2e-5), (2e-5, 2e-5)),
    torch.float16: ((2e-5, 2e-5), (1e-2, 1e-2)),
    torch.bfloat16: ((2e-5, 2e-5), (5e-2, 5e-2)),
    torch.float64: ((2e-5, 2e-5), (2e-5, 2e-5)),
}


def _short(dtype):
    return str(dtype)[6:]


def backend_params(dtypes_on_cpu):
    """(backend, device, dtype) triples; the GPU ones carry the needs_cuda mark."""
    params = []
    for dtype in DTYPES:
        if dtype in dtypes_on_cpu["cpu"]:
            params.append(pytest.param("cpu", "cpu", dtype, id=f"cpu-{_short(dtype)}"))
        if dtype in dtypes_on_cpu["triton"]:
            params.append(pytest.param("triton", "cpu", dtype, id=f"triton-interp-{_short(dtype)}"))
        for backend in ("cuda", "triton"):
            params.append(
                pytest.param(
                    backend,
                    "cuda",
                    dtype,
                    id=f"{backend}-gpu-{_short(dtype)}",
                    marks=pytest.mark.needs_cuda,
                )
            )
    return params


ALL_BACKENDS = backend_params(
    {"cpu": DTYPES, "triton": (torch.float32, torch.float16, torch.float64)}
)
FP32_BACKENDS = [p for p in ALL_BACKENDS if p.values[2] == torch.float32]


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
        stage = backend.reduce_stage(a, transform)
        expected = reference.reduce_stage(a, transform)
        assert stage.sums.dim() == 5 and stage.sums.shape[1:] == (shape[0], 1, *shape[2:])
        assert stage.maxima.dim() == 2 and stage.maxima.shape[0] == shape[0]
        assert stage.sums.dtype == stage.maxima.dtype == torch.float32
        torch.testing.assert_close(
            stage.channel_sum(), expected.channel_sum(), **sum_tolerance(shape[1])
        )
        torch.testing.assert_close(stage.sample_max(), expected.sample_max(), rtol=0, atol=0)
        assert torch.equal(a, before)  # the caller's activation is untouched


# (splits, chunks) asked of the op directly: every block's slot written, whatever the partition,
# including more splits than channels and more chunks than positions (empty blocks).
PARTITIONS = [(1, 1), (3, 1), (1, 4), (5, 3), (40, 2), (1, 110)]


@pytest.mark.parametrize("backend_name, device, dtype", FP32_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("partition", PARTITIONS, ids=str)
def test_reduce_stage_partials_add_up_for_any_partition(
    backend_name, device, dtype, layout, partition
):
    backend_or_skip(backend_name, device)
    namespace = torch.ops.gradex_triton if backend_name == "triton" else torch.ops.gradex
    splits, chunks = partition
    a = make_activation((3, 37, 9, 11), layout, dtype, device)
    a[1, 20, 4, 5] = float("nan")  # one sample's NaN lands in one block's slot
    sums, maxima = namespace.reduce_stage(a, 0, splits, chunks)
    assert sums.shape == (splits, 3, 1, 9, 11) and maxima.shape == (3, splits * chunks)
    stage = reference.Stage(sums, maxima)
    expected = reference.reduce_stage(a, None)
    torch.testing.assert_close(
        stage.channel_sum(), expected.channel_sum(), equal_nan=True, **sum_tolerance(37)
    )
    torch.testing.assert_close(
        stage.sample_max(), expected.sample_max(), rtol=0, atol=0, equal_nan=True
    )
    assert torch.isnan(stage.sample_max()[1])


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
def test_reduce_stage_signed_stage_without_transform_reports_max_clamped_at_zero(
    backend_name, device, dtype
):
    backend = backend_or_skip(backend_name, device)
    a = -torch.rand(3, 4, 5, 6).to(dtype=dtype, device=device)  # all negative: a dead stage
    a[1] = a[1].abs()  # sample 1 fires
    stage = backend.reduce_stage(a, None)
    expected = reference.reduce_stage(a, None)
    torch.testing.assert_close(stage.channel_sum(), expected.channel_sum(), **sum_tolerance(4))
    sample_max = stage.sample_max()
    assert sample_max[0] == 0 and sample_max[2] == 0 and sample_max[1] > 0
    torch.testing.assert_close(sample_max, expected.sample_max(), rtol=0, atol=0)


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stage_weighting", ["local", "global"])
def test_a_stage_holding_nan_or_inf_is_dead(backend_name, device, dtype, layout, stage_weighting):
    backend = backend_or_skip(backend_name, device)
    a = make_activation((3, 40, 9, 7), layout, dtype, device)
    a[0, 17, 4, 3] = float("nan")
    a[2, 39, 8, 6] = float("inf")
    stage = backend.reduce_stage(a, None)
    sample_max = stage.sample_max()
    assert torch.isnan(sample_max[0]) and torch.isinf(sample_max[2])
    assert torch.isfinite(sample_max[1]) and sample_max[1] > 0
    # ... and the chain turns those samples into zeros, not NaN.
    heatmap = torch.rand(3, 1, 2, 2, device=device)
    out = backend.chain(heatmap, [stage], None, stage_weighting, "minmax")
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[2] == 0).all() and out[1].max() == 1


def split_into_parts(stage: reference.Stage, parts: int, maxima: int, generator):
    """The same stage as `parts` random partial sums and `maxima` partial maxima."""
    channel_sum, sample_max = stage.channel_sum(), stage.sample_max()
    weights = torch.rand(parts, *channel_sum.shape, generator=generator).to(channel_sum.device)
    sums = channel_sum * weights / weights.sum(0)
    sums[-1] = channel_sum - sums[:-1].sum(0)  # the parts add up to S up to rounding
    spread = torch.rand(channel_sum.shape[0], maxima, generator=generator).to(channel_sum.device)
    partial_maxima = sample_max[:, None] * spread
    holder = int(torch.randint(maxima, (1,), generator=generator))
    partial_maxima[:, holder] = sample_max  # one part holds the max
    return reference.Stage(sums.contiguous(), partial_maxima.contiguous())


# (heatmap size, stage sizes shallow to deep, output size or None): no stage, one stage, five,
# 1×1 maps, upsampling, downsampling to the output, and stages coarser than the heatmap.
CHAINS = [
    ((7, 7), [], (7, 7)),
    ((3, 5), [], (31, 17)),
    ((1, 1), [(1, 1)], None),
    ((1, 1), [(6, 1)], (9, 2)),
    ((2, 3), [(11, 13)], None),
    ((7, 9), [(57, 61), (28, 30), (14, 15), (13, 15), (7, 9)], (113, 97)),
    ((7, 7), [(56, 56), (28, 28), (14, 14)], (224, 224)),
    ((8, 8), [(40, 40), (10, 10)], (20, 20)),
    ((9, 9), [(4, 4)], (12, 12)),
]
OPTIONS = [
    (weighting, normalize)
    for weighting in ("local", "global")
    for normalize in ("minmax", "standardize", None)
]


@pytest.mark.parametrize("backend_name, device, dtype", FP32_BACKENDS)
@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: f"{c[0]}->{len(c[1])}->{c[2]}")
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o[0]}-{o[1]}")
def test_chain_matches_reference(backend_name, device, dtype, chain, options):
    backend = backend_or_skip(backend_name, device)
    heat, sizes, output = chain
    weighting, normalize = options
    generator = torch.Generator().manual_seed(len(sizes) * 100 + heat[0])
    batch = 3
    heatmap = torch.rand(batch, 1, *heat, generator=generator).to(device)
    acts = [a.to(device) for a in random_stages(batch, sizes, generator=generator)]
    if sizes:
        acts[-1][1] = 0.0  # sample 1: its deepest stage is dead
    stages = [reference.reduce_stage(a) for a in acts]
    # The chain reads partial sums and maxima as any reduction leaves them.
    stages = [split_into_parts(s, 1 + k % 3, 1 + k % 4, generator) for k, s in enumerate(stages)]
    out = backend.chain(heatmap, stages, output, weighting, normalize)
    expected = reference.chain(heatmap, stages, output, weighting, normalize)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert out.device.type == device
    scale = expected.abs().amax().clamp_min(1e-30).item()
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5 * scale)
    if sizes and normalize is not None:
        assert (out[1] == 0).all()


@pytest.mark.parametrize("backend_name, device, dtype", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("options", ["defaults", "paper"])
def test_whole_chain_matches_reference(backend_name, device, dtype, layout, batch, options):
    options = {} if options == "defaults" else dict(reference.PAPER_FORMULA)
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


@pytest.mark.parametrize("backend_name, device, dtype", FP32_BACKENDS)
def test_chains_longer_than_one_call_are_split(backend_name, device, dtype):
    backend_or_skip(backend_name, device)
    count = ops.MAX_STAGES_PER_CALL + 4
    sizes = [(40 - k, 33 - k) for k in range(count)]
    acts = random_stages(2, sizes, channels=(2, 3))
    acts = [a.to(device) for a in acts]
    heatmap = torch.rand(2, 1, 5, 4, device=device)
    for weighting, normalize in (("local", "minmax"), ("global", None)):
        out = ops.extrapolate(
            heatmap,
            acts,
            (50, 41),
            normalize=normalize,
            backend=backend_name,
            stage_weighting=weighting,
        )
        expected = reference.extrapolate(
            heatmap, acts, (50, 41), normalize=normalize, stage_weighting=weighting
        )
        scale = expected.abs().amax().item()
        torch.testing.assert_close(out, expected, rtol=5e-5, atol=5e-5 * scale)


@pytest.mark.parametrize("backend_name, device, dtype", FP32_BACKENDS)
def test_empty_batch_gives_empty_results(backend_name, device, dtype):
    backend = backend_or_skip(backend_name, device)
    stage = backend.reduce_stage(torch.rand(0, 3, 5, 5, device=device), None)
    assert stage.sums.shape[1:] == (0, 1, 5, 5) and stage.maxima.shape[0] == 0
    heatmap = torch.rand(0, 1, 2, 2, device=device)
    assert backend.chain(heatmap, [stage], (7, 6), "local", "minmax").shape == (0, 1, 7, 6)
    assert backend.chain(heatmap, [], (4, 4), "global", "standardize").shape == (0, 1, 4, 4)


@pytest.mark.parametrize("backend_name, device, dtype", FP32_BACKENDS)
@pytest.mark.parametrize("sizes", [((7, 9), (31, 23)), ((13, 11), (13, 11)), ((20, 30), (7, 9))])
def test_resize_semantics_match_torch_interpolate_exactly(backend_name, device, dtype, sizes):
    # The taps are ATen's: with no stage and no normalisation the chain is F.interpolate.
    backend = backend_or_skip(backend_name, device)
    source, target = sizes
    g = torch.rand(2, 1, *source, device=device)
    out = backend.chain(g, [], target, "global", None)
    expected = F.interpolate(g, size=target, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend_name", ["cpu", "triton"])
def test_fused_ops_refuse_bad_arguments_naming_them(backend_name):
    backend_or_skip(backend_name, "cpu")
    op = torch.ops.gradex_triton if backend_name == "triton" else torch.ops.gradex
    with pytest.raises(RuntimeError, match="activation must be float32, float16, bfloat16 or"):
        op.reduce_stage(torch.ones(1, 2, 3, 3, dtype=torch.int32), 0, 1, 1)
    with pytest.raises(RuntimeError, match=r"activation must be \(B,C,H,W\)"):
        op.reduce_stage(torch.rand(2, 3, 3), 0, 1, 1)
    with pytest.raises(RuntimeError, match="transform must be 0"):
        op.reduce_stage(torch.rand(1, 2, 3, 3), 7, 1, 1)
    with pytest.raises(RuntimeError, match="splits and chunks must be >= 1"):
        op.reduce_stage(torch.rand(1, 2, 3, 3), 0, 0, 1)
    sums, maxima = op.reduce_stage(torch.rand(2, 2, 4, 4), 0, 1, 1)
    heatmap = torch.rand(2, 1, 2, 2)
    with pytest.raises(RuntimeError, match="heatmap must be a"):
        op.extrapolate_chain(heatmap.double(), [sums], [maxima], [1, 1], [4, 4], True, 1)
    with pytest.raises(RuntimeError, match=r"sums\[0\] must be \(n,B,1,H,W\)"):
        op.extrapolate_chain(heatmap, [sums[0]], [maxima], [1, 1], [4, 4], True, 1)
    with pytest.raises(RuntimeError, match=r"maxima\[0\] must be \(B,m\)"):
        op.extrapolate_chain(heatmap, [sums], [maxima[:1]], [1, 1], [4, 4], True, 1)
    with pytest.raises(RuntimeError, match="one entry per stage"):
        op.extrapolate_chain(heatmap, [sums], [], [1, 1], [4, 4], True, 1)
    with pytest.raises(RuntimeError, match="windows must be two positive ints"):
        op.extrapolate_chain(heatmap, [sums], [maxima], [0, 1], [4, 4], True, 1)
    with pytest.raises(RuntimeError, match="output_size must be two positive ints"):
        op.extrapolate_chain(heatmap, [sums], [maxima], [1, 1], [0, 4], True, 1)
    with pytest.raises(RuntimeError, match="normalize must be 0"):
        op.extrapolate_chain(heatmap, [sums], [maxima], [1, 1], [4, 4], True, 3)
