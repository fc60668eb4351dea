"""Answers as JSON: top-k classes, and maps as base64 arrays or PNG overlays.

A map travels as ``{"format", "shape", "b64"}``: the C-order little-endian bytes of a uint8
(0..255) or float16 array, a third or two thirds the size of the float32 map and far smaller
than a JSON list of numbers; or, for people rather than programs, a PNG of the map coloured
over the image the model saw.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from ..metrics import unit_map


def top_k(probabilities: torch.Tensor, k: int, class_names: list[str]) -> list[dict]:
    top = probabilities.topk(k)
    return [
        {"class": int(c), "name": class_names[int(c)], "prob": round(float(p), 6)}
        for p, c in zip(top.values, top.indices, strict=True)
    ]


# matplotlib's "jet" (the CLI panels' colour map) as its segment data: (position, value) per
# channel, linear in between. Written out because importing matplotlib writes its config folder
# under HOME, and a server writes nothing to disk.
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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def as_uint8(values: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as 0..255, rounded to the nearest level."""
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def array_map(values: torch.Tensor, map_format: str) -> dict:
    """A (h, w) map in [0, 1] as uint8 or float16 bytes."""
    array = values.numpy()
    array = as_uint8(array) if map_format == "uint8" else array.astype("<f2")
    return {"format": map_format, "shape": list(array.shape), "b64": _b64(array.tobytes())}


def overlay_png(display: torch.Tensor, values: torch.Tensor, alpha: float = 0.5) -> dict:
    """The map (rescaled to [0, 1], then to the image's size) in jet over ``display``, a (3,H,W)
    RGB image in [0, 1]; a PNG."""
    size = tuple(display.shape[-2:])
    heat = jet_table()[np.rint(unit_map(values, size).numpy() * 255).astype(np.uint8)]
    rgb = (display.permute(1, 2, 0).numpy() * 255).astype(np.float32)
    blended = np.rint((1 - alpha) * rgb + alpha * heat).clip(0, 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(blended).save(png, format="PNG", compress_level=1)  # speed over size
    return {"format": "png", "shape": list(size), "b64": _b64(png.getvalue())}
