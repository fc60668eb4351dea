"""Overlays and panels."""

import numpy as np
import torch
from PIL import Image

from gradex import viz


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
        assert picture.size[0] > 2 * picture.size[1]  # three panels side by side
