"""The Explainer end to end: every method on every model, per-sample independence, no side
effects on the model, targets, and bad input."""

import threading

import pytest
import torch
import torch.nn.functional as F
from models_zoo import ALL_MODELS, TinyCNN, get
from torch import nn

import gradex
from gradex import cams, reference

METHODS = list(cams.METHODS)


def independent_gradcam(model, layer_name, call, x):
    """Grad-CAM with a full autograd graph and a hook of its own: a second way to the answer."""
    module = dict(model.named_modules())[layer_name]
    seen = []

    def keep(mod, inputs, output):
        seen.append(output)
        # later in-place ops (DenseNet's inplace ReLU) must not change the kept tensor
        return output.clone() if len(seen) == call + 1 else None

    handle = module.register_forward_hook(keep)
    try:
        logits = model(x)
    finally:
        handle.remove()
    activations = seen[call]
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grads,) = torch.autograd.grad(score, activations)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(1, keepdim=True)).detach()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_method_runs_and_gradcam_matches_an_independent_computation(name):
    model = get(name)
    x = torch.randn(2, 3, 160, 160)
    for method in METHODS:
        exp = gradex.Explainer(model, method=method)(x)
        assert exp.saliency.shape == (2, 1, 160, 160) and exp.saliency.dtype == torch.float32
        assert torch.isfinite(exp.saliency).all()
        assert exp.saliency.min() >= 0 and exp.saliency.max() <= 1
        assert exp.cam.shape == (2, 1, 5, 5) and (exp.cam >= 0).all()
        assert exp.target.shape == (2,) and exp.score.shape == (2,)
        if method == "gradcam":
            layers = gradex.Explainer(model).layers_for(x)
            ref = layers.target.ref
            expected = independent_gradcam(model, ref.name, ref.call, x)
            torch.testing.assert_close(exp.cam, expected, rtol=1e-4, atol=1e-5 * expected.max())
            assert (exp.saliency.flatten(1).amax(1) == 1).all()  # a real map, not zeros


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_a_batch_equals_each_image_alone(name, method):
    model = get(name)
    explainer = gradex.Explainer(model, method=method)
    x = torch.randn(3, 3, 96, 112)
    together = explainer(x)
    for b in range(3):
        alone = explainer(x[b : b + 1])
        torch.testing.assert_close(together.saliency[b : b + 1], alone.saliency, atol=1e-4, rtol=0)
        assert together.target[b] == alone.target[0]


def test_saliency_equals_extrapolate_on_the_captured_stages():
    model = get("resnet18")
    explainer = gradex.Explainer(model)
    x = torch.randn(2, 3, 64, 64)
    exp = explainer(x)
    captured = explainer.capture(x)
    assert [tuple(a.shape[-2:]) for a in captured.activations] == [
        (32, 32),
        (16, 16),
        (8, 8),
        (4, 4),
        (2, 2),
    ]
    torch.testing.assert_close(captured.logits, exp.logits)
    again = gradex.extrapolate(exp.cam, captured.activations, output_size=(64, 64))
    torch.testing.assert_close(again, exp.saliency)


def test_signed_stages_are_captured_with_the_transform_applied():
    explainer = gradex.Explainer(get("efficientnet_b0"))
    captured = explainer.capture(torch.randn(1, 3, 64, 64))
    assert all(a.min() >= 0 for a in captured.activations)


def test_gradual_false_gives_the_normalised_upsampled_cam():
    model = get("resnet18")
    x = torch.randn(2, 3, 64, 64)
    exp = gradex.Explainer(model, gradual=False)(x)
    up = F.interpolate(exp.cam, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(exp.saliency, reference.minmax_maps(up))
    paper = gradex.Explainer(model, gradual=False, normalize="standardize")(x)
    torch.testing.assert_close(paper.saliency, reference.normalize_maps(up))


def test_paper_options_give_the_papers_formula():
    model = get("resnet18")
    x = torch.randn(2, 3, 64, 64)
    explainer = gradex.Explainer(model, stage_weighting="global", normalize="standardize")
    exp = explainer(x)
    captured = explainer.capture(x)
    expected = reference.extrapolate(
        exp.cam, captured.activations, (64, 64), stage_weighting="global", normalize="standardize"
    )
    torch.testing.assert_close(exp.saliency, expected)
    default = gradex.Explainer(model)(x)
    assert (default.saliency - exp.saliency).abs().max() > 0.1  # the options do change the map


def test_bad_normalize_and_stage_weighting_are_refused():
    model = get("resnet18")
    with pytest.raises(ValueError, match="normalize must be one of"):
        gradex.Explainer(model, normalize="z")
    with pytest.raises(ValueError, match="always normalised"):
        gradex.Explainer(model, normalize=None)
    with pytest.raises(ValueError, match="stage_weighting must be one of"):
        gradex.Explainer(model, stage_weighting="paper")


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_side_effects_on_the_model():
    model = TinyCNN().eval()
    frozen = model.stage1[0].weight
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_enabled = torch.is_grad_enabled()

    exp = gradex.Explainer(model)(torch.randn(4, 3, 32, 32))

    assert all(p.grad is None for p in model.parameters())
    assert frozen.requires_grad is False
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "stage1.0.weight")
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats untouched
    assert _hook_count(model) == 0
    assert torch.is_grad_enabled() == grad_enabled
    for tensor in (exp.saliency, exp.cam, exp.score, exp.logits):
        assert not tensor.requires_grad and tensor.grad_fn is None


def test_layers_before_the_target_record_no_graph():
    model = TinyCNN().eval()
    grad_modes = {}
    for name in ("stage1", "stage2", "stage3", "fc"):
        dict(model.named_modules())[name].register_forward_hook(
            lambda m, i, o, name=name: grad_modes.__setitem__(name, o.requires_grad)
        )
    gradex.Explainer(model, target_layer="stage2")(torch.randn(1, 3, 32, 32))
    assert grad_modes == {"stage1": False, "stage2": False, "stage3": True, "fc": True}


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = TinyCNN()

    def forward(self, x):
        self.body(x)
        raise RuntimeError("head failed")


def test_hooks_are_removed_when_the_forward_raises():
    model = Exploding().eval()
    explainer = gradex.Explainer(model, target_layer="body.stage3", stages=["body.stage1"])
    with pytest.raises(RuntimeError, match="head failed"):
        explainer(torch.randn(1, 3, 32, 32))
    assert _hook_count(model) == 0
    assert torch.is_grad_enabled()


def test_targets():
    model = get("resnet18")
    explainer = gradex.Explainer(model)
    x = torch.randn(3, 3, 64, 64)
    top = explainer(x)
    assert torch.equal(top.target, top.logits.argmax(1))
    assert torch.equal(explainer(x, target=7).target, torch.tensor([7, 7, 7]))
    per_sample = explainer(x, target=[1, 2, 3])
    assert torch.equal(per_sample.target, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(per_sample.score, per_sample.logits[[0, 1, 2], [1, 2, 3]])
    assert torch.equal(explainer(x, target=torch.tensor([4, 5, 6])).target, torch.tensor([4, 5, 6]))
    by_ids = explainer(x, target=lambda logits: logits.argsort(1)[:, -2])  # runner-up class
    assert torch.equal(by_ids.target, top.logits.argsort(1)[:, -2])
    contrast = explainer(x, target=lambda logits: logits[:, 3] - logits[:, 5])
    assert torch.equal(contrast.target, torch.tensor([-1, -1, -1]))
    torch.testing.assert_close(contrast.score, top.logits[:, 3] - top.logits[:, 5])


@pytest.mark.parametrize(
    "target, error, words",
    [
        (1000, ValueError, "target 1000 is out of range for a model with 1000 classes"),
        ([1, -1, 2], ValueError, "target -1 is out of range"),
        ([1, 2], ValueError, "one class id per sample (3)"),
        ([1.0, 2.0, 3.0], TypeError, "integer class ids"),
        (True, TypeError, "target must be None, an int"),
        (lambda logits: logits, ValueError, "the callable must return a (3,) tensor"),
    ],
)
def test_bad_targets(target, error, words):
    explainer = gradex.Explainer(get("resnet18"))
    with pytest.raises(error) as info:  # 64x64: the smallest size where layer4 is not 1x1
        explainer(torch.randn(3, 3, 64, 64), target=target)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "x, error, words",
    [
        (torch.randn(3, 32, 32), ValueError, "x must be an image batch of shape (B,C,H,W)"),
        (torch.randint(0, 255, (1, 3, 32, 32)), TypeError, "x must be a floating tensor"),
        (torch.randn(0, 3, 32, 32), ValueError, "x is empty"),
        (torch.full((1, 3, 32, 32), float("nan")), ValueError, "x contains NaN or Inf"),
        (
            torch.randn(1, 3, 32, 32, device="meta"),
            ValueError,
            "x is a meta tensor (a shape without values)",
        ),
    ],
)
def test_bad_images(x, error, words):
    with pytest.raises(error) as info:
        gradex.Explainer(TinyCNN())(x)
    assert words in str(info.value)


def test_bad_explainer_arguments_and_modes():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gradex.Explainer(lambda x: x)
    with pytest.raises(ValueError, match="stage_transform must be one of"):
        gradex.Explainer(TinyCNN(), stage_transform="square")
    with pytest.raises(ValueError, match="method must be one of"):
        gradex.Explainer(TinyCNN(), method="magic")
    with pytest.raises(ValueError, match="backend must be one of: auto, reference, cpu"):
        gradex.Explainer(TinyCNN(), backend="fastest")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        gradex.Explainer(TinyCNN())(torch.randn(1, 3, 32, 32))


def test_a_model_without_logits_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(ValueError, match=r"model must return \(B,K\) logits"):
        gradex.Explainer(model)(torch.randn(1, 3, 16, 16))


def test_non_finite_activations_are_reported():
    model = TinyCNN().eval()
    with torch.no_grad():
        model.stage1[0].bias.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        gradex.Explainer(model)(torch.randn(1, 3, 32, 32))


def test_a_dead_stage_gives_zeros_not_nan():
    model = TinyCNN().eval()
    with torch.no_grad():
        model.stage1[1].bias.fill_(-1e3)  # every stage-1 activation is clamped to 0 by ReLU
    exp = gradex.Explainer(model)(torch.randn(2, 3, 32, 32))
    assert torch.equal(exp.saliency, torch.zeros_like(exp.saliency))


def test_two_explainers_in_two_threads_agree_with_running_alone():
    models = [get("resnet18"), TinyCNN(classes=1000).eval()]
    explainers = [gradex.Explainer(m) for m in models]
    shared = gradex.Explainer(models[0], method="layercam")  # same model, other explainer
    inputs = [torch.randn(2, 3, 64, 64) for _ in range(3)]
    jobs = [(explainers[0], inputs[0]), (explainers[1], inputs[1]), (shared, inputs[2])]
    alone = [e(x).saliency for e, x in jobs]
    together = [None] * 3
    errors = []

    def run(i):
        try:
            for _ in range(3):
                together[i] = jobs[i][0](jobs[i][1]).saliency
        except Exception as error:  # surfaced below, with the thread's traceback
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_cuda_explanation_matches_the_cpu(method):
    import copy

    cpu_model = get("resnet18")
    cuda_model = copy.deepcopy(cpu_model).cuda()
    x = torch.randn(2, 3, 96, 96)
    on_cpu = gradex.Explainer(cpu_model, method=method)(x)
    on_gpu = gradex.Explainer(cuda_model, method=method)(x.cuda())
    assert on_gpu.saliency.device.type == "cuda"
    assert torch.equal(on_gpu.target.cpu(), on_cpu.target)
    # cuDNN convolutions (TF32 off by default for them in fp32) differ from the CPU's in the
    # last bits; the normalised map moves by far less than this.
    torch.testing.assert_close(on_gpu.saliency.cpu(), on_cpu.saliency, atol=2e-3, rtol=0)


class OverwritesItsInput(nn.Module):
    """Adds to its input in place before a strided conv, as some blocks do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x):
        x.add_(1.0)
        return self.conv(x)


def test_capture_keeps_stages_as_they_were_produced():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1),
        nn.ReLU(),
        OverwritesItsInput(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    explainer = gradex.Explainer(model, target_layer="3", stages=["1", "3"])
    x = torch.randn(2, 3, 16, 16)
    captured = explainer.capture(x)
    with torch.no_grad():
        produced = model[1](model[0](x))
    torch.testing.assert_close(captured.activations[0], produced)
    exp = explainer(x)
    again = gradex.extrapolate(exp.cam, captured.activations, output_size=(16, 16))
    torch.testing.assert_close(again, exp.saliency)


def test_channels_last_model_and_input_give_the_same_map():
    import copy

    model = get("resnet18")
    x = torch.randn(2, 3, 64, 64)
    expected = gradex.Explainer(model)(x).saliency
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out = gradex.Explainer(channels_last)(x.to(memory_format=torch.channels_last)).saliency
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_bfloat16_autocast_keeps_the_math_in_float32():
    model = get("resnet18")
    explainer = gradex.Explainer(model)
    x = torch.randn(2, 3, 64, 64)
    expected = explainer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = explainer(x)
    assert low.saliency.dtype == torch.float32 and low.cam.dtype == torch.float32
    assert torch.isfinite(low.saliency).all() and low.saliency.max() == 1
    # bf16 keeps 8 bits of mantissa: the maps agree in the large, not to the last bit
    assert (low.saliency - expected.saliency).abs().mean() < 0.01


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large", "efficientnet_lite0"])
def test_every_available_backend_gives_the_reference_map(name):
    # The stages are reduced inside the hooks by the chosen backend; the maps must agree.
    model, x = get(name), torch.rand(2, 3, 224, 224)
    expected = gradex.Explainer(model, backend="reference")(x)
    for backend, (available, _) in gradex.backends().items():
        devices = gradex.ops._REGISTRY[backend].devices
        if backend == "reference" or not available or not ("cpu" in devices or "*" in devices):
            continue
        got = gradex.Explainer(model, backend=backend)(x)
        torch.testing.assert_close(got.cam, expected.cam)
        torch.testing.assert_close(got.saliency, expected.saliency, rtol=1e-4, atol=1e-4)


def test_a_float64_model_is_explained_by_every_backend():
    # float64 passes the API's checks, so every backend must take it (the kernels read it and
    # sum in float32, as the reference does), with the default 'auto' first.
    import copy

    model = copy.deepcopy(get("resnet18")).double()  # get() shares its models between tests
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    expected = gradex.Explainer(model, backend="reference")(x)
    for backend, (available, _) in gradex.backends().items():
        devices = gradex.ops._REGISTRY[backend].devices
        if not available or not ("cpu" in devices or "*" in devices):
            continue
        got = gradex.Explainer(model, backend=backend)(x)
        assert got.saliency.dtype == torch.float32
        torch.testing.assert_close(got.saliency, expected.saliency, rtol=1e-4, atol=1e-4)
    auto = gradex.Explainer(model)(x)
    torch.testing.assert_close(auto.saliency, expected.saliency, rtol=1e-4, atol=1e-4)


# -- runtime safety: hooks, models gradex cannot read, targets, training mode ---------------------


def _tiny_scripted_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        torch.jit.script(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_model_with_a_scripted_submodule_is_refused_and_keeps_no_hooks():
    model = _tiny_scripted_model()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(TypeError) as info:
        gradex.Explainer(model)(x)
    message = str(info.value)
    assert message.startswith("model") and "'2'" in message and "TorchScript" in message
    assert "eager" in message
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    # A later plain forward keeps nothing alive: its output is freed when dropped.
    import weakref

    seen = []
    handle = model[0].register_forward_hook(lambda m, i, o: seen.append(weakref.ref(o)))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen and seen[0]() is None


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_traced_or_scripted_model_is_refused_up_front():
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 32, 32)
    for compiled in (torch.jit.trace(model, x), torch.jit.script(model)):
        with pytest.raises(TypeError) as info:
            gradex.Explainer(compiled)
        message = str(info.value)
        assert message.startswith("model is a TorchScript module")
        assert "eager torch.nn.Module" in message and "hooks" in message


@pytest.mark.parametrize(
    "target, words",
    [
        (torch.tensor(3.7), "target must hold integer class ids, got torch.float32"),
        (torch.tensor(True), "target must hold integer class ids, got torch.bool"),
        (torch.tensor([True, False, True]), "target must hold integer class ids, got torch.bool"),
        (torch.tensor(2.0, dtype=torch.float64), "target must hold integer class ids"),
        (3.7, "target must hold integer class ids"),
        (False, "target must be None, an int"),
    ],
)
def test_float_and_bool_targets_are_refused_in_every_form(target, words):
    explainer = gradex.Explainer(TinyCNN().eval())
    with pytest.raises(TypeError) as info:
        explainer(torch.randn(3, 3, 32, 32), target=target)
    assert words in str(info.value)


@pytest.mark.parametrize("kind", ["float64", "float32", "bool_", "float_array", "bool_array"])
def test_numpy_float_and_bool_targets_are_refused(kind):
    np = pytest.importorskip("numpy")
    target = {
        "float64": np.float64(2.0),
        "float32": np.float32(2.5),
        "bool_": np.bool_(True),
        "float_array": np.array([1.0, 2.0, 3.0]),
        "bool_array": np.array([True, False, True]),
    }[kind]
    explainer = gradex.Explainer(TinyCNN().eval())
    with pytest.raises(TypeError) as info:
        explainer(torch.randn(3, 3, 32, 32), target=target)
    assert str(info.value).startswith("target")


@pytest.mark.parametrize(
    "kind", ["int64", "int32", "uint8", "0-d array", "1-d int32 array", "int32 tensor"]
)
def test_integer_targets_of_any_integer_type_are_accepted(kind):
    np = pytest.importorskip("numpy")
    target, expected = {
        "int64": (np.int64(2), [2, 2, 2]),
        "int32": (np.int32(7), [7, 7, 7]),
        "uint8": (np.uint8(4), [4, 4, 4]),
        "0-d array": (np.array(5), [5, 5, 5]),
        "1-d int32 array": (np.array([1, 2, 3], dtype=np.int32), [1, 2, 3]),
        "int32 tensor": (torch.tensor(6, dtype=torch.int32), [6, 6, 6]),
    }[kind]
    explainer = gradex.Explainer(TinyCNN().eval())
    x = torch.randn(3, 3, 32, 32)
    exp = explainer(x, target=target)
    assert torch.equal(exp.target, torch.tensor(expected))
    assert torch.equal(exp.saliency, explainer(x, target=expected).saliency)
    with pytest.raises(ValueError, match="target 10 is out of range"):
        explainer(x, target=np.int64(10))


def test_a_model_in_training_mode_is_refused_and_left_as_it_was():
    # Switching a shared model to eval and back during a call races with other threads using it
    # (their forwards would see the wrong mode, or update BatchNorm statistics): gradex never
    # switches a model's mode, and asks for model.eval() instead.
    model = TinyCNN()
    model.train()
    model.stage2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer = gradex.Explainer(model)
    x = torch.randn(2, 3, 32, 32)
    for call in (
        lambda: explainer(x),
        lambda: explainer.capture(x),
        lambda: explainer.layers_for(x),
        lambda: explainer.describe(32),
    ):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith("model is in training mode") and "model.eval()" in message
        assert "stage1" in message
    assert model.training and not model.stage2.training and model.stage1[1].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _hook_count(model) == 0
    model.eval()
    assert explainer(x).saliency.shape == (2, 1, 32, 32)  # the same explainer, once in eval mode


# -- where users call it: torch.no_grad(), torch.inference_mode() --------------------------------


@pytest.mark.parametrize("method", [*METHODS, "excitation", "contrastive excitation"])
def test_explaining_inside_no_grad_gives_the_same_map(method):
    # An evaluation loop runs under torch.no_grad(); the score used to be computed there too,
    # without a graph, and the call failed blaming the target layer.
    model = get("resnet18")
    x = torch.randn(2, 3, 64, 64)
    explainer = gradex.Explainer(model, method=method)
    expected = explainer(x)
    with torch.no_grad():
        got = explainer(x, target=[1, 7])
        again = explainer(x)
    for field in ("saliency", "cam", "target", "score", "logits"):
        torch.testing.assert_close(getattr(again, field), getattr(expected, field))
    assert got.target.tolist() == [1, 7] and got.saliency.amax() == 1
    assert not got.score.requires_grad and not got.saliency.requires_grad


def test_no_grad_is_still_on_after_an_explanation():
    explainer = gradex.Explainer(TinyCNN().eval())
    with torch.no_grad():
        explainer(torch.randn(1, 3, 32, 32))
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_capture_works_inside_no_grad_and_inference_mode():
    model = get("resnet18")
    x = torch.randn(2, 3, 64, 64)
    explainer = gradex.Explainer(model)
    expected = explainer.capture(x)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got = explainer.capture(x)
        for a, b in zip(got.activations, expected.activations, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        heatmap = torch.rand(2, 1, 2, 2) + 0.1
        torch.testing.assert_close(
            gradex.extrapolate(heatmap, got.activations),
            gradex.extrapolate(heatmap, expected.activations),
        )


@pytest.mark.parametrize("method", ["gradcam", "excitation"])
def test_inference_mode_is_refused_with_what_to_do(method):
    explainer = gradex.Explainer(TinyCNN().eval(), method=method)
    with torch.inference_mode(), pytest.raises(RuntimeError) as error:
        explainer(torch.randn(1, 3, 32, 32))
    message = str(error.value)
    assert "inference_mode()" in message and "torch.no_grad()" in message
    assert "outside" in message


# -- models returning more than logits: output= ---------------------------------------------------


class _WithAux(nn.Module):
    """A classifier whose forward returns ``wrap(logits, features)``."""

    def __init__(self, wrap):
        super().__init__()
        self.net = TinyCNN()
        self.wrap = wrap

    def forward(self, x):
        features = self.net.stage3(self.net.stage2(self.net.stage1(x)))
        logits = self.net.fc(self.net.pool(features).flatten(1))
        return self.wrap(logits, features)


class _HFStyleOutput:
    def __init__(self, logits):
        self.logits = logits


OUTPUT_KINDS = {
    "tuple": (lambda logits, aux: (logits, aux), 0),
    "tuple-last": (lambda logits, aux: (aux, logits), -1),
    "dict": (lambda logits, aux: {"aux": aux, "logits": logits}, "logits"),
    "attribute": (lambda logits, aux: _HFStyleOutput(logits), "logits"),
    "callable": (lambda logits, aux: {"heads": [logits * 1]}, lambda out: out["heads"][0]),
}


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_output_selects_the_logits_of_a_model_returning_more(kind):
    wrap, selector = OUTPUT_KINDS[kind]
    model = _WithAux(wrap).eval()
    plain = _WithAux(lambda logits, aux: logits).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    expected = gradex.Explainer(plain)(x)
    for mode in (torch.enable_grad, torch.no_grad):
        with mode():
            got = gradex.Explainer(model, output=selector)(x)
        torch.testing.assert_close(got.saliency, expected.saliency)
        torch.testing.assert_close(got.logits, expected.logits)
    captured = gradex.Explainer(model, output=selector).capture(x)
    torch.testing.assert_close(captured.logits, expected.logits)
    static = gradex.Explainer(model, output=selector).static(x)
    torch.testing.assert_close(static(x).saliency, expected.saliency)


@pytest.mark.parametrize("kind", ["tuple", "dict", "attribute"])
def test_a_model_returning_more_than_logits_is_refused_naming_output(kind):
    model = _WithAux(OUTPUT_KINDS[kind][0]).eval()
    with pytest.raises(ValueError, match=r"model must return \(B,K\) logits.*pass output="):
        gradex.Explainer(model)(torch.randn(1, 3, 32, 32))


def test_a_bad_output_selector_is_refused_by_name():
    model = _WithAux(lambda logits, aux: (logits, aux)).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="output=5: .* has no index 5"):
        gradex.Explainer(model, output=5)(x)
    with pytest.raises(ValueError, match=r"output=1 must select \(B,K\) logits"):
        gradex.Explainer(model, output=1)(x)  # the (B,C,h,w) features
    with pytest.raises(ValueError, match="has no key or attribute 'logits'"):
        gradex.Explainer(model, output="logits")(x)
    with pytest.raises(TypeError, match="output must be None, an int index, a str key"):
        gradex.Explainer(model, output=1.5)
