"""Answers as JSON: top-k classes, and maps as base64 arrays or PNG overlays.

A map travels as ``{"format", "shape", "b64"}``: the C-order little-endian bytes of a uint8
(0..255) or float16 array, a third or two thirds the size of the float32 map and far smaller
than a JSON list of numbers; or, for people rather than programs, a PNG of the map coloured
over the image the model saw.
"""

from __future__ import annotations

import base64

import torch

from .. import overlays
from ..overlays import as_uint8


def top_k(probabilities: torch.Tensor, k: int, class_names: list[str]) -> list[dict]:
    top = probabilities.topk(k)
    return [
        {"class": int(c), "name": class_names[int(c)], "prob": round(float(p), 6)}
        for p, c in zip(top.values, top.indices, strict=True)
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def array_map(values: torch.Tensor, map_format: str) -> dict:
    """A (h, w) map in [0, 1] as uint8 or float16 bytes."""
    array = values.numpy()
    array = as_uint8(array) if map_format == "uint8" else array.astype("<f2")
    return {"format": map_format, "shape": list(array.shape), "b64": _b64(array.tobytes())}


def overlay_png(display: torch.Tensor, values: torch.Tensor, alpha: float = 0.5) -> dict:
    """The map in jet over ``display`` (a (3,H,W) RGB image in [0, 1]) as a PNG."""
    return {
        "format": "png",
        "shape": list(display.shape[-2:]),
        "b64": _b64(overlays.overlay_png(display, values, alpha)),
    }
