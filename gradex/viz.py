"""Pictures of explanations: heat-map overlays and the panel the CLI writes per image (input |
coarse map overlay | GE overlay, a title above), composed with Pillow. matplotlib laid the panels
out before and took nine tenths of ``gradex explain``'s time per image; pasting three tiles and
three lines of text needs no plotting library."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .overlays import DEFAULT_COLORMAP, DEFAULT_DISPLAY, as_uint8, overlay_rgb

_MARGIN = 8  # pixels around and between the tiles
_TITLE_SIZE, _LABEL_SIZE = 15, 12  # font sizes in pixels


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:  # Pillow's bundled scalable font (Pillow >= 10.1 built with FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # older Pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def overlay(
    image: torch.Tensor,
    saliency: torch.Tensor,
    alpha: float = 0.5,
    *,
    colormap: str = DEFAULT_COLORMAP,
    display: str = DEFAULT_DISPLAY,
) -> np.ndarray:
    """Blend a coloured map over a (3,H,W) RGB image in [0, 1]; returns (H,W,3) in [0, 1]."""
    blended = overlay_rgb(image, saliency, alpha, colormap=colormap, scaling=display)
    return blended.astype(np.float32) / 255


def _text_height(draw: ImageDraw.ImageDraw, font) -> int:
    left, top, right, bottom = draw.textbbox((0, 0), "Ag", font=font)
    return bottom - top


def panel_png(
    image: torch.Tensor,
    cam: torch.Tensor,
    saliency: torch.Tensor | None,
    title: str,
    method: str = "Grad-CAM",
    *,
    colormap: str = DEFAULT_COLORMAP,
    display: str = DEFAULT_DISPLAY,
) -> bytes:
    """input | coarse map overlay | GE overlay (left out when ``saliency`` is None), each at the
    image's size with its label above it and ``title`` above all: PNG bytes."""
    image = image.detach().float().cpu()
    tiles = [
        (as_uint8(image.permute(1, 2, 0).numpy()), "input"),
        (overlay_rgb(image, cam, colormap=colormap, scaling=display), f"{method} (upsampled)"),
    ]
    if saliency is not None:
        tiles.append(
            (overlay_rgb(image, saliency, colormap=colormap, scaling=display), f"Gradual {method}")
        )
    height, width = image.shape[-2:]
    title_font, label_font = _font(_TITLE_SIZE), _font(_LABEL_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_band = _text_height(measure, title_font) + 2 * _MARGIN
    label_band = _text_height(measure, label_font) + _MARGIN
    canvas = Image.new(
        "RGB",
        (len(tiles) * (width + _MARGIN) + _MARGIN, title_band + label_band + height + _MARGIN),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((canvas.width / 2, _MARGIN), title, fill="black", font=title_font, anchor="mt")
    for i, (pixels, label) in enumerate(tiles):
        left = _MARGIN + i * (width + _MARGIN)
        draw.text((left + width / 2, title_band), label, fill="black", font=label_font, anchor="mt")
        canvas.paste(Image.fromarray(pixels), (left, title_band + label_band))
    png = io.BytesIO()
    canvas.save(png, format="PNG", compress_level=1)  # speed over size: panels are many
    return png.getvalue()


def save_panel(
    path: str | Path | BinaryIO,
    image: torch.Tensor,
    cam: torch.Tensor,
    saliency: torch.Tensor | None,
    title: str,
    method: str = "Grad-CAM",
    **options,
) -> None:
    """:func:`panel_png` written to ``path`` (a file name or a binary file object)."""
    data = panel_png(image, cam, saliency, title, method, **options)
    if isinstance(path, (str, Path)):
        Path(path).write_bytes(data)
    else:
        path.write(data)
