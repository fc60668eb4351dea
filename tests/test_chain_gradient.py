"""D13: GE is differentiable in its heatmap on every backend, and every backend gives the
reference's gradient (before the fix the fused ops returned a map with no gradient at all and
only an autograd warning said so). The stage activations are constants, as on the reference."""

import pytest
import torch
from conftest import random_stages
from test_kernels import FP32_BACKENDS, backend_or_skip, poisoned_outputs  # noqa: F401

import gradex
from gradex import ops, reference

OPTIONS = [
    {},
    {"stage_weighting": "global", "normalize": "standardize"},
    {"normalize": None},
]


def heatmap_gradient(backend, device, heatmap, acts, weights, **options):
    leaf = heatmap.clone().to(device).requires_grad_()
    out = gradex.extrapolate(leaf, [a.to(device) for a in acts], 40, backend=backend, **options)
    assert out.requires_grad
    (out * weights.to(device)).sum().backward()
    return leaf.grad.cpu()


@pytest.mark.parametrize("backend, device, dtype", FP32_BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_every_backend_gives_the_references_heatmap_gradient(backend, device, dtype, options):
    backend_or_skip(backend, device)
    heatmap = torch.rand(2, 1, 5, 6)
    acts = random_stages(2, [(31, 29), (11, 13)])
    weights = torch.randn(2, 1, 40, 40)
    # The reference on the same device: the fused backward is that chain there, and another
    # device's rounding could move a pixel across a clip or the argmax (a step in the gradient).
    expected = heatmap_gradient("reference", device, heatmap, acts, weights, **options)
    got = heatmap_gradient(backend, device, heatmap, acts, weights, **options)
    top = expected.abs().amax().item()
    assert top > 0
    # atol relative to the largest entry: an entry is a sum of terms of both signs, and CUDA's
    # upsampling backward adds them with atomics, in no fixed order.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * top)


@pytest.mark.parametrize("backend, device, dtype", FP32_BACKENDS)
def test_the_gradient_flows_through_chains_split_over_several_calls(backend, device, dtype):
    backend_or_skip(backend, device)
    sizes = [(40 - k, 38 - k) for k in range(ops.MAX_STAGES_PER_CALL + 3)]
    acts = random_stages(1, sizes, channels=(2, 3))
    heatmap = torch.rand(1, 1, 4, 4)
    weights = torch.randn(1, 1, 40, 40)
    expected = heatmap_gradient("reference", device, heatmap, acts, weights)
    got = heatmap_gradient(backend, device, heatmap, acts, weights)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().amax().item())


def test_the_backward_the_fused_ops_use_passes_gradcheck():
    # The backward the fused ops use is autograd through reference.chain_op: check that one
    # against finite differences (raw map: the normalisations' min/max are not smooth).
    heatmap = torch.rand(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    stages = [reference.reduce_stage(a) for a in random_stages(1, [(9, 11), (5, 7)])]
    sums, maxima = [s.sums for s in stages], [s.maxima for s in stages]

    def chain(h):
        return reference.chain_op(h.float(), sums, maxima, (2, 2), (9, 11), True, None).double()

    assert torch.autograd.gradcheck(chain, (heatmap,), eps=1e-3, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("backend, device, dtype", FP32_BACKENDS)
def test_no_gradient_no_graph(backend, device, dtype):
    # Without requires_grad (an Explainer's maps, a plain call) nothing is recorded or kept.
    backend_or_skip(backend, device)
    acts = [a.to(device) for a in random_stages(1, [(14, 14)])]
    out = gradex.extrapolate(torch.rand(1, 1, 7, 7, device=device), acts, backend=backend)
    assert not out.requires_grad and out.grad_fn is None
