"""Maps as pictures and bytes, without matplotlib by default: colour tables, the display scaling
of a map, a map coloured over the image the model saw, and 0..255 quantisation. Shared by the
CLI's panels, the server's answers and the dataset job's files, so all three draw a map the same
way; importing matplotlib writes its config folder under HOME, which the server and the dataset
job may not do, so it is imported only for a colour map other than jet."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# matplotlib's "jet" (the default colour map) as its segment data: (position, value) per
# channel, linear in between.
_JET_SEGMENTS = (
    ((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
    ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
    ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)),
)
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "gray")
DEFAULT_COLORMAP = "jet"

# How a map in [0, 1] is stretched for the eye; the stored maps never are. GE maps are
# heavy-tailed (a few pixels far above the rest), so min-max lets one hot spot set the scale:
# "p99" clips at the map's 99th percentile and rescales, which keeps the order of the values and
# shows the structure under the peak; "gamma" (square root) lifts the low values without
# clipping; "minmax" draws the map as it is.
DISPLAY_CHOICES = ("p99", "gamma", "minmax")
DEFAULT_DISPLAY = "p99"
_CLIP_QUANTILE = 0.99
_GAMMA = 0.5


@lru_cache(maxsize=1)
def jet_table() -> np.ndarray:
    """jet as a (256, 3) uint8 lookup table."""
    x = np.linspace(0, 1, 256)
    channels = [np.interp(x, *zip(*segments, strict=True)) for segments in _JET_SEGMENTS]
    return np.rint(np.stack(channels, axis=1) * 255).astype(np.uint8)


@lru_cache(maxsize=len(COLORMAPS))
def colormap_table(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The colour map ``name`` (one of COLORMAPS) as a (256, 3) uint8 lookup table, computed
    once per name."""
    if name not in COLORMAPS:
        raise ValueError(f"--colormap {name!r}: choose one of {', '.join(COLORMAPS)}")
    if name == "jet":
        return jet_table()
    if name == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    from matplotlib import colormaps  # the other tables are matplotlib's own data

    rgba = colormaps[name](np.linspace(0, 1, 256))
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)


def _display_array(values: np.ndarray, display: str) -> np.ndarray:
    if display not in DISPLAY_CHOICES:
        raise ValueError(f"--display {display!r}: choose one of {', '.join(DISPLAY_CHOICES)}")
    values = np.clip(values.astype(np.float32, copy=False), 0, 1)
    if display == "gamma":
        return np.power(values, _GAMMA)
    if display == "p99":
        ceiling = float(np.quantile(values, _CLIP_QUANTILE))
        if ceiling > 0:  # a map that is zero almost everywhere keeps its scale
            return np.minimum(values / ceiling, 1)
    return values


def display_scale(values: torch.Tensor, display: str = DEFAULT_DISPLAY) -> torch.Tensor:
    """A copy of ``values`` (a map in [0, 1]) stretched for display as ``display`` says (one of
    DISPLAY_CHOICES): monotone, still in [0, 1]; ``values`` itself is left as it is."""
    array = values.detach().float().cpu().numpy()
    return torch.from_numpy(np.array(_display_array(array, display), dtype=np.float32))


def _unit_array(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The map resized to ``size`` (bilinear) and min-max scaled, a constant map all zeros. In
    numpy after the resize, because the panels are drawn between batches on the threads the
    model runs on, and torch's intra-op threads on a 224x224 map cost several times the work
    itself there."""
    m = values.detach().float().cpu().reshape(1, 1, *values.shape[-2:])
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    array = m[0, 0].numpy()
    low, high = float(array.min()), float(array.max())
    if not high > low:
        return np.zeros(array.shape, dtype=np.float32)
    return (array - low) / (high - low)


def as_uint8(values: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as 0..255, rounded to the nearest level."""
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def overlay_rgb(
    display: torch.Tensor,
    values: torch.Tensor,
    alpha: float = 0.5,
    *,
    colormap: str = DEFAULT_COLORMAP,
    scaling: str = DEFAULT_DISPLAY,
) -> np.ndarray:
    """The map (min-max scaled at the image's size, then stretched by ``scaling``) in
    ``colormap`` over ``display``, a (3,H,W) RGB image in [0, 1]: an (H,W,3) uint8 array."""
    size = tuple(display.shape[-2:])
    shown = _display_array(_unit_array(values, size), scaling)
    heat = colormap_table(colormap)[as_uint8(shown)]
    rgb = display.detach().float().cpu().permute(1, 2, 0).numpy() * 255
    return np.rint((1 - alpha) * rgb + alpha * heat).clip(0, 255).astype(np.uint8)


def overlay_png(
    display: torch.Tensor,
    values: torch.Tensor,
    alpha: float = 0.5,
    *,
    colormap: str = DEFAULT_COLORMAP,
    scaling: str = DEFAULT_DISPLAY,
) -> bytes:
    """:func:`overlay_rgb` as PNG bytes."""
    png = io.BytesIO()
    blended = overlay_rgb(display, values, alpha, colormap=colormap, scaling=scaling)
    Image.fromarray(blended).save(png, format="PNG", compress_level=1)  # speed over size
    return png.getvalue()
