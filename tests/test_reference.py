"""The oracle itself: hand-computed cases, the paper's batch-global variant, bad input."""

import numpy as np
import pytest
import torch
from conftest import random_stages
from hypothesis import given, settings
from hypothesis import strategies as st

from gradex import reference


def bilinear_numpy(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """align_corners=False bilinear resize, written out from its definition."""
    in_h, in_w = image.shape
    out = np.empty((out_h, out_w))
    for y in range(out_h):
        sy = max((y + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


def normalize_numpy(g: np.ndarray) -> np.ndarray:
    z = np.clip((g - g.mean()) / g.std(ddof=1), -1, 1)
    return (z - z.min()) / (z.max() - z.min())


PAPER = {"stage_weighting": "global", "normalize": "standardize"}


def test_hand_computed_single_stage_paper_formula():
    heatmap = torch.full((1, 1, 1, 1), 2.0)
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    # S = [[1,3],[4,4]], M = 4, g = 2 everywhere: g * S / M = [[0.5,1.5],[2,2]]
    raw = reference.extrapolate(heatmap, [a], normalize=False, stage_weighting="global")
    assert torch.equal(raw, torch.tensor([[[[0.5, 1.5], [2.0, 2.0]]]]))
    # mean 1.5, unbiased std sqrt(0.5); z = [-1 (clipped), 0, 0.7071, 0.7071]
    out = reference.extrapolate(heatmap, [a], **PAPER)
    expected = torch.tensor([[[[0.0, 1 / (1 + 0.5**0.5), 1.0, 1.0]]]]).view(1, 1, 2, 2)
    torch.testing.assert_close(out, expected)


def test_hand_computed_single_stage_defaults():
    heatmap = torch.full((1, 1, 1, 1), 2.0)
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    # 'local': a 1x1 coarse map has one window; S = [[1,3],[4,4]] over its mean 3, g = 2:
    # g * S / 3 = [[2/3, 2], [8/3, 8/3]] (up to the 1e-6 floor); min-max: [[0, 2/3], [1, 1]]
    raw = reference.extrapolate(heatmap, [a], normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[[[2 / 3, 2.0], [8 / 3, 8 / 3]]]]))
    out = reference.extrapolate(heatmap, [a])
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 2 / 3], [1.0, 1.0]]]]))


def test_local_weighting_keeps_evidence_where_the_coarse_map_put_it():
    # The coarse map puts equal evidence in its left and right halves; the stage fires 100x
    # harder on the right. The paper's weighting moves nearly all evidence to the right; the
    # local one balances the strength over windows of 2x2 coarse cells. The window means are
    # blended bilinearly (no window edges in the map), so next to the step some evidence still
    # moves: about 0.69 on the right instead of 0.5, against 0.99.
    heatmap = torch.ones(1, 1, 4, 4)
    a = torch.ones(1, 3, 16, 16)
    a[..., 8:] *= 100.0
    shares = {}
    for weighting in ("global", "local"):
        raw = reference.extrapolate(heatmap, [a], normalize=False, stage_weighting=weighting)
        shares[weighting] = float(raw[..., 8:].sum() / raw.sum())
    assert shares["global"] > 0.98
    assert 0.5 <= shares["local"] < 0.75


def test_local_weighting_still_sharpens_inside_a_window():
    # Within one window the stage's pattern shapes the map: the firing pixel gets the evidence.
    heatmap = torch.ones(1, 1, 2, 2)
    a = torch.full((1, 2, 8, 8), 0.01)
    a[..., 2, 5] = 5.0
    out = reference.extrapolate(heatmap, [a])
    assert out[0, 0].argmax() == 2 * 8 + 5
    assert out.max() == 1.0 and out.min() == 0.0


def test_minmax_and_bad_normalize_names():
    g = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]]])
    torch.testing.assert_close(reference.minmax_maps(g), (g - 1) / 4)
    assert torch.equal(
        reference.minmax_maps(torch.full((2, 1, 3, 3), 7.0)), torch.zeros(2, 1, 3, 3)
    )
    acts = random_stages(1, [(8, 8)])
    with pytest.raises(ValueError, match="normalize"):
        reference.extrapolate(torch.rand(1, 1, 4, 4), acts, normalize="zscore")
    with pytest.raises(ValueError, match="stage_weighting"):
        reference.extrapolate(torch.rand(1, 1, 4, 4), acts, stage_weighting="paper")


def test_two_stages_match_a_numpy_transcription():
    gen = torch.Generator().manual_seed(1)
    heatmap = torch.rand(1, 1, 3, 2, generator=gen)
    acts = random_stages(1, [(11, 7), (5, 4)], generator=gen)
    g = heatmap[0, 0].double().numpy()
    for a in reversed(acts):
        a = a[0].double().numpy()
        g = bilinear_numpy(g, *a.shape[-2:]) * a.sum(0) / a.max()
    g = bilinear_numpy(g, 13, 9)
    expected = normalize_numpy(g)
    out = reference.extrapolate(heatmap, acts, output_size=(13, 9), **PAPER)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=2e-6)


def original_repository_algorithm(heatmap, activations):
    """The batch-global algorithm of github.com/szandala/gradual-extrapolation, restated."""
    g = heatmap.double()
    for a in reversed(activations):
        a = a.double()
        g = torch.nn.functional.interpolate(g, size=a.shape[-2:], mode="bilinear")
        g = g * (a.sum(dim=1, keepdim=True) / a.max())
    z = ((g - g.mean()) / g.std()).clip(-1, 1)
    return (z - z.min()) / (z.max() - z.min())


def test_paper_variant_on_batch_one_equals_per_sample():
    acts = random_stages(1, [(28, 28), (14, 14)])
    heatmap = torch.rand(1, 1, 7, 7)
    torch.testing.assert_close(
        reference.extrapolate_paper(heatmap, acts), reference.extrapolate(heatmap, acts, **PAPER)
    )


def test_paper_variant_on_a_batch_is_batch_global_like_the_original():
    acts = random_stages(2, [(28, 28), (14, 14)])
    acts = [torch.cat([a[:1], 10 * a[1:]]) for a in acts]  # the second image fires 10x harder
    heatmap = torch.rand(2, 1, 7, 7)
    paper = reference.extrapolate_paper(heatmap, acts)
    torch.testing.assert_close(paper, original_repository_algorithm(heatmap, acts).float())
    alone = reference.extrapolate_paper(heatmap[:1], [a[:1] for a in acts])
    # The original's map of image 0 depends on its batch-mate; gradex's per-sample one does not.
    assert (paper[0] - alone[0]).abs().max() > 0.05
    per_sample = reference.extrapolate(heatmap, acts, **PAPER)
    torch.testing.assert_close(per_sample[:1], alone)


def test_dead_stage_and_constant_map_give_zeros_not_nan():
    acts = random_stages(3, [(9, 9), (4, 4)])
    acts[1][1] = -acts[1][1]  # sample 1: every activation <= 0 at the deeper stage
    heatmap = torch.rand(3, 1, 2, 2)
    heatmap[2] = 0.0  # sample 2: a constant (all-zero) CAM
    out = reference.extrapolate(heatmap, acts, transform=None, check=False)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert out[0].max() == 1.0 and out[0].min() == 0.0


def test_single_pixel_output_is_zero_not_nan():
    out = reference.extrapolate(torch.rand(2, 1, 1, 1), random_stages(2, [(1, 1)]))
    assert torch.equal(out, torch.zeros(2, 1, 1, 1))


def test_inputs_are_not_modified():
    acts = random_stages(2, [(8, 8), (4, 4)])
    acts[0] -= 0.5  # negative values, for the transform
    heatmap = torch.rand(2, 4, 4)
    copies = [heatmap.clone()] + [a.clone() for a in acts]
    reference.extrapolate(heatmap, acts, transform="relu")
    for before, after in zip(copies, [heatmap, *acts], strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("transform", ["relu", "abs"])
def test_transform_equals_transforming_first(transform):
    acts = [a - 0.3 for a in random_stages(2, [(10, 10), (5, 5)])]
    heatmap = torch.rand(2, 1, 5, 5)
    fn = torch.relu if transform == "relu" else torch.abs
    torch.testing.assert_close(
        reference.extrapolate(heatmap, acts, transform=transform),
        reference.extrapolate(heatmap, [fn(a) for a in acts]),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_compute_in_float32(dtype):
    acts = random_stages(2, [(16, 12), (8, 6)], dtype=dtype)
    heatmap = torch.rand(2, 1, 4, 3).to(dtype)
    out = reference.extrapolate(heatmap, acts)
    assert out.dtype == torch.float32
    expected = reference.extrapolate(heatmap.float(), [a.float() for a in acts])
    # float64 sums differ from float32 ones in the last bits only
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3),
    heat=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    seed=st.integers(0, 2**16),
)
def test_per_sample_range_shape_and_independence(batch, sizes, heat, seed):
    for i in range(1, len(sizes)):  # coarsen shallow to deep
        sizes[i] = (min(sizes[i][0], sizes[i - 1][0]), min(sizes[i][1], sizes[i - 1][1]))
    gen = torch.Generator().manual_seed(seed)
    acts = random_stages(batch, sizes, generator=gen)
    heatmap = torch.rand(batch, 1, *heat, generator=gen)
    out = reference.extrapolate(heatmap, acts)
    assert out.shape == (batch, 1, *sizes[0]) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for b in range(batch):
        alone = reference.extrapolate(heatmap[b : b + 1], [a[b : b + 1] for a in acts])
        torch.testing.assert_close(out[b : b + 1], alone)


def good_arguments():
    return torch.rand(2, 1, 4, 4), random_stages(2, [(8, 8), (4, 4)])


# (make bad arguments from good ones, the error, words it must contain); also run through every
# fused backend in test_kernel_registration.py.
BAD_INPUTS = [
    (lambda h, a: (h[None], a), ValueError, "heatmap must have shape"),
    (lambda h, a: (h.expand(2, 2, 4, 4), a), ValueError, "heatmap must have shape"),
    (lambda h, a: (h.numpy(), a), TypeError, "heatmap must be a torch.Tensor"),
    (lambda h, a: (h, a[0]), TypeError, "activations must be a list"),
    (lambda h, a: (h, []), ValueError, "activations is empty"),
    (lambda h, a: (h, [a[0][:, 0]]), ValueError, "activations[0] must have shape"),
    (lambda h, a: (h, [a[0], a[1][:1]]), ValueError, "activations[1] has batch size 1"),
    (lambda h, a: (h, a[::-1]), ValueError, "ordered shallow to deep"),
    (lambda h, a: (h, [a[0].to("meta")]), ValueError, "activations[0] is a meta tensor"),
    (lambda h, a: (h.long(), a), TypeError, "heatmap must be a floating tensor"),
    (lambda h, a: (h, [a[0].to(torch.int32)]), TypeError, "activations[0] must be a floating"),
    (lambda h, a: (h, [a[0].to(torch.complex64)]), TypeError, "must be a floating"),
    (lambda h, a: (h[:0], [x[:0] for x in a]), ValueError, "heatmap is empty"),
    (lambda h, a: (h, [a[0][:, :0]]), ValueError, "activations[0] is empty"),
    (lambda h, a: (h.index_fill(2, torch.tensor([1]), float("nan")), a), ValueError, "NaN"),
    (
        lambda h, a: (h, [a[0], a[1].index_fill(3, torch.tensor([0]), float("inf"))]),
        ValueError,
        "activations[1] contains NaN or Inf",
    ),
    (lambda h, a: (h, [a[0] - 2, a[1]]), ValueError, "activations[0] has negative values"),
]


@pytest.mark.parametrize("make, error, words", BAD_INPUTS)
def test_bad_input_names_the_argument(make, error, words):
    heatmap, acts = make(*good_arguments())
    with pytest.raises(error) as info:
        reference.extrapolate(heatmap, acts)
    assert words in str(info.value)


@pytest.mark.parametrize("size", [0, (3,), (2, -1), "big", (2.0, 3)])
def test_bad_output_size(size):
    heatmap, acts = good_arguments()
    with pytest.raises(ValueError, match="output_size"):
        reference.extrapolate(heatmap, acts, output_size=size)


def test_bad_transform():
    heatmap, acts = good_arguments()
    with pytest.raises(ValueError, match="transform must be one of"):
        reference.extrapolate(heatmap, acts, transform="square")


def test_memory_layout_does_not_change_the_map():
    acts = random_stages(2, [(12, 10), (6, 5)], channels=(6, 8))
    heatmap = torch.rand(2, 1, 3, 3)
    expected = reference.extrapolate(heatmap, acts)
    channels_last = [a.to(memory_format=torch.channels_last) for a in acts]
    sliced = [torch.stack([a, a], dim=2).flatten(1, 2)[:, ::2] for a in acts]  # a strided view
    assert not sliced[0].is_contiguous()
    torch.testing.assert_close(reference.extrapolate(heatmap, channels_last), expected)
    torch.testing.assert_close(reference.extrapolate(heatmap, sliced), expected)
    torch.testing.assert_close(reference.extrapolate(heatmap.transpose(2, 3).mT, acts), expected)
