"""The fused ops as torch ops: opcheck, torch.compile(fullgraph=True), CUDA graph capture, and
the build reports (backends(), python -m gradex.info)."""

import os
import subprocess
import sys

import pytest
import torch
from test_reference import BAD_INPUTS, good_arguments

import gradex
from gradex import _ext, ops, reference


def compiled_ops_or_skip():
    loaded, reason = _ext.load()
    if not loaded:
        pytest.skip(reason)
    return torch.ops.gradex


def triton_ops_or_skip():
    available, reason = ops.backends()["triton"]
    if not available:
        pytest.skip(reason)
    from gradex import triton_kernels  # noqa: F401  (registers torch.ops.gradex_triton)

    return torch.ops.gradex_triton


def sample_arguments(device):
    cl = torch.rand(2, 6, 5, 7, device=device).contiguous(memory_format=torch.channels_last)
    stages = [
        reference.reduce_stage(torch.rand(2, 3, 9, 7, device=device)),
        reference.reduce_stage(torch.rand(2, 5, 4, 4, device=device)),
    ]
    sums, maxima = [s.sums for s in stages], [s.maxima for s in stages]
    heatmap = torch.rand(2, 1, 3, 4, device=device)
    reductions = [
        (torch.rand(2, 6, 5, 7, device=device), 0, 1, 1),
        (cl.half(), 1, 2, 3),
        (torch.randn(3, 9, 4, 4, device=device)[:, ::2], 2, 1, 2),
        (torch.rand(2, 4, 3, 3, device=device, dtype=torch.float64), 0, 1, 1),
    ]
    halves = [torch.stack([s[0] * 0.25, s[0] * 0.75]) for s in sums]  # S as two partial sums
    spread = [torch.cat([m, m * 0.5], dim=1) for m in maxima]  # M as two partial maxima
    return {
        "reduce_stage": reductions,
        "extrapolate_chain": [
            (heatmap, sums, maxima, [2, 2], [9, 7], True, 1),
            (heatmap, halves, spread, [2, 2], [9, 7], True, 1),
            (heatmap, sums, maxima, [2, 2], [20, 11], False, 2),
            (heatmap, [], [], [2, 2], [5, 5], True, 0),
        ],
    }


def run_opcheck(namespace, device):
    for name, argument_sets in sample_arguments(device).items():
        for args in argument_sets:
            torch.library.opcheck(getattr(namespace, name).default, args)


def test_opcheck_compiled_ops_on_cpu():
    run_opcheck(compiled_ops_or_skip(), "cpu")


def test_opcheck_triton_ops_on_cpu_tensors():
    run_opcheck(triton_ops_or_skip(), "cpu")


@pytest.mark.needs_cuda
def test_opcheck_compiled_and_triton_ops_on_cuda():
    run_opcheck(compiled_ops_or_skip(), "cuda")
    run_opcheck(triton_ops_or_skip(), "cuda")


def ge_function(backend):
    def explain(heatmap, shallow, deep):
        stages = [backend.reduce_stage(shallow, None), backend.reduce_stage(deep, "relu")]
        return ops.extrapolate_reduced(heatmap, stages, (32, 32), backend)

    return explain


@pytest.mark.parametrize("backend_name", ["cpu", "triton"])
def test_ops_trace_under_torch_compile_fullgraph(backend_name):
    available, reason = ops.backends()[backend_name]
    if not available or "cpu" not in ops._REGISTRY[backend_name].devices:
        pytest.skip(f"{backend_name} does not run on CPU tensors here: {reason}")
    backend = ops.resolve_backend(backend_name, torch.device("cpu"))
    explain = ge_function(backend)
    args = (torch.rand(2, 1, 4, 4), torch.rand(2, 5, 16, 16), torch.randn(2, 7, 8, 8))
    compiled = torch.compile(explain, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), explain(*args))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend_name", ["cuda", "triton"])
def test_ops_run_under_inductor_and_in_a_cuda_graph(backend_name):
    backend = ops.resolve_backend(backend_name, torch.device("cuda"))
    explain = ge_function(backend)
    args = [
        torch.rand(2, 1, 4, 4, device="cuda"),
        torch.rand(2, 5, 16, 16, device="cuda"),
        torch.randn(2, 7, 8, 8, device="cuda"),
    ]
    eager = explain(*args)
    torch.testing.assert_close(torch.compile(explain, fullgraph=True)(*args), eager)

    static = [a.clone() for a in args]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (Triton compiles) outside the capture
        explain(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = explain(*static)
    fresh = [torch.rand_like(a) for a in args]
    for buffer, value in zip(static, fresh, strict=True):
        buffer.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, explain(*fresh))


def test_backends_report_every_backend_with_a_reason():
    report = gradex.backends()
    assert set(report) == {"reference", "cpu", "cuda", "triton"}
    for available, reason in report.values():
        assert isinstance(available, bool) and reason


def test_the_build_carries_the_kernels_ci_expects():
    # .ci/run sets GRADEX_EXPECT_KERNELS="CPU CUDA": a compiler and the CUDA toolkit are there,
    # so a missing kernel set means the build silently dropped it.
    expected = os.environ.get("GRADEX_EXPECT_KERNELS", "").split()
    if not expected:
        pytest.skip("GRADEX_EXPECT_KERNELS not set (CI sets it)")
    for device_type in expected:
        assert _ext.has_kernel(device_type), f"gradex._C lacks {device_type} kernels"


def test_auto_prefers_the_cpu_kernels_and_names_missing_backends():
    if ops.backends()["cpu"][0]:
        assert ops.resolve_backend("auto", torch.device("cpu")).name == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
            ops.resolve_backend("cuda", torch.device("cpu"))


def test_info_command_lists_the_backends():
    result = subprocess.run(
        [sys.executable, "-m", "gradex.info"], capture_output=True, text=True, check=True
    )
    for name in ("reference", "cpu", "cuda", "triton", "auto on cpu tensors"):
        assert name in result.stdout


def test_an_install_without_kernels_says_why_and_how_to_build_them():
    """pip without --no-build-isolation installs gradex without gradex._C (torch is missing
    from its build environment): the fallback warning and gradex.info must say so."""
    probe = (
        "import sys, warnings; sys.modules['gradex._C'] = None\n"  # as if never built
        "import torch, gradex\n"
        "from gradex import info\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    gradex.extrapolate(torch.rand(1, 1, 2, 2), [torch.rand(1, 3, 4, 4)])\n"
        "print(caught[0].message)\n"
        "print(info.report())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    warning, report = result.stdout.split("\n", 1)
    for text in (warning, report):
        assert "installed without its compiled kernels" in text
        assert "without --no-build-isolation" in text
        assert 'build them with: pip install --no-build-isolation -e ".[test]"' in text
    assert "using the reference" in warning


def test_extrapolate_with_each_cpu_backend_agrees():
    acts = [torch.rand(2, 4, 12, 12), torch.rand(2, 6, 6, 6)]
    heatmap = torch.rand(2, 1, 3, 3)
    expected = reference.extrapolate(heatmap, acts, output_size=(24, 24))
    for name, (available, _) in ops.backends().items():
        devices = ops._REGISTRY[name].devices
        if available and ("cpu" in devices or "*" in devices):
            out = gradex.extrapolate(heatmap, acts, output_size=(24, 24), backend=name)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, error, words", BAD_INPUTS)
def test_every_available_backend_refuses_bad_input_naming_the_argument(make, error, words):
    heatmap, acts = make(*good_arguments())
    for name, (available, _) in ops.backends().items():
        devices = ops._REGISTRY[name].devices
        if not available or not ("cpu" in devices or "*" in devices):
            continue
        with pytest.raises(error) as info:
            gradex.extrapolate(heatmap, acts, backend=name)
        assert words in str(info.value), name


def test_the_cpu_kernels_of_every_instruction_set_match_the_reference():
    # The CPU kernels are compiled twice (baseline and AVX2), one chosen per process; the rest of
    # the suite runs the chosen one, this runs the kernel tests again with the other forced.
    compiled_ops_or_skip()
    if torch.ops.gradex.cpu_isa() == "baseline":
        pytest.skip("this CPU runs the baseline kernels, which the rest of the suite tests")
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            os.path.join(here, "test_kernels.py"), os.path.join(here, "test_kernels_hypothesis.py"),
            os.path.join(here, "test_degenerate.py"), "-k", "cpu and not triton",
        ],
        env={**os.environ, "GRADEX_CPU_ISA": "baseline"},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    probe = "import torch, gradex; gradex.backends(); print(torch.ops.gradex.cpu_isa())"
    forced = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "GRADEX_CPU_ISA": "baseline"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert forced.stdout.strip() == "baseline"
