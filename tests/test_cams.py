"""The CAM formulas, each against a per-channel loop written from its paper."""

import pytest
import torch

from gradex import cams


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 5, 4, 3, generator=gen)
    g = torch.randn(2, 5, 4, 3, generator=gen)
    return a, g


def _loop_cam(a, weight_of):
    """Σ_c w_c(b) A[b,c], then ReLU, with weights from a per-(sample, channel) function."""
    out = torch.zeros(a.shape[0], 1, *a.shape[-2:], dtype=torch.float64)
    for b in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[b, 0] += weight_of(b, c) * a[b, c].double()
    return out.clamp_min(0)


def test_gradcam():
    a, g = _inputs()
    expected = _loop_cam(a, lambda b, c: g[b, c].double().mean())
    torch.testing.assert_close(cams.gradcam(a, g).double(), expected)


def test_gradcam_pp():
    a, g = _inputs(1)

    def weight(b, c):
        gd, ad = g[b, c].double(), a[b, c].double()
        alpha = gd**2 / (2 * gd**2 + ad.sum() * gd**3 + 1e-7)
        alpha = torch.where(gd != 0, alpha, 0)
        return (alpha * gd.clamp_min(0)).sum()

    torch.testing.assert_close(cams.gradcam_pp(a, g).double(), _loop_cam(a, weight))


def test_xgradcam():
    a, g = _inputs(2)

    def weight(b, c):
        return (g[b, c].double() * a[b, c].double()).sum() / (a[b, c].double().sum() + 1e-7)

    torch.testing.assert_close(cams.xgradcam(a, g).double(), _loop_cam(a, weight))


@pytest.mark.parametrize("name, grad_fn", [("hirescam", lambda g: g), ("layercam", torch.relu)])
def test_elementwise_methods(name, grad_fn):
    a, g = _inputs(3)
    expected = (grad_fn(g).double() * a.double()).sum(1, keepdim=True).clamp_min(0)
    torch.testing.assert_close(cams.METHODS[name](a, g).double(), expected)


def test_names_and_aliases():
    assert cams.get_method("Grad-CAM")[0] == "gradcam"
    assert cams.get_method("gradcampp")[0] == "gradcam++"
    with pytest.raises(ValueError, match="method must be one of"):
        cams.get_method("scorecam")
    with pytest.raises(TypeError, match="method must be a name or a callable"):
        cams.get_method(3)


def test_custom_method_must_return_a_map():
    a, g = _inputs()
    with pytest.raises(ValueError, match=r"method must return a map of shape \(2, 1, 4, 3\)"):
        cams.compute_cam(lambda a, g: a.sum(1), a, g)
    out = cams.compute_cam(lambda a, g: a.sum(1, keepdim=True).half(), a, g)
    assert out.dtype == torch.float32
