"""Overlays and panels."""

import io
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from gradex import overlays, viz


def test_overlay_shape_range_and_that_the_map_shows():
    image = torch.full((3, 20, 30), 0.5)
    saliency = torch.zeros(1, 5, 6)
    saliency[0, 2, 3] = 1.0
    out = viz.overlay(image, saliency)
    assert out.shape == (20, 30, 3) and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out[12, 18], out[0, 0])  # hot spot differs from the cold corner


def test_save_panel_writes_a_picture(tmp_path):
    image = torch.rand(3, 32, 32)
    path = tmp_path / "p.png"
    viz.save_panel(path, image, torch.rand(1, 4, 4), torch.rand(1, 32, 32), "cat, p = 0.9")
    with Image.open(path) as picture:
        # three panels side by side (the title and labels above take a fixed height)
        assert picture.size[0] >= 3 * 32 and picture.size[0] > picture.size[1]


def _tiles(png: bytes, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The ``count`` tiles of a panel: image-sized blocks along its bottom, left to right."""
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    height, width = size
    margin = (picture.shape[1] - count * width) // (count + 1)
    top = picture.shape[0] - margin - height
    return [
        picture[
            top : top + height,
            margin + i * (width + margin) : margin + i * (width + margin) + width,
        ]
        for i in range(count)
    ]


def test_the_panel_holds_the_image_and_both_overlays_pixel_for_pixel():
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(3, 40, 36, generator=generator)
    cam = torch.rand(1, 5, 4, generator=generator)
    saliency = torch.rand(1, 40, 36, generator=generator) ** 6  # heavy-tailed, like GE
    png = viz.panel_png(image, cam, saliency, "tabby (class 281), p = 0.37", colormap="viridis")
    first, coarse, fine = _tiles(png, 3, (40, 36))
    np.testing.assert_array_equal(first, np.rint(image.permute(1, 2, 0).numpy() * 255))
    np.testing.assert_array_equal(coarse, overlays.overlay_rgb(image, cam, colormap="viridis"))
    np.testing.assert_array_equal(fine, overlays.overlay_rgb(image, saliency, colormap="viridis"))
    # Without a GE map: two tiles, the second the coarse overlay.
    two = viz.panel_png(image, cam, None, "tabby", display="minmax")
    np.testing.assert_array_equal(
        _tiles(two, 2, (40, 36))[1], overlays.overlay_rgb(image, cam, scaling="minmax")
    )


def test_panels_are_drawn_without_matplotlib():
    """matplotlib's figure machinery was nine tenths of gradex explain's time per image."""
    probe = (
        "import sys, torch\n"
        "from gradex import viz\n"
        "viz.panel_png(torch.rand(3, 16, 16), torch.rand(1, 2, 2), torch.rand(1, 16, 16), 't')\n"
        "print('matplotlib' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
