"""StaticExplainer: the low-latency mode equals the eager explanation, refuses a changed shape,
and takes targets the way the eager one does. The CUDA-graph tests need a GPU; the eager static
mode (the CPU fast path) runs the same explanation code and is tested here on every method."""

import copy

import pytest
import torch
from models_zoo import TinyCNN, get

import gradex
from gradex import cams

METHODS = list(cams.METHODS)
FIELDS = ("saliency", "cam", "target", "score", "logits")


def assert_same_explanation(got, expected, **tolerance):
    for field in FIELDS:
        a, b = getattr(got, field), getattr(expected, field)
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, field
        if tolerance and a.is_floating_point():
            torch.testing.assert_close(a, b, **tolerance, msg=field)
        else:
            assert torch.equal(a, b), field


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_static_equals_eager_for_every_method(name, method):
    model = get(name)
    explainer = gradex.Explainer(model, method=method)
    example, x = torch.randn(2, 3, 96, 80), torch.randn(2, 3, 96, 80)
    static = explainer.static(example)
    assert static.mode == "eager"
    for target in (None, 3, [5, 9]):
        assert_same_explanation(static(x, target=target), explainer(x, target=target))


def test_static_follows_the_explainer_settings():
    model = get("resnet18")
    x = torch.randn(2, 3, 64, 64)
    for options in (
        {"gradual": False},
        {"stage_transform": "abs", "stages": ["layer1.0.conv1", "layer2"]},
        {"backend": "reference"},
        {"amp_dtype": torch.bfloat16},
    ):
        explainer = gradex.Explainer(model, **options)
        assert_same_explanation(explainer.static(x)(x), explainer(x))


def test_channels_last_example_keeps_its_layout_and_the_caller_keeps_its_input():
    model = copy.deepcopy(get("resnet18")).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    kept = x.clone()
    explainer = gradex.Explainer(model)
    static = explainer.static(x)
    assert static.input.is_contiguous(memory_format=torch.channels_last)
    assert static.input.data_ptr() != x.data_ptr()
    assert_same_explanation(static(x), explainer(x))
    assert torch.equal(x, kept)


def test_filling_the_static_input_in_place():
    model = get("resnet18")
    explainer = gradex.Explainer(model)
    static = explainer.static(torch.randn(1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    static.input.copy_(x)
    assert_same_explanation(static(static.input), explainer(x))


@pytest.mark.parametrize(
    "x, words",
    [
        (
            torch.randn(3, 3, 64, 64),
            "x has shape (3, 3, 64, 64) but this StaticExplainer was built",
        ),
        (torch.randn(2, 3, 64, 65), "x has shape (2, 3, 64, 65)"),
        (torch.randn(2, 3, 64, 64, dtype=torch.float64), "x has dtype torch.float64"),
        (torch.randn(2, 3, 64, 64, device="meta"), "x is a meta tensor"),
        (torch.full((2, 3, 64, 64), float("inf")), "x contains NaN or Inf"),
    ],
)
def test_a_changed_input_raises(x, words):
    static = gradex.Explainer(get("resnet18")).static(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError) as info:
        static(x)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "target, error, words",
    [
        (10, ValueError, "target 10 is out of range for a model with 10 classes"),
        ([1, -1], ValueError, "target -1 is out of range"),
        ([1], ValueError, "one class id per sample (2)"),
        ([1.0, 2.0], TypeError, "integer class ids"),
        ("cat", TypeError, "target must be None, an int"),
        (lambda logits: logits.argmax(1), TypeError, "a callable target cannot be captured"),
    ],
)
def test_bad_targets(target, error, words):
    static = gradex.Explainer(TinyCNN().eval()).static(torch.randn(2, 3, 32, 32))
    with pytest.raises(error) as info:
        static(torch.randn(2, 3, 32, 32), target=target)
    assert words in str(info.value)
    # a refused target leaves the explainer as it was: the next call explains the top-1
    out = static(torch.randn(2, 3, 32, 32))
    assert torch.equal(out.target, out.logits.argmax(1))


def test_a_target_list_with_none_explains_those_samples_at_their_top1():
    """A server batches requests that name a class with requests that do not."""
    explainer = gradex.Explainer(TinyCNN().eval())
    x = torch.randn(3, 3, 32, 32)
    static = explainer.static(x)
    got = static(x, target=[None, 7, None])
    top1 = explainer(x).target
    expected = explainer(x, target=[int(top1[0]), 7, int(top1[2])])
    assert_same_explanation(got, expected, rtol=1e-5, atol=1e-6)
    # The mask does not stick: the next call with no target explains every top-1 again.
    assert torch.equal(static(x).target, top1)
    with pytest.raises(ValueError, match="one class id per sample"):
        static(x, target=[None, 7])
    with pytest.raises(ValueError, match="out of range"):
        static(x, target=[None, 10, None])


def test_bad_construction():
    explainer = gradex.Explainer(TinyCNN().eval())
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mode must be one of"):
        explainer.static(x, mode="fastest")
    with pytest.raises(ValueError, match="mode 'cuda_graph' needs example on a CUDA device"):
        explainer.static(x, mode="cuda_graph")
    with pytest.raises(ValueError, match="warmup must be an int >= 1"):
        explainer.static(x, warmup=0)
    with pytest.raises(TypeError, match="explainer must be a gradex.Explainer"):
        gradex.StaticExplainer(TinyCNN(), x)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        explainer.static(torch.full((1, 3, 32, 32), float("nan")))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explainer.static(x)


@pytest.mark.parametrize("method", ["gradcam", "contrastive excitation"])
def test_static_built_and_called_inside_no_grad_equals_eager(method):
    explainer = gradex.Explainer(get("resnet18"), method=method)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        static = explainer.static(x)
        got = static(x, target=[2, 5])
    assert_same_explanation(got, explainer(x, target=[2, 5]))


def test_an_eager_static_call_inside_inference_mode_says_what_to_do():
    x = torch.randn(1, 3, 32, 32)
    static = gradex.Explainer(TinyCNN().eval()).static(x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"use torch.no_grad\(\)"):
        static(x)


def test_amp_dtype_is_checked():
    with pytest.raises(ValueError, match="amp_dtype must be torch.bfloat16, torch.float16 or None"):
        gradex.Explainer(TinyCNN(), amp_dtype=torch.float64)


def test_bf16_amp_stays_close_to_fp32():
    # The tolerance users can expect from amp_dtype=torch.bfloat16 (8 mantissa bits in the
    # forward; the CAM and GE math in fp32): maps in [0, 1] within 0.02 on average.
    model = get("resnet18")
    x = torch.randn(4, 3, 96, 96)
    full = gradex.Explainer(model)(x)
    low = gradex.Explainer(model, amp_dtype=torch.bfloat16)(x)
    assert low.saliency.dtype == torch.float32 and low.cam.dtype == torch.float32
    assert torch.equal(low.target, full.target)
    assert (low.saliency - full.saliency).abs().mean() < 0.02
    correlation = torch.corrcoef(torch.stack([low.saliency.flatten(), full.saliency.flatten()]))
    assert correlation[0, 1] > 0.98


# -- CUDA graphs ----------------------------------------------------------------------------------


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["auto", "cuda", "triton", "reference"])
@pytest.mark.parametrize("method", METHODS)
def test_cuda_graph_equals_eager(method, backend):
    if backend != "auto" and not gradex.backends()[backend][0]:
        pytest.skip(f"backend {backend} not available")
    model = copy.deepcopy(get("resnet18")).cuda()
    explainer = gradex.Explainer(model, method=method, backend=backend)
    example = torch.randn(2, 3, 96, 80, device="cuda")
    static = explainer.static(example)
    assert static.mode == "cuda_graph"
    for _ in range(2):  # replayed twice on new inputs: nothing is stale
        x = torch.randn(2, 3, 96, 80, device="cuda")
        for target in (None, 7, [1, 2]):
            # Same kernels on the same data (the fused reductions use no atomics); cuDNN's
            # gradient kernels may still sum in another order.
            expected = explainer(x, target=target)
            assert_same_explanation(static(x, target=target), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.needs_cuda
def test_cuda_graph_captured_inside_no_grad_and_replayed_inside_inference_mode():
    # A replay records no graph, so inference_mode() is no obstacle to it (only eager calls,
    # which need autograd, are refused there).
    explainer = gradex.Explainer(copy.deepcopy(get("resnet18")).cuda())
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        static = explainer.static(x)
    with torch.inference_mode():
        got = static(x, target=[3, 4])
    assert static.mode == "cuda_graph"
    assert_same_explanation(got, explainer(x, target=[3, 4]), rtol=1e-5, atol=1e-5)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_cuda_graph_with_amp_and_channels_last(amp_dtype):
    model = copy.deepcopy(get("resnet50")).cuda().to(memory_format=torch.channels_last)
    explainer = gradex.Explainer(model, amp_dtype=amp_dtype)
    x = torch.randn(4, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    static = explainer.static(x)
    got, expected = static(x), explainer(x)
    assert got.saliency.dtype == torch.float32
    torch.testing.assert_close(got.saliency, expected.saliency, rtol=1e-3, atol=1e-3)
    full = gradex.Explainer(copy.deepcopy(get("resnet50")).cuda())(x.contiguous())
    assert (got.saliency - full.saliency).abs().mean() < 0.02


@pytest.mark.needs_cuda
def test_cuda_graph_with_a_target_list_holding_none():
    model = copy.deepcopy(get("resnet18")).cuda()
    explainer = gradex.Explainer(model)
    x = torch.randn(3, 3, 64, 64, device="cuda")
    static = explainer.static(x)
    top1 = explainer(x).target
    expected = explainer(x, target=[int(top1[0]), 5, int(top1[2])])
    assert_same_explanation(static(x, target=[None, 5, None]), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(static(x).target, top1)


@pytest.mark.needs_cuda
def test_cuda_graph_outputs_are_copies_unless_asked():
    model = copy.deepcopy(get("resnet18")).cuda()
    static = gradex.Explainer(model).static(torch.randn(1, 3, 64, 64, device="cuda"))
    first = static(torch.randn(1, 3, 64, 64, device="cuda"))
    kept = first.saliency.clone()
    shared = static(torch.randn(1, 3, 64, 64, device="cuda"), copy=False)
    assert torch.equal(first.saliency, kept)  # a copy: the next replay did not touch it
    again = static(torch.randn(1, 3, 64, 64, device="cuda"), copy=False)
    assert shared.saliency.data_ptr() == again.saliency.data_ptr()  # the graph's own buffer


@pytest.mark.needs_cuda
def test_cuda_graph_captured_and_replayed_under_a_users_stream():
    model = copy.deepcopy(get("resnet18")).cuda()
    explainer = gradex.Explainer(model)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    user_stream = torch.cuda.Stream()
    with torch.cuda.stream(user_stream):
        static = explainer.static(x)
        got = static(x)
    torch.cuda.synchronize()
    assert_same_explanation(got, explainer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.needs_cuda
def test_cuda_graph_of_a_model_on_another_device_than_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    model = copy.deepcopy(get("resnet18")).to("cuda:1")
    explainer = gradex.Explainer(model)
    x = torch.randn(2, 3, 64, 64, device="cuda:1")
    with torch.cuda.device(0):
        static = explainer.static(x)
        got = static(x)
    assert got.saliency.device == torch.device("cuda:1")
    assert_same_explanation(got, explainer(x), rtol=1e-5, atol=1e-5)


# -- shared between threads -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "contrastive excitation"])
def test_one_static_explainer_shared_by_threads_gives_each_caller_its_own_map(method):
    import threading

    model = TinyCNN().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    static = gradex.Explainer(model, method=method).static(torch.randn(2, 3, 32, 32))
    jobs = [(torch.randn(2, 3, 32, 32), [k, 9 - k] if k % 2 else None) for k in range(4)]
    expected = [static(x, target=target) for x, target in jobs]
    wrong, errors = [], []

    def run(k):
        x, target = jobs[k]
        try:
            for _ in range(25):
                got = static(x, target=target)
                for field in FIELDS:
                    if not torch.equal(getattr(got, field), getattr(expected[k], field)):
                        wrong.append((k, field))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert not wrong, wrong[:10]
