"""The server's parts in-process: batch-size buckets and padding give each image exactly the
explanation it gets alone, maps encode losslessly enough, and the colour table is jet's."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from models_zoo import TinyCNN
from PIL import Image

import gradex
from gradex.models import ModelBundle
from gradex.overlays import jet_table
from gradex.serve.encoding import array_map, overlay_png
from gradex.serve.runner import Runner, buckets


@pytest.mark.parametrize(
    ("limit", "sizes"), [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])]
)
def test_buckets(limit, sizes):
    assert buckets(limit) == sizes


@pytest.fixture(scope="module")
def runner():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    bundle = ModelBundle(
        "tiny", model, lambda image: image, [f"c{i}" for i in range(10)], 32, (0.5,) * 3, (0.5,) * 3
    )
    runner = Runner(
        bundle, torch.device("cpu"), method="gradcam", amp_dtype=None, max_batch=4, warmup=1
    )
    runner.warm()
    return runner


def test_a_padded_batch_gives_each_image_its_own_explanation(runner):
    images = [torch.randn(3, 32, 32) for _ in range(3)]  # runs in the bucket of 4
    targets = [None, 3, None]
    got = runner.explain(list(zip(images, targets, strict=True)))
    explainer = gradex.Explainer(runner.model)
    for image, target, e in zip(images, targets, got, strict=True):
        alone = explainer(image.unsqueeze(0), target=target)
        assert e.target == int(alone.target[0])
        torch.testing.assert_close(e.saliency, alone.saliency[0, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e.cam, alone.cam[0, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            e.probabilities, alone.logits[0].softmax(0), rtol=1e-5, atol=1e-7
        )
    assert got[1].target == 3


def test_predictions_equal_the_model(runner):
    images = [torch.randn(3, 32, 32) for _ in range(4)]
    got = runner.predict(images)
    with torch.no_grad():
        expected = runner.model(torch.stack(images)).softmax(dim=1)
    for i, p in enumerate(got):
        torch.testing.assert_close(p.probabilities, expected[i], rtol=1e-5, atol=1e-7)


def test_the_layers_are_those_the_explainer_chose(runner):
    x = torch.randn(1, 3, 32, 32)
    layers = gradex.Explainer(runner.model).layers_for(x)
    assert runner.layer_names == {
        "target": str(layers.target.ref),
        "stages": [str(stage.ref) for stage in layers.stages],
    }


def test_amp_runs_the_forward_in_bfloat16_and_stays_close(runner):
    amp = Runner(
        runner.bundle,
        torch.device("cpu"),
        method="gradcam",
        amp_dtype=torch.bfloat16,
        max_batch=2,
        warmup=1,
    )
    amp.warm()
    images = [torch.randn(3, 32, 32) for _ in range(2)]
    got = amp.explain([(i, None) for i in images])
    full = runner.explain([(i, None) for i in images])
    for a, f in zip(got, full, strict=True):
        assert a.saliency.dtype == torch.float32
        assert (a.saliency - f.saliency).abs().mean() < 0.05
    logits = amp.predict(images)
    assert all(torch.isfinite(p.probabilities).all() for p in logits)


def test_the_colour_table_is_matplotlibs_jet():
    matplotlib = pytest.importorskip("matplotlib")
    expected = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255
    assert np.abs(jet_table().astype(float) - expected).max() <= 1.0


@pytest.mark.parametrize(
    ("fmt", "dtype", "tolerance"), [("uint8", np.uint8, 0.5 / 255), ("float16", "<f2", 5e-4)]
)
def test_array_maps_round_trip(fmt, dtype, tolerance):
    values = torch.rand(13, 7)
    answer = array_map(values, fmt)
    assert answer["format"] == fmt and answer["shape"] == [13, 7]
    decoded = np.frombuffer(base64.b64decode(answer["b64"]), dtype=dtype).reshape(13, 7)
    scale = 255.0 if fmt == "uint8" else 1.0
    np.testing.assert_allclose(decoded / scale, values.numpy(), atol=tolerance + 1e-7)


def test_overlay_png_is_the_map_over_the_image():
    display = torch.rand(3, 40, 30)
    values = torch.zeros(5, 4)
    values[4, 3] = 1.0  # one hot corner: jet's top colour there, its bottom one far away
    answer = overlay_png(display, values, alpha=1.0)
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["b64"]))))
    assert picture.shape == (40, 30, 3) and answer["shape"] == [40, 30]
    np.testing.assert_array_equal(picture[0, 0], jet_table()[0])
    np.testing.assert_array_equal(picture[-1, -1], jet_table()[255])
    flat = overlay_png(display, torch.full((5, 4), 0.3), alpha=0.0)  # alpha 0: the image itself
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(flat["b64"]))))
    np.testing.assert_allclose(image, display.permute(1, 2, 0).numpy() * 255, atol=1.0)


@pytest.mark.needs_cuda
def test_on_a_gpu_every_bucket_is_a_cuda_graph_and_equals_eager():
    import copy

    torch.manual_seed(0)
    model = TinyCNN().eval()
    bundle = ModelBundle(
        "tiny",
        copy.deepcopy(model),
        lambda image: image,
        [f"c{i}" for i in range(10)],
        32,
        (0.5,) * 3,
        (0.5,) * 3,
    )
    runner = Runner(
        bundle, torch.device("cuda"), method="gradcam", amp_dtype=None, max_batch=4, warmup=2
    )
    runner.warm()
    assert all(e.mode == "cuda_graph" for e in runner._explainers.values())
    assert all(p._graph is not None for p in runner._predictors.values())
    images = [torch.randn(3, 32, 32) for _ in range(3)]
    explainer = gradex.Explainer(model)  # eager, on the CPU
    for e, image in zip(runner.explain([(i, None) for i in images]), images, strict=True):
        alone = explainer(image.unsqueeze(0))
        assert e.target == int(alone.target[0])
        torch.testing.assert_close(e.saliency, alone.saliency[0, 0], rtol=1e-4, atol=1e-4)
    for p, image in zip(runner.predict(images), images, strict=True):
        with torch.no_grad():
            expected = model(image.unsqueeze(0)).softmax(dim=1)[0]
        torch.testing.assert_close(p.probabilities, expected, rtol=1e-4, atol=1e-5)
