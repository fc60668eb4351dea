"""Degenerate maps give zeros on every backend: a constant input (nothing to localise) must never
come back as a confident-looking [0, 1] pattern of stretched rounding noise, and a real but faint
map must still normalise. The line between the two is reference.CONSTANT_RTOL."""

import pytest
import torch
from conftest import random_stages
from test_kernels import FP32_BACKENDS, backend_or_skip, poisoned_outputs  # noqa: F401
from torch import nn

import gradex
from gradex import reference

EVERY_BACKEND = [pytest.param("reference", "cpu", torch.float32, id="reference"), *FP32_BACKENDS]
NORMALISED_OPTIONS = [
    (weighting, normalize)
    for weighting in ("local", "global")
    for normalize in ("minmax", "standardize")
]
# (heatmap size, stage sizes shallow to deep, output size): Lite0's shapes, odd sizes that give
# uneven pooling windows, one stage, no stage, a 1×1 heatmap.
GEOMETRIES = [
    ((7, 7), [(56, 56), (28, 28), (14, 14)], (224, 224)),
    ((7, 9), [(113, 97), (29, 31), (7, 9)], None),
    ((3, 5), [(31, 17)], (40, 23)),
    ((7, 7), [], (33, 19)),
    ((1, 1), [(9, 9), (3, 3)], (9, 9)),
]


def extrapolate(backend, device, heatmap, acts, output, weighting, normalize):
    if not acts:  # the plain CAM (gradual=False): the public function asks for stages
        chosen = gradex.ops.resolve_backend(backend, torch.device(device))
        return chosen.chain(heatmap.to(device), [], output, weighting, normalize)
    return gradex.extrapolate(
        heatmap.to(device),
        [a.to(device) for a in acts],
        output,
        normalize=normalize,
        backend=backend,
        stage_weighting=weighting,
    )


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}-{len(g[1])}-{g[2]}")
@pytest.mark.parametrize("options", NORMALISED_OPTIONS, ids=lambda o: "-".join(o))
def test_constant_and_near_constant_inputs_give_zeros(backend, device, dtype, geometry, options):
    backend_or_skip(backend, device)
    heat, sizes, output = geometry
    generator = torch.Generator().manual_seed(0)
    cases = {}
    for value, scale in ((0.1, 0.7), (3.7e-3, 123.4), (1e-20, 1e20), (5.0, 1e-30)):
        cases[f"constant {value} x {scale}"] = (
            torch.full((2, 1, *heat), value),
            [torch.full((2, 3 + k, *s), scale) for k, s in enumerate(sizes)],
        )
    noise = 1e-7  # about one float32 rounding
    cases["heatmap 1 + 1e-7 noise"] = (
        1 + noise * torch.randn(2, 1, *heat, generator=generator),
        [torch.ones(2, 4, *s) for s in sizes],
    )
    cases["activations 1 + 1e-7 noise"] = (
        torch.ones(2, 1, *heat),
        [1 + noise * torch.randn(2, 8, *s, generator=generator) for s in sizes],
    )
    for name, (heatmap, acts) in cases.items():
        out = extrapolate(backend, device, heatmap, acts, output, *options)
        assert torch.equal(out, torch.zeros_like(out)), f"{name}: max {out.max().item()}"


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
@pytest.mark.parametrize("options", NORMALISED_OPTIONS, ids=lambda o: "-".join(o))
def test_faint_but_real_maps_still_normalise(backend, device, dtype, options):
    backend_or_skip(backend, device)
    generator = torch.Generator().manual_seed(1)
    acts = random_stages(2, [(28, 28), (14, 14)], generator=generator)
    pattern = torch.zeros(2, 1, 7, 7)
    pattern[:, :, 2, 5] = 1.0
    for name, heatmap in {
        "0.1 % contrast": 1 + 1e-3 * pattern,
        "magnitude 1e-30": 1e-30 * (0.5 + pattern),
        "magnitude 1e30": 1e30 * (0.5 + pattern),
    }.items():
        out = extrapolate(backend, device, heatmap, acts, (28, 28), *options)
        assert out.amax().item() == 1.0 and out.amin().item() == 0.0, name
        expected = reference.extrapolate(
            heatmap,
            acts,
            (28, 28),
            **dict(zip(("stage_weighting", "normalize"), options, strict=True)),
        )
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
@pytest.mark.parametrize("normalize", ["minmax", "standardize"])
def test_every_backend_draws_the_line_at_constant_rtol(backend, device, dtype, normalize):
    # No stage and no resize: the chain's output is the heatmap itself, so its spread is exact.
    chosen = backend_or_skip(backend, device)
    step = torch.zeros(4, 1, 6, 5)
    step[:, :, :, 3:] = 1.0
    fractions = torch.tensor([0.25, 0.9, 1.5, 8.0]).view(4, 1, 1, 1)
    heatmap = (1000.0 * (1 + reference.CONSTANT_RTOL * fractions * step)).to(device)
    out = chosen.chain(heatmap, [], None, "global", normalize)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))  # below the line: constant
    assert (out[2:].amax(dim=(1, 2, 3)) == 1).all()  # above it: a map


@pytest.mark.parametrize("backend, device, dtype", EVERY_BACKEND)
@pytest.mark.parametrize("weighting", ["local", "global"])
def test_the_chains_rounding_on_constant_inputs_stays_far_below_the_line(
    backend, device, dtype, weighting
):
    # What CONSTANT_RTOL must cover, measured: the raw chain on constant inputs, five stages of
    # uneven sizes (uneven pooling windows), 2048 channels, an upsampling resize.
    backend_or_skip(backend, device)
    sizes = [(113, 97), (57, 49), (29, 25), (14, 13), (7, 7)]
    channels = [3, 64, 2048, 5, 7]
    worst = 0.0
    for value in (0.1, 0.3, 1.7e-3, 123.4):
        heatmap = torch.full((1, 1, 7, 7), value)
        acts = [torch.full((1, c, *s), value) for c, s in zip(channels, sizes, strict=True)]
        raw = extrapolate(backend, device, heatmap, acts, (224, 200), weighting, None)
        lo, hi = raw.aminmax()
        worst = max(worst, ((hi - lo) / torch.maximum(lo.abs(), hi.abs())).item())
    assert worst < reference.CONSTANT_RTOL / 8, worst


def test_a_uniform_image_through_a_model_gives_a_zero_map():
    # 1×1 convolutions: every stage and the CAM are exactly constant over the image.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    ).eval()  # fmt: skip
    x = torch.full((2, 3, 32, 32), 0.5)
    for name, (available, _) in gradex.backends().items():
        devices = gradex.ops._REGISTRY[name].devices
        if not available or not ("cpu" in devices or "*" in devices):
            continue
        for options in ({}, reference.PAPER_FORMULA):
            exp = gradex.Explainer(model, backend=name, **options)(x)
            assert torch.equal(exp.saliency, torch.zeros_like(exp.saliency)), (name, options)
