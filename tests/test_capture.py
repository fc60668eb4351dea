"""Layer discovery and hooks: the layers chosen for every supported model, explicit choices."""

import pytest
import torch
from models_zoo import ALL_MODELS, TinyCNN, get
from torch import nn

import gradex
from gradex.capture import HookSession, choose_layers, trace

# What discovery must pick at 224x224: the target layer, then one stage per resolution.
EXPECTED = {
    "resnet18": ("layer4", ["relu", "layer1", "layer2", "layer3", "layer4"]),
    "resnet50": ("layer4", ["relu", "layer1", "layer2", "layer3", "layer4"]),
    "vgg16": (
        "features",
        ["features.3", "features.8", "features.15", "features.22", "features.29", "features"],
    ),
    "densenet121": (
        "features",
        [
            "features.relu0",
            "features.transition1.relu",
            "features.transition2.relu",
            "features.transition3.relu",
            # The 1024-channel output (norm5, which DenseNet's forward passes through a ReLU),
            # not the last dense layer's 128-channel bottleneck ReLU inside the block.
            "features",
        ],
    ),
    "mobilenet_v3_large": (
        "features",
        [
            "features.2.block.0",
            "features.4.block.0",
            "features.6.block.1",
            "features.13.block.0",
            "features",
        ],
    ),
    "efficientnet_b0": (
        "features",
        [
            "features.2.0.block.0",
            "features.3.0.block.0",
            "features.4.0.block.0",
            "features.6.0.block.0",
            "features",
        ],
    ),
    "convnext_tiny": ("features", ["features.1", "features.3", "features.5", "features"]),
    "efficientnet_lite0": (
        "_swish#1",
        [
            "_blocks.1._swish#0",
            "_blocks.3._swish#0",
            "_blocks.5._swish#0",
            "_blocks.11._swish#0",
            "_swish#1",
        ],
    ),
}
SIGNED_STAGES = {
    "mobilenet_v3_large": 2,
    "efficientnet_b0": 5,
    "convnext_tiny": 4,
    "densenet121": 1,
}


def _all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_discovery_picks_the_expected_layers(name):
    model = get(name)
    layers = gradex.Explainer(model).layers_for(torch.randn(1, 3, 224, 224))
    target, stages = EXPECTED[name]
    assert str(layers.target.ref) == target
    assert [str(s.ref) for s in layers.stages] == stages
    sizes = [s.shape[-1] for s in layers.stages]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert sizes[-1] == layers.target.shape[-1]  # one stage per resolution down to the target's
    signed = [s for s in layers.stages if s.kind != "non-negative"]
    assert len(signed) == SIGNED_STAGES.get(name, 0)
    assert _all_hooks(model) == 0


def test_describe_names_the_layers_and_the_transform():
    text = gradex.Explainer(get("efficientnet_b0")).describe(64)
    assert "target layer: features" in text and "features.2.0.block.0" in text
    assert "stage_transform 'relu' applied to" in text


def test_strict_transform_refuses_a_model_without_post_relu_maps():
    explainer = gradex.Explainer(get("convnext_tiny"), stage_transform=None)
    with pytest.raises(ValueError, match="no non-negative"):
        explainer.layers_for(torch.randn(1, 3, 64, 64))


def test_explicit_layers_by_module_and_by_name():
    model = TinyCNN().eval()
    explainer = gradex.Explainer(model, target_layer=model.stage2, stages=["stage1", "stage2.2"])
    layers = explainer.layers_for(torch.randn(1, 3, 32, 32))
    assert str(layers.target.ref) == "stage2"
    assert [str(s.ref) for s in layers.stages] == ["stage1", "stage2.2"]


def test_a_reused_module_must_be_named_with_its_call():
    model = get("efficientnet_lite0")
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(
        ValueError, match=r"runs 2 times; name one of _blocks.3._swish#0, _blocks.3._swish#1"
    ):
        gradex.Explainer(model, target_layer="_blocks.3._swish").layers_for(x)
    layers = gradex.Explainer(model, target_layer="_blocks.3._swish#1").layers_for(x)
    assert layers.target.ref.call == 1


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"target_layer": "stage9"}, ValueError, "no submodule named 'stage9'"),
        ({"target_layer": "fc"}, ValueError, "produced no (B,C,H,W) output"),
        ({"target_layer": nn.ReLU()}, ValueError, "not a submodule of the model"),
        ({"target_layer": 3}, TypeError, "target_layer must be a module or a dotted name"),
        ({"target_layer": "stage1#x"}, ValueError, "not 'name' or 'name#k'"),
        ({"stages": "stage1"}, TypeError, "stages must be a list"),
        ({"stages": ["stage1.0"]}, ValueError, "stages: stage1.0 may be negative"),
    ],
)
def test_bad_layer_choices(kwargs, error, words):
    explainer = gradex.Explainer(TinyCNN().eval(), stage_transform=None, **kwargs)
    with pytest.raises(error) as info:
        explainer.layers_for(torch.randn(1, 3, 32, 32))
    assert words in str(info.value)


def test_a_model_without_spatial_layers_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    with pytest.raises(ValueError, match="no layer with a spatial"):
        gradex.Explainer(model).layers_for(torch.randn(1, 3, 8, 8))
    assert _all_hooks(model) == 0  # discovery failed after its forward: its hooks are gone


def test_batchnorm_before_an_inplace_relu_is_not_taken_for_non_negative():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    traced = trace(model, torch.randn(1, 3, 8, 8))
    kinds = {str(e.ref): e.kind for e in traced}
    assert kinds == {"0": "other", "1": "other", "2": "non-negative"}


def test_hook_session_ignores_other_threads_and_cleans_up_after_an_error():
    import threading

    model = TinyCNN().eval()
    traced = trace(model, torch.randn(1, 3, 32, 32))
    layers = choose_layers(traced, (32, 32), model)
    seen = []
    session = HookSession(model, layers, lambda k, t: seen.append(k), None)
    with session:
        worker = threading.Thread(target=lambda: model(torch.randn(1, 3, 32, 32)))
        worker.start()
        worker.join()
        assert seen == []  # another thread's forward is not captured
        model(torch.randn(1, 3, 32, 32))
    assert seen == [0, 1, 2]

    def fail(k, t):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), HookSession(model, layers, fail, None):
        model(torch.randn(1, 3, 32, 32))
    assert _all_hooks(model) == 0


class TakesNoHooks(nn.ReLU):
    """A module that refuses hooks, as a TorchScript module does: registration fails midway."""

    def register_forward_hook(self, *args, **kwargs):
        raise RuntimeError("this module takes no hooks")


def _model_refusing_hooks(refusing: bool = True):
    relu = TakesNoHooks() if refusing else nn.ReLU()
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), relu,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def test_discovery_removes_its_hooks_when_registering_them_fails():
    model = _model_refusing_hooks()
    with pytest.raises(RuntimeError, match="takes no hooks"):
        trace(model, torch.randn(1, 3, 8, 8))
    assert _all_hooks(model) == 0


def test_hook_session_removes_its_hooks_when_registering_them_fails():
    twin = _model_refusing_hooks(refusing=False)
    layers = choose_layers(trace(twin, torch.randn(1, 3, 8, 8)), (8, 8), twin, "3", ["1"])
    model = _model_refusing_hooks()
    session = HookSession(model, layers, lambda k, t: None, lambda t: None)
    with pytest.raises(RuntimeError, match="takes no hooks"), session:
        pass
    assert _all_hooks(model) == 0


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_trace_refuses_torchscript_before_touching_the_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 3))),
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"model: its submodule '2' is a TorchScript module"):
        trace(model, torch.randn(1, 3, 8, 8))
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_the_target_layer_does_not_move_when_it_is_1x1_at_this_input_size():
    """ResNet's layer4 is 1x1 at 32x32: explaining layer3 instead would silently give another
    layer's maps at this size; the error names the layer and the size where it works."""
    model = get("resnet18")
    with pytest.raises(ValueError) as info:
        gradex.Explainer(model).layers_for(torch.randn(1, 3, 32, 32))
    message = str(info.value)
    assert "layer4" in message and "1x1" in message and "at least 64x64" in message
    assert "target_layer=" in message
    assert str(gradex.Explainer(model).layers_for(torch.randn(1, 3, 64, 64)).target.ref) == "layer4"
    # Naming an earlier layer explains it at 32x32.
    exp = gradex.Explainer(model, target_layer="layer3")(torch.randn(1, 3, 32, 32))
    assert exp.cam.shape == (1, 1, 2, 2)


class ConvHeadAfterPooling(TinyCNN):
    """A 1x1 convolution on the pooled features (timm's MobileNetV3 head): 1x1 by design."""

    def __init__(self):
        super().__init__()
        self.head_conv = nn.Sequential(nn.Conv2d(32, 16, 1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.head_conv(self.pool(x)).flatten(1))


def test_a_1x1_map_after_global_pooling_does_not_stop_discovery():
    layers = gradex.Explainer(ConvHeadAfterPooling().eval()).layers_for(torch.randn(1, 3, 32, 32))
    assert str(layers.target.ref) == "stage3"


def test_densenet_deepest_stage_is_the_block_output_not_a_bottleneck():
    layers = gradex.Explainer(get("densenet121")).layers_for(torch.randn(1, 3, 64, 64))
    deepest = layers.stages[-1]
    assert str(deepest.ref) == "features" and deepest.shape[1] == 1024
    assert deepest.kind != "non-negative"  # norm5's output: the relu stage transform applies
    assert all(s.shape[1] >= 256 for s in layers.stages[1:])  # transition ReLUs, full width
