"""GE costs one op (one kernel launch on a GPU) per stage plus one for the whole chain, on every
fused backend, counted: dispatched ops on the CPU, Triton launches in the interpreter, and CUDA
kernels, memsets and copies with the profiler on a GPU."""

import pytest
import torch
from conftest import random_stages
from models_zoo import get
from torch.utils._python_dispatch import TorchDispatchMode

import gradex
from gradex import ops

# Ops that only make a view of a tensor (no kernel, no copy).
VIEWS = {"aten.detach.default", "aten.alias.default", "aten.view.default"}


class OpLog(TorchDispatchMode):
    """Every op that reaches the dispatcher while active, by name."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def stage_sizes():
    return [(56, 56), (28, 28), (14, 14), (7, 7)]


def fused_cpu_backends():
    names = []
    for name, (available, _) in gradex.backends().items():
        if name != "reference" and available and "cpu" in ops._REGISTRY[name].devices:
            names.append(name)
    if not names:
        pytest.skip("no fused backend runs on CPU tensors here")
    return names


@pytest.mark.parametrize("options", [{}, {"stage_weighting": "global", "normalize": "standardize"}])
def test_extrapolate_is_one_op_per_stage_plus_one(options):
    acts = random_stages(2, stage_sizes())
    heatmap = torch.rand(2, 1, 7, 7)
    for name in fused_cpu_backends():
        namespace = "gradex_triton" if name == "triton" else "gradex"
        with OpLog() as log:
            gradex.extrapolate(heatmap, acts, (224, 224), backend=name, check=False, **options)
        work = [op for op in log.ops if op not in VIEWS]
        expected = [f"{namespace}.reduce_stage.default"] * len(acts)
        expected.append(f"{namespace}.extrapolate_chain.default")
        assert work == expected, name


def test_an_explanation_runs_ge_as_one_op_per_stage_plus_one():
    model = get("resnet18")
    x = torch.rand(1, 3, 64, 64)
    for name in fused_cpu_backends():
        namespace = "gradex_triton" if name == "triton" else "gradex"
        for gradual in (True, False):
            explainer = gradex.Explainer(model, backend=name, gradual=gradual)
            stages = len(explainer.layers_for(x).stages) if gradual else 0
            with OpLog() as log:
                explainer(x)
            ge = [op for op in log.ops if op.startswith(f"{namespace}.")]
            assert ge.count(f"{namespace}.reduce_stage.default") == stages, (name, gradual)
            assert ge.count(f"{namespace}.extrapolate_chain.default") == 1, (name, gradual)
            assert len(ge) == stages + 1


def test_triton_launches_one_kernel_per_stage_plus_one(monkeypatch):
    if not gradex.backends()["triton"][0] or "cpu" not in ops._REGISTRY["triton"].devices:
        pytest.skip("triton on CPU tensors needs TRITON_INTERPRET=1")
    from triton.runtime.interpreter import InterpretedFunction

    launches = []
    run = InterpretedFunction.run

    def counting_run(self, *args, **kwargs):
        launches.append(self.fn.__name__)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", counting_run)
    acts = random_stages(1, stage_sizes())
    gradex.extrapolate(torch.rand(1, 1, 7, 7), acts, (112, 112), backend="triton", check=False)
    assert launches == ["_reduce_stage_kernel"] * len(acts) + ["_extrapolate_chain_kernel"]


def cuda_activity(fn):
    """(kernels, memsets, copies) that ``fn`` puts on the GPU, by name."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: Triton compiles, the caching allocator fills
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    memsets = [n for n in names if "memset" in n.lower()]
    copies = [n for n in names if "memcpy" in n.lower()]
    kernels = [n for n in names if n not in memsets and n not in copies]
    return kernels, memsets, copies


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("options", [{}, {"stage_weighting": "global", "normalize": "standardize"}])
def test_on_a_gpu_ge_is_one_launch_per_stage_plus_one(backend, options):
    if not gradex.backends()[backend][0]:
        pytest.skip(f"backend {backend} not available")
    acts = [a.cuda() for a in random_stages(1, stage_sizes())]
    heatmap = torch.rand(1, 1, 7, 7, device="cuda")
    kernels, memsets, copies = cuda_activity(
        lambda: gradex.extrapolate(
            heatmap, acts, (224, 224), backend=backend, check=False, **options
        )
    )
    assert len(kernels) == len(acts) + 1, kernels
    assert not memsets and not copies, (memsets, copies)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_on_a_gpu_an_explanations_ge_adds_one_launch_per_stage(backend):
    import copy

    if not gradex.backends()[backend][0]:
        pytest.skip(f"backend {backend} not available")
    model = copy.deepcopy(get("resnet18")).cuda()
    x = torch.rand(1, 3, 64, 64, device="cuda")
    counts = {}
    for gradual in (True, False):
        explainer = gradex.Explainer(model, backend=backend, gradual=gradual, check=False)
        kernels, memsets, copies = cuda_activity(lambda e=explainer: e(x))
        counts[gradual] = len(kernels) + len(memsets) + len(copies)
    stages = len(gradex.Explainer(model).layers_for(x).stages)
    # Without GE the plain CAM still runs the chain op (resize and normalise): the difference is
    # the reductions, one launch each.
    assert counts[True] - counts[False] == stages, counts
