"""GE on TorchCAM's maps through gradex.integrations.torchcam."""

import pytest
import torch

pytest.importorskip("torchcam")

from torchcam.methods import GradCAM, GradCAMpp, LayerCAM, XGradCAM  # noqa: E402

import gradex  # noqa: E402
from gradex.integrations import torchcam  # noqa: E402

from .peer_models import (  # noqa: E402
    SIZE,
    TINY_SIZE,
    hook_counts,
    images,
    resnet18,
    stages_of,
    tiny,
)


def test_gradcam_passes_through_and_ge_of_it_is_gradex_gradcam():
    model, x = resnet18(), images()
    before = hook_counts(model)
    extractor = GradCAM(model, "layer4", input_shape=(3, SIZE, SIZE))
    try:
        scores = model(x)
        direct = extractor(scores.argmax(1).tolist(), scores)  # normalised: TorchCAM's default
        ge = torchcam.with_ge(extractor)
        out = ge(x)
        torch.testing.assert_close(out.peer[0], direct[0], rtol=0, atol=0)
        raw = ge(x, normalized=False)
    finally:
        extractor.remove_hooks()
    assert hook_counts(model) == before
    ours = gradex.Explainer(model, target_layer="layer4")(x)
    torch.testing.assert_close(raw.heatmap, ours.cam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(raw.saliency, ours.saliency, rtol=1e-4, atol=1e-4)
    assert (raw.saliency.flatten(1).amax(1) == 1).all()


@pytest.mark.parametrize("make", [GradCAMpp, XGradCAM, LayerCAM], ids=lambda c: c.__name__)
def test_other_extractors_give_ge_of_their_map(make):
    model, x = tiny(), images(size=TINY_SIZE)
    extractor = make(model, "stage3", input_shape=(3, TINY_SIZE, TINY_SIZE))
    try:
        out = torchcam.with_ge(extractor)(x, class_idx=[2, 6], normalized=False)
    finally:
        extractor.remove_hooks()
    assert out.heatmap.shape == (2, 1, 4, 4)
    torch.testing.assert_close(out.heatmap[:, 0], out.peer[0].clamp_min(0), rtol=0, atol=0)
    expected = gradex.extrapolate(out.heatmap, stages_of(model, "stage3", x), TINY_SIZE)
    torch.testing.assert_close(out.saliency, expected, rtol=0, atol=0)


def test_bad_arguments_are_refused_by_name():
    model = resnet18()
    with pytest.raises(TypeError, match="extractor must be a TorchCAM CAM extractor"):
        torchcam.with_ge(model)
    extractor = GradCAM(model, ["layer3", "layer4"], input_shape=(3, SIZE, SIZE))
    try:
        with pytest.raises(ValueError, match="GE extrapolates the map of one layer"):
            torchcam.with_ge(extractor)
    finally:
        extractor.remove_hooks()
