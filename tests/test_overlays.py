"""How maps are drawn: colour tables and the display-only scaling of heavy-tailed maps."""

import numpy as np
import pytest
import torch

from gradex import overlays


def _heavy_tailed(seed=0, size=(48, 40)):
    """A map like a min-max GE map: a smooth structure in [0, 0.1] and one hot spot at 1."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, size[0]).view(-1, 1)
    xs = torch.linspace(0, 1, size[1]).view(1, -1)
    values = 0.1 * (ys * xs) + 0.01 * torch.rand(size, generator=generator)
    values[1, 2] = 1.0
    return values


@pytest.mark.parametrize("display", overlays.DISPLAY_CHOICES)
def test_display_scaling_is_monotone_in_range_and_leaves_the_map_alone(display):
    values = _heavy_tailed()
    kept = values.clone()
    shown = overlays.display_scale(values, display)
    torch.testing.assert_close(values, kept, rtol=0, atol=0)  # the stored map is untouched
    assert shown.shape == values.shape and shown.min() >= 0 and shown.max() <= 1
    order = values.flatten().argsort()
    assert (shown.flatten()[order].diff() >= 0).all()  # never reorders two values
    assert shown.flatten()[order[-1]] == 1.0  # the hottest point keeps the top colour


def test_p99_shows_the_structure_under_a_hot_spot():
    values = _heavy_tailed()
    structure = values < 0.5  # everything but the hot spot
    spread = {
        display: float(np.ptp(overlays.display_scale(values, display)[structure].numpy()))
        for display in ("minmax", "p99", "gamma")
    }
    assert spread["minmax"] < 0.12  # one pixel sets the scale: the rest in a tenth of it
    assert spread["p99"] > 0.8 and spread["gamma"] > 0.25


def test_a_constant_map_stays_dark_and_a_bad_name_is_refused():
    flat = torch.zeros(6, 5)
    for display in overlays.DISPLAY_CHOICES:
        assert overlays.display_scale(flat, display).max() == 0
    with pytest.raises(ValueError, match="--display"):
        overlays.display_scale(flat + 0.5, "log")
    with pytest.raises(ValueError, match="--colormap"):
        overlays.colormap_table("rainbow")


@pytest.mark.parametrize("name", [n for n in overlays.COLORMAPS if n != "gray"])
def test_colour_tables_are_matplotlibs(name):
    matplotlib = pytest.importorskip("matplotlib")
    expected = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255
    table = overlays.colormap_table(name)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert np.abs(table.astype(float) - expected).max() <= 1.0


def test_the_overlay_draws_in_the_colour_map_asked_for():
    display = torch.rand(3, 24, 20)
    values = _heavy_tailed(size=(6, 5))
    for name in ("jet", "viridis"):
        picture = overlays.overlay_rgb(display, values, alpha=1.0, colormap=name, scaling="minmax")
        table = overlays.colormap_table(name)
        colours = {tuple(c) for c in table}
        assert {tuple(p) for p in picture.reshape(-1, 3)} <= colours


def test_the_server_and_the_panels_draw_a_map_alike_with_the_display_scaling():
    import base64
    import io

    from PIL import Image

    from gradex.serve.encoding import overlay_png

    display = torch.rand(3, 48, 40)
    values = _heavy_tailed()
    answer = overlay_png(display, values)
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["b64"]))))
    np.testing.assert_array_equal(served, overlays.overlay_rgb(display, values))  # p99
    as_is = overlays.overlay_rgb(display, values, scaling="minmax")
    assert np.abs(served.astype(int) - as_is).mean() > 5  # the stretch shows
