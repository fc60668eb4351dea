"""GE on Captum's layer attributions through gradex.integrations.captum."""

import pytest
import torch

pytest.importorskip("captum")

from captum.attr import (  # noqa: E402
    LayerActivation,
    LayerConductance,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
)

import gradex  # noqa: E402
from gradex.integrations import captum  # noqa: E402

from .peer_models import (  # noqa: E402
    SIZE,
    TINY_SIZE,
    hook_counts,
    images,
    resnet18,
    stages_of,
    tiny,
)


def test_layer_gradcam_passes_through_and_ge_of_it_is_gradex_gradcam():
    model, x = resnet18(), images()
    attribution = LayerGradCam(model, model.layer4)
    before = hook_counts(model)
    out = captum.with_ge(attribution)(x, target=[3, 8], relu_attributions=True)
    assert hook_counts(model) == before
    direct = attribution.attribute(x, target=[3, 8], relu_attributions=True)
    torch.testing.assert_close(out.peer, direct, rtol=0, atol=0)
    ours = gradex.Explainer(model, target_layer=model.layer4)(x, target=[3, 8])
    torch.testing.assert_close(out.heatmap, ours.cam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.saliency, ours.saliency, rtol=1e-4, atol=1e-4)
    assert (out.saliency.flatten(1).amax(1) == 1).all()


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (LayerGradientXActivation, {}),  # (B,C,h,w): summed over channels
        (LayerActivation, {}),  # no target: the layer's activation itself
        (LayerIntegratedGradients, {"n_steps": 4}),
        (LayerConductance, {"n_steps": 4}),  # forwards only scaled copies: one extra forward
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_other_layer_attributions_give_ge_of_their_map(make, kwargs):
    model, x = tiny(), images(size=TINY_SIZE)
    attribution = make(model, model.stage3)
    if make is not LayerActivation:
        kwargs = {**kwargs, "target": 5}
    out = captum.with_ge(attribution)(x, **kwargs)
    direct = attribution.attribute(x, **kwargs)
    torch.testing.assert_close(out.peer, direct, rtol=1e-5, atol=1e-6)
    expected_map = out.peer.sum(dim=1, keepdim=True).clamp_min(0)
    torch.testing.assert_close(out.heatmap, expected_map, rtol=0, atol=0)
    expected = gradex.extrapolate(out.heatmap, stages_of(model, model.stage3, x), TINY_SIZE)
    torch.testing.assert_close(out.saliency, expected, rtol=0, atol=0)


def test_bad_arguments_are_refused_by_name():
    model, x = resnet18(), images()
    with pytest.raises(TypeError, match="attribution must be a Captum layer attribution"):
        captum.with_ge(model)
    wrapped = LayerGradCam(lambda inputs: model(inputs), model.layer4)
    with pytest.raises(TypeError, match="pass the model it calls as model="):
        captum.with_ge(wrapped)
    out = captum.with_ge(wrapped, model=model)(x, target=1)
    assert out.saliency.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(TypeError, match="inputs must be one"):
        captum.with_ge(LayerGradCam(model, model.layer4))((x,), target=1)
