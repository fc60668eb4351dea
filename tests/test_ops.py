"""Dispatch: backend names, availability reports, and the public extrapolate."""

import pytest
import torch
from conftest import random_stages

import gradex
from gradex import ops, reference


def test_backends_report_reference_available_with_a_reason():
    report = gradex.backends()
    available, reason = report["reference"]
    assert available is True and reason


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_public_extrapolate_equals_reference(backend):
    acts = random_stages(3, [(17, 13), (9, 7), (5, 4)])
    heatmap = torch.rand(3, 1, 3, 2)
    expected = reference.extrapolate(heatmap, acts, output_size=(20, 16))
    out = gradex.extrapolate(heatmap, acts, output_size=(20, 16), backend=backend)
    exact = ops.resolve_backend(backend, heatmap.device).name == "reference"
    tolerance = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out, expected, **tolerance)


def test_auto_falls_back_to_reference_once_warned_where_nothing_else_is_built(monkeypatch):
    monkeypatch.setattr(ops, "_WARNED_FALLBACK", set())
    unavailable = ops.Backend(
        "cpu", None, None, lambda device=None: (False, "not built here"), ("cpu",)
    )
    monkeypatch.setitem(ops._REGISTRY, "cpu", unavailable)
    with pytest.warns(RuntimeWarning, match="cpu: not built here"):
        assert ops.resolve_backend("auto", torch.device("cpu")).name == "reference"
    assert ops.resolve_backend("auto", torch.device("cpu")).name == "reference"  # no 2nd warning
    assert ops.resolve_backend("auto", torch.device("meta")).name == "reference"


@pytest.mark.parametrize("normalize", ["minmax", "standardize", None])
@pytest.mark.parametrize("stage_weighting", ["local", "global"])
def test_every_option_equals_reference(normalize, stage_weighting):
    acts = random_stages(2, [(15, 11), (7, 6)])
    heatmap = torch.rand(2, 1, 3, 3)
    options = {"normalize": normalize, "stage_weighting": stage_weighting}
    torch.testing.assert_close(
        gradex.extrapolate(heatmap, acts, output_size=(20, 16), **options),
        reference.extrapolate(heatmap, acts, output_size=(20, 16), **options),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bad_option_names_are_refused_before_any_work():
    heatmap, acts = torch.rand(1, 1, 2, 2), random_stages(1, [(4, 4)])
    with pytest.raises(ValueError, match="normalize must be one of"):
        gradex.extrapolate(heatmap, acts, normalize="l2")
    with pytest.raises(ValueError, match="stage_weighting must be one of"):
        gradex.extrapolate(heatmap, acts, stage_weighting=None)


def test_unknown_backend_is_refused_with_the_choices():
    heatmap, acts = torch.rand(1, 1, 2, 2), random_stages(1, [(4, 4)])
    with pytest.raises(
        ValueError, match="backend must be one of: auto, reference, cpu, cuda, triton"
    ):
        gradex.extrapolate(heatmap, acts, backend="fast")
    with pytest.raises(TypeError, match="backend must be a string"):
        gradex.extrapolate(heatmap, acts, backend=None)


def test_unchecked_path_gives_the_same_map():
    acts = random_stages(2, [(8, 8), (4, 4)])
    heatmap = torch.rand(2, 1, 2, 2)
    torch.testing.assert_close(
        gradex.extrapolate(heatmap, acts, check=False), gradex.extrapolate(heatmap, acts)
    )


def test_normalize_false_returns_the_raw_chain():
    acts = random_stages(2, [(8, 8)])
    heatmap = torch.rand(2, 1, 2, 2)
    raw = gradex.extrapolate(heatmap, acts, normalize=False, stage_weighting="global")
    stage = reference.reduce_stage(acts[0])
    s, m = stage.channel_sum(), stage.sample_max()
    expected = torch.nn.functional.interpolate(heatmap, size=(8, 8), mode="bilinear")
    torch.testing.assert_close(raw, expected * s / m.view(-1, 1, 1, 1))


def test_import_touches_no_gpu():
    import subprocess
    import sys

    code = (
        "import torch, gradex; gradex.backends();"
        "import sys; sys.exit(1 if torch.cuda.is_initialized() else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_auto_skips_cuda_kernels_built_without_an_image_for_the_gpu(monkeypatch):
    # A GPU whose architecture the build left out (a T4, sm_75, with the default 8.0;9.0+PTX)
    # must fall back with a reason, not fail at the first launch with "no kernel image".
    from gradex import _ext

    if not _ext.has_kernel("CUDA"):
        pytest.skip("gradex._C was built without CUDA kernels")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla T4")
    monkeypatch.setattr(_ext, "_device_supported", lambda index: False)
    monkeypatch.setattr(ops, "_WARNED_FALLBACK", set())
    available, reason = _ext.cuda_availability(torch.device("cuda", 0))
    assert not available
    assert "Tesla T4 (compute capability 7.5)" in reason and 'TORCH_CUDA_ARCH_LIST="7.5"' in reason
    assert ops.resolve_backend("auto", torch.device("cuda", 0)).name != "cuda"
    with pytest.raises(RuntimeError, match="no kernel image for Tesla T4"):
        ops.resolve_backend("cuda", torch.device("cuda", 0))
    assert _ext.cuda_availability()[0]  # without a device: built and a GPU is visible


def test_meta_tensors_are_refused_by_name():
    # D14: was "Tensor.item() cannot be called on meta tensors".
    heatmap, acts = torch.rand(1, 1, 7, 7), [torch.rand(1, 4, 28, 28)]
    with pytest.raises(ValueError, match="heatmap is a meta tensor"):
        gradex.extrapolate(heatmap.to("meta"), [a.to("meta") for a in acts])
    with pytest.raises(ValueError, match=r"activations\[0\] is a meta tensor"):
        gradex.extrapolate(heatmap, [acts[0].to("meta")])


def test_numpy_integers_are_output_sizes():
    # D15: numpy integers were refused.
    import numpy as np

    heatmap, acts = torch.rand(1, 1, 7, 7), [torch.rand(1, 4, 28, 28)]
    expected = gradex.extrapolate(heatmap, acts, output_size=56)
    for size in (np.int64(56), np.int32(56), (np.int16(56), 56), [np.uint8(56), np.int64(56)]):
        assert torch.equal(gradex.extrapolate(heatmap, acts, output_size=size), expected)
    for bad in (np.float32(56), np.bool_(True), True, (56, 56.0), (0, 5), -3):
        with pytest.raises(ValueError, match="output_size must be"):
            gradex.extrapolate(heatmap, acts, output_size=bad)


def test_output_size_is_bounded_before_any_allocation():
    # D18: 30000² used 11 GB, 100000² ended in a raw allocator error.
    heatmap, acts = torch.rand(1, 1, 7, 7), [torch.rand(1, 4, 28, 28)]
    for size in (100000, (30000, 30000), (16385, 8)):
        with pytest.raises(ValueError, match="larger than gradex makes maps"):
            gradex.extrapolate(heatmap, acts, output_size=size)
    assert gradex.extrapolate(heatmap, acts, output_size=(16384, 3)).shape == (1, 1, 16384, 3)


@pytest.mark.parametrize(
    "heatmap_size, grid",
    [((32, 32), (4, 4)), ((30, 27), (4, 4)), ((32, 3), (4, 3)), ((4, 4), (4, 4))],
    ids=["divisible", "not-divisible", "finer-in-height-only", "already-on-the-grid"],
)
def test_a_heatmap_finer_than_the_deepest_stage_is_area_pooled_to_its_grid(heatmap_size, grid):
    # A heatmap made elsewhere often comes at the input's size; GE used to start from a bilinear
    # downsample of it (a few pixels per cell) and returned little more than the map it was given.
    acts = random_stages(2, [(16, 16), (8, 8), (4, 4)])
    heatmap = torch.rand(2, 1, *heatmap_size) + 0.1
    heatmap[:, :, : heatmap_size[0] // 2] *= 4  # structure that pooling must keep
    before = heatmap.clone()
    pooled = torch.nn.functional.adaptive_avg_pool2d(heatmap, grid)
    for backend in ["reference", "cpu"]:
        if not gradex.backends()[backend][0]:
            continue
        out = gradex.extrapolate(heatmap, acts, output_size=(32, 32), backend=backend)
        expected = gradex.extrapolate(pooled, acts, output_size=(32, 32), backend=backend)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        torch.testing.assert_close(
            out, reference.extrapolate(heatmap, acts, output_size=(32, 32)), rtol=1e-5, atol=1e-5
        )
    assert torch.equal(heatmap, before)  # the caller's map is never modified


def test_area_pooling_of_a_divisible_map_is_the_exact_mean_of_each_cell():
    from gradex._validation import on_deepest_grid

    heatmap = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    pooled = on_deepest_grid(heatmap, torch.rand(1, 3, 2, 2))
    expected = heatmap.view(1, 1, 2, 4, 2, 4).mean(dim=(3, 5))
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
