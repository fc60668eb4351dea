"""GE on pytorch-grad-cam's maps: its maps at the input's size, and the adapter for every CAM."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytorch_grad_cam")

from pytorch_grad_cam import (  # noqa: E402
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import gradex  # noqa: E402
from gradex.integrations import grad_cam  # noqa: E402
from gradex.metrics import pearson  # noqa: E402

from .peer_models import (  # noqa: E402
    SIZE,
    TINY_SIZE,
    hook_counts,
    images,
    resnet18,
    stages_of,
    tiny,
)

# The pytorch-grad-cam methods that gradex computes too, by gradex's name. Its GradCAMPlusPlus
# adds 1e-6 to the alpha denominator where gradex adds 1e-7, which moves the small gradients of a
# random-weight model's maps by a few percent: it is checked against gradex's chain only.
SAME_AS_GRADEX = {
    GradCAM: "gradcam",
    XGradCAM: "xgradcam",
    HiResCAM: "hirescam",
    LayerCAM: "layercam",
}
OTHERS = [
    GradCAMPlusPlus,
    EigenCAM,
    EigenGradCAM,
    GradCAMElementWise,
    ScoreCAM,
    AblationCAM,
    FullGrad,
]


def test_a_map_at_the_input_size_is_sharpened_not_handed_back():
    # pytorch-grad-cam's maps come upsampled to the input's size. extrapolate used to start
    # from a bilinear downsample of them and returned the blurry map it was given (r = 0.995
    # here, 0.998 at 224x224); it now area-pools them to the deepest stage's grid first.
    model, x = resnet18(), images()
    with GradCAM(model, target_layers=[model.layer4]) as cam:
        fine = torch.from_numpy(cam(input_tensor=x, targets=None)).unsqueeze(1)
    assert fine.shape == (2, 1, SIZE, SIZE)
    activations = stages_of(model, model.layer4, x)
    by_hand = F.adaptive_avg_pool2d(fine, activations[-1].shape[-2:])
    maps = {}
    for backend in ["reference", "cpu"]:
        if not gradex.backends()[backend][0]:
            continue
        maps[backend] = gradex.extrapolate(fine, activations, SIZE, backend=backend)
        expected = gradex.extrapolate(by_hand, activations, SIZE, backend=backend)
        torch.testing.assert_close(maps[backend], expected, rtol=0, atol=0)
        assert (pearson(maps[backend][:, 0], fine[:, 0]) < 0.9).all()
    if "cpu" in maps:
        torch.testing.assert_close(maps["cpu"], maps["reference"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cam_class", [*SAME_AS_GRADEX, *OTHERS], ids=lambda c: c.__name__)
def test_the_cams_map_passes_through_and_ge_of_it_is_gradex_chain(cam_class):
    model, x = tiny(), images(size=TINY_SIZE)
    with cam_class(model, target_layers=[model.stage3]) as cam:
        direct = cam(input_tensor=x, targets=None)
        out = grad_cam.with_ge(cam)(x)
        assert "get_cam_image" not in vars(cam)  # the user's object is left as it was
    np.testing.assert_array_equal(out.peer, direct)
    if cam_class is FullGrad:  # its map is made over every layer: GE takes it as it comes
        torch.testing.assert_close(out.heatmap[:, 0], torch.from_numpy(direct), rtol=0, atol=0)
    else:  # the coarse map at the target layer, the one the CAM scaled into its result
        assert out.heatmap.shape == (2, 1, 4, 4)
        # pytorch-grad-cam scales each layer's map to the input, then the layers' mean again.
        scaled = scale_cam_image(scale_cam_image(out.heatmap[:, 0].numpy(), (TINY_SIZE,) * 2))
        np.testing.assert_allclose(scaled, direct, atol=1e-6)
    expected = gradex.extrapolate(out.heatmap, stages_of(model, model.stage3, x), TINY_SIZE)
    torch.testing.assert_close(out.saliency, expected, rtol=0, atol=0)
    assert out.saliency.shape == (2, 1, TINY_SIZE, TINY_SIZE)
    # A real map where the CAM has one (AblationCAM finds no evidence for one random sample).
    flat = out.heatmap.flatten(1)
    varying = flat.amax(1) > flat.amin(1)
    assert varying.any() and (out.saliency.flatten(1).amax(1)[varying] == 1).all()
    if cam_class in SAME_AS_GRADEX:
        ours = gradex.Explainer(model, SAME_AS_GRADEX[cam_class], target_layer=model.stage3)(x)
        scale = float(ours.cam.max())
        torch.testing.assert_close(out.heatmap, ours.cam, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(out.saliency, ours.saliency, rtol=1e-4, atol=1e-4)


def test_gradcam_on_resnet18_equals_gradex_with_the_same_target_layer():
    model, x = resnet18(), images()
    with GradCAM(model, target_layers=[model.layer4]) as cam:
        out = grad_cam.with_ge(cam)(x)
    ours = gradex.Explainer(model, target_layer=model.layer4)(x)
    torch.testing.assert_close(out.heatmap, ours.cam, rtol=1e-4, atol=1e-5 * float(ours.cam.max()))
    torch.testing.assert_close(out.saliency, ours.saliency, rtol=1e-4, atol=1e-4)


def test_a_target_class_and_several_target_layers():
    model, x = resnet18(), images()
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(8)]
    with GradCAM(model, target_layers=[model.layer4]) as cam:
        out = grad_cam.with_ge(cam)(x, targets=targets)
    ours = gradex.Explainer(model, target_layer=model.layer4)(x, target=[3, 8])
    torch.testing.assert_close(out.saliency, ours.saliency, rtol=1e-4, atol=1e-4)
    # Several layers: pytorch-grad-cam averages them at the input's size; GE takes that map,
    # area-pooled, through the stages of the last layer.
    with GradCAM(model, target_layers=[model.layer3, model.layer4]) as cam:
        out = grad_cam.with_ge(cam)(x, targets=targets)
        direct = cam(input_tensor=x, targets=targets)
    np.testing.assert_array_equal(out.peer, direct)
    assert out.heatmap.shape == (2, 1, SIZE, SIZE)
    expected = gradex.extrapolate(out.heatmap, stages_of(model, model.layer4, x), SIZE)
    torch.testing.assert_close(out.saliency, expected, rtol=0, atol=0)


def test_no_hook_outlives_the_call_also_when_the_forward_raises():
    model, x = resnet18(), images()
    with GradCAM(model, target_layers=[model.layer4]) as cam:
        ge = grad_cam.with_ge(cam)
        before = hook_counts(model)
        ge(x)
        assert hook_counts(model) == before

        def fail(module, inputs, output):
            raise RuntimeError("a layer failed")

        handle = model.layer3.register_forward_hook(fail)
        try:
            with pytest.raises(RuntimeError, match="a layer failed"):
                ge(x)
        finally:
            handle.remove()
        assert hook_counts(model) == before
        assert "get_cam_image" not in vars(cam)


def test_bad_arguments_are_refused_by_name():
    model, x = resnet18(), images()
    with pytest.raises(TypeError, match="cam must be a pytorch-grad-cam CAM object"):
        grad_cam.with_ge(model)
    with GradCAM(model, target_layers=[model.layer4]) as cam:
        with pytest.raises(ValueError, match="aug_smooth=True"):
            grad_cam.with_ge(cam)(x, aug_smooth=True)
        with pytest.raises(TypeError, match="unknown GE option"):
            grad_cam.with_ge(cam, gradual=False)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="torch.no_grad()"):
            grad_cam.with_ge(cam)(x)
