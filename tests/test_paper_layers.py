"""The original GE code's layers (gradex.paper_layers): ``gradex explain --paper --model vgg16``
gives the original's maps, checked against a restatement of the original written from its code.

The restatement follows github.com/szandala/gradual-extrapolation (gradual_extrapolation.py and
vision.py, torch 1.7.1) and the TorchRay Grad-CAM it calls, line by line, with none of gradex's
code: gradex must agree with it on the same weights and photos.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from models_zoo import get
from torch import nn

import gradex
from gradex import cli, images
from gradex.models import preprocess_for

VGG16_STAGES = ["features.4 (input)", "features.4", "features.9", "features.16", "features.23"]
VGG16_STAGES += ["features.30"]
RESNET50_STAGES = ["conv1 (input)", "conv1", "maxpool", "layer2.0.conv2"]
RESNET50_STAGES += ["layer2.0.downsample.0", "layer3.0.conv2", "layer3.0.downsample.0"]
RESNET50_STAGES += ["layer4.0.conv2", "layer4.0.downsample.0"]


class OriginalGradualExtrapolator:
    """GradualExtrapolator (gradual_extrapolation.py), as an instance instead of class state."""

    def __init__(self):
        self.excitations = []
        self.is_orig_image = True
        self.handles = []

    def excitation_hook(self, module, input, output):
        # "for better output sharpness we collect input images"
        if self.is_orig_image:
            self.excitations.append(input[0])
            self.is_orig_image = False
        self.excitations.append(output)

    def register_hooks(self, model):
        for layer in model.children():
            if list(layer.children()):
                self.register_hooks(layer)
            elif isinstance(layer, nn.MaxPool2d) or (
                isinstance(layer, nn.Conv2d) and layer.stride > (1, 1)
            ):
                self.handles.append(layer.register_forward_hook(self.excitation_hook))

    def get_smooth_map(self, heatmap):
        with torch.no_grad():
            for e in self.excitations[::-1]:
                heatmap = F.interpolate(
                    heatmap, size=(e.shape[2], e.shape[3]), mode="bilinear", align_corners=False
                )
                heatmap *= e.sum(dim=1, keepdim=True) / e.max()
            scaled = (heatmap - heatmap.mean()) / heatmap.std()
            scaled = scaled.clip(-1, 1)
            return (scaled - scaled.min()) / (scaled.max() - scaled.min())


def torchray_grad_cam(model, x, target, saliency_layer):
    """TorchRay's ``grad_cam(model, x, target, saliency_layer=...)`` as vision.py ran it.

    TorchRay freezes the parameters, probes the layer's output tensor and backpropagates a
    one-hot of the logits. vision.py's earlier deconvnet call had left the input requiring grad,
    so VGG16's in-place ReLU after features.28 may overwrite the probed tensor: the activation
    TorchRay reads afterwards is post-ReLU, and under torch 1.7.1 its retained gradient was that
    of the value before the in-place op (torch 2.0 moved it, pytorch#79996). A tensor hook
    registered before the in-place op still receives exactly that gradient.
    """
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    probe = {}

    def catch(module, inputs, output):
        probe["data"] = output
        output.register_hook(lambda grad: probe.__setitem__("grad", grad))

    handle = model.get_submodule(saliency_layer).register_forward_hook(catch)
    try:
        output = model(x.clone().requires_grad_(True))
        one_hot = torch.zeros_like(output)
        one_hot[torch.arange(len(target)), torch.as_tensor(target)] = 1
        output.backward(one_hot)
    finally:
        handle.remove()
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
    data, grad = probe["data"].detach(), probe["grad"]
    # The pre-ReLU gradient: zero wherever the ReLU cut the (now post-ReLU) activation.
    assert grad[data == 0].abs().max() == 0
    weight = grad.mean((2, 3), keepdim=True)
    return torch.clamp((data * weight).sum(1, keepdim=True), min=0)


def original_maps(model, x):
    """vision.py's Grad-CAM, then GradualExtrapolator, for a batch ``x``."""
    with torch.no_grad():
        category_id = model(x).argmax(dim=1).tolist()
    saliency = torchray_grad_cam(model, x, category_id, "features.28")
    extrapolator = OriginalGradualExtrapolator()
    extrapolator.register_hooks(model)
    try:
        with torch.no_grad():
            model(x)
        return extrapolator.get_smooth_map(saliency), category_id
    finally:
        for handle in extrapolator.handles:
            handle.remove()


@pytest.fixture(scope="module")
def vgg16():
    return get("vgg16")


@pytest.fixture(scope="module")
def photos():
    preprocess = preprocess_for("vgg16")
    return torch.stack([preprocess(images.load_rgb(p)) for p in images.demo_photos()[:2]])


@pytest.fixture(scope="module")
def original(vgg16, photos):
    """The original's maps of the photos, each run alone, and its classes (computed once: a
    backward through VGG16 to the input per photo)."""
    maps = [original_maps(vgg16, photos[i : i + 1]) for i in range(photos.shape[0])]
    return torch.cat([m for m, _ in maps]), [c[0] for _, c in maps]


def test_the_original_layers_on_vgg16(vgg16, photos):
    layers = gradex.Explainer(vgg16, **gradex.PAPER_OPTIONS).layers_for(photos)
    assert str(layers.target.ref) == "features.28" and layers.target_as_left
    assert [str(s.ref) for s in layers.stages] == VGG16_STAGES
    sizes = [s.shape[-1] for s in layers.stages]
    assert sizes == [224, 112, 56, 28, 14, 7] and layers.target.shape[-1] == 14
    assert all(s.kind == "non-negative" for s in layers.stages)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vgg16_maps_equal_the_original_run_one_image_at_a_time(vgg16, photos, original, backend):
    if not gradex.backends()[backend][0]:
        pytest.skip(gradex.backends()[backend][1])
    expected, category_id = original
    explainer = gradex.Explainer(vgg16, backend=backend, **gradex.PAPER_OPTIONS)
    exp = explainer(photos)  # one batch: gradex's maps do not depend on batch-mates
    assert exp.target.tolist() == category_id
    assert exp.saliency.std(dim=(1, 2, 3)).min() > 0.1  # real maps, not zeros
    torch.testing.assert_close(exp.saliency, expected, rtol=0, atol=5e-6)


def test_gradex_explain_paper_on_vgg16_writes_the_original_maps(vgg16, original, tmp_path):
    weights = tmp_path / "vgg16.pth"
    torch.save(vgg16.state_dict(), weights)
    paths = images.demo_photos()[:2]
    out = tmp_path / "out"
    args = ["explain", *map(str, paths), "--model", "vgg16", "--weights", str(weights)]
    assert cli.main([*args, "--paper", "--save-maps", "--no-panels", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["target_layer"] == "features.28"
    expected, category_id = original
    for i, record in enumerate(report["images"]):
        with np.load(out / record["maps"]) as maps:
            assert int(maps["target"]) == category_id[i]
            np.testing.assert_allclose(maps["saliency"], expected[i, 0].numpy(), atol=5e-6)


def test_the_original_read_the_target_after_vggs_in_place_relu(vgg16, photos):
    """The paper's Grad-CAM is not Grad-CAM at features.28 as the conv returns it (signed) nor at
    the ReLU after it (whose gradient is not cut): it differs from both."""
    x = photos[:1]
    paper = gradex.Explainer(vgg16, gradual=False, target_layer="paper")(x).cam
    with torch.no_grad():
        category_id = vgg16(x).argmax(dim=1).tolist()
    torch.testing.assert_close(paper, torchray_grad_cam(vgg16, x, category_id, "features.28"))
    for layer in ("features.28", "features.29"):
        other = gradex.Explainer(vgg16, gradual=False, target_layer=layer)(x).cam
        assert (other - paper).abs().max() > 1e-3 * paper.abs().max()


def test_the_original_layers_on_resnet50_are_rectified_and_said(capsys):
    model = get("resnet50")
    explainer = gradex.Explainer(model, **gradex.PAPER_OPTIONS)
    layers = explainer.layers_for(torch.randn(1, 3, 224, 224))
    assert str(layers.target.ref) == "layer4.2.conv3"
    assert [str(s.ref) for s in layers.stages] == RESNET50_STAGES
    described = explainer.describe(224)
    assert "stage_transform 'relu' applied to: conv1 (input), conv1, layer2.0.conv2" in described
    assert "read as the forward left it" in described
    exp = explainer(torch.randn(2, 3, 224, 224))
    assert exp.saliency.shape == (2, 1, 224, 224) and torch.isfinite(exp.saliency).all()
    with pytest.raises(ValueError, match=r"may be negative \(conv1 \(input\), conv1, layer2"):
        gradex.Explainer(model, stages="paper", stage_transform=None).layers_for(
            torch.randn(1, 3, 224, 224)
        )


def test_a_stage_read_from_a_module_input_is_hooked_and_released():
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.rand(2, 3, 64, 64)
    explainer = gradex.Explainer(model, stages="paper")
    captured = explainer.capture(x)
    # The first stage is conv1's input: the image itself.
    torch.testing.assert_close(captured.activations[0], x.clamp_min(0))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_models_the_rule_cannot_read_are_refused():
    no_pooling = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
    no_pooling = nn.Sequential(no_pooling, nn.LazyLinear(3))
    no_pooling(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="max pools and strided convolutions"):
        gradex.Explainer(no_pooling.eval(), stages="paper").layers_for(torch.rand(1, 3, 16, 16))
    pools_only = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    with pytest.raises(ValueError, match="target_layer='paper'.*no Conv2d"):
        gradex.Explainer(pools_only, target_layer="paper").layers_for(torch.rand(1, 3, 16, 16))


def test_convolutions_that_hold_their_padding_count_as_strided_convolutions():
    """EfficientNet-Lite0's strided convolutions are Conv2dStaticSamePadding modules with a
    ZeroPad2d inside. The original, looking only at modules without children, hooked nothing
    on it (its get_smooth_map returns None there); gradex counts them."""
    explainer = gradex.Explainer(get("efficientnet_lite0"), **gradex.PAPER_OPTIONS)
    layers = explainer.layers_for(torch.rand(1, 3, 224, 224))
    assert str(layers.target.ref) == "_conv_head"
    expected = ["_conv_stem (input)", "_conv_stem"]
    expected += [f"_blocks.{k}._depthwise_conv" for k in (1, 3, 5, 11)]
    assert [str(s.ref) for s in layers.stages] == expected
