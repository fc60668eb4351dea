"""Maps as pictures and bytes, without matplotlib: the jet colour table, a map coloured over the
image the model saw, and 0..255 quantisation. Shared by the server's answers and the dataset
job's files; importing matplotlib writes its config folder under HOME, which neither may do."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from .metrics import unit_map

# matplotlib's "jet" (the CLI panels' colour map) as its segment data: (position, value) per
# channel, linear in between.
_JET_SEGMENTS = (
    ((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
    ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
    ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)),
)


@lru_cache(maxsize=1)
def jet_table() -> np.ndarray:
    """jet as a (256, 3) uint8 lookup table."""
    x = np.linspace(0, 1, 256)
    channels = [np.interp(x, *zip(*segments, strict=True)) for segments in _JET_SEGMENTS]
    return np.rint(np.stack(channels, axis=1) * 255).astype(np.uint8)


def as_uint8(values: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as 0..255, rounded to the nearest level."""
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def overlay_png(display: torch.Tensor, values: torch.Tensor, alpha: float = 0.5) -> bytes:
    """The map (rescaled to [0, 1], then to the image's size) in jet over ``display``, a (3,H,W)
    RGB image in [0, 1]: PNG bytes."""
    size = tuple(display.shape[-2:])
    heat = jet_table()[as_uint8(unit_map(values, size).numpy())]
    rgb = (display.permute(1, 2, 0).numpy() * 255).astype(np.float32)
    blended = np.rint((1 - alpha) * rgb + alpha * heat).clip(0, 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(blended).save(png, format="PNG", compress_level=1)  # speed over size
    return png.getvalue()
