"""Seeded synthetic images: a class-defining shape on a class-independent texture, with neutral
distractors, and the exact mask of the shape.

The class is the shape alone (circle, square, triangle, cross, ring): its colour, size and place,
the background texture (smooth noise plus stripes of random angle) and 2-4 soft Gaussian blobs
(distractors, no hard edges) are drawn independently of the class. So a model that classifies
well must look at the shape, and the mask says exactly where that is. Images are returned in the
model's input space: RGB in [0, 1], then (x - 0.5) / 0.25.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLASSES = ("circle", "square", "triangle", "cross", "ring")
SIZE = 64
_MEAN, _STD = 0.5, 0.25


@dataclass
class Images:
    images: torch.Tensor  # (N,3,S,S) float32, normalised
    labels: torch.Tensor  # (N,) int64 class ids (index into CLASSES)
    masks: torch.Tensor  # (N,S,S) bool: the shape's pixels
    backgrounds: torch.Tensor  # (N,3,S,S) the same images without the shape (occlusion check)


@dataclass
class Grids:
    images: torch.Tensor  # (N,3,2S,2S): 2x2 grids of images of four distinct classes
    labels: torch.Tensor  # (N,4) the class in each cell, row-major
    masks: torch.Tensor  # (N,4,2S,2S) each cell's shape mask, in grid coordinates


def _shape_mask(kind: str, size: int, cy: float, cx: float, r: float, angle: float):
    """(S,S) bool mask of one shape centred at (cy, cx), outer radius r, rotated by angle."""
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32) + 0.5,
        torch.arange(size, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    dy, dx = ys - cy, xs - cx
    # Rotate into the shape's frame (circles and rings do not care).
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == "circle":
        return u**2 + v**2 <= r**2
    if kind == "ring":
        d2 = u**2 + v**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        side = r / math.sqrt(2) * 1.15
        return (u.abs() <= side) & (v.abs() <= side)
    if kind == "cross":
        arm = 0.3 * r
        return ((u.abs() <= arm) & (v.abs() <= r)) | ((v.abs() <= arm) & (u.abs() <= r))
    if kind == "triangle":
        # Equilateral, apex at -v: inside the three half-planes.
        k = math.sqrt(3)
        return (v <= r / 2) & (k * u - v <= r) & (-k * u - v <= r)
    raise ValueError(f"unknown shape {kind!r}")


def _texture(size: int, generator: torch.Generator) -> torch.Tensor:
    """(3,S,S) in about [0.2, 0.8]: smooth colour noise plus faint stripes of random angle."""
    coarse = torch.rand(3, 1, 6, 6, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    angle = float(torch.rand((), generator=generator)) * math.pi
    period = 6 + 10 * float(torch.rand((), generator=generator))
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
    return (0.2 + 0.6 * smooth + 0.08 * stripes).clamp(0, 1)


def _blobs(image: torch.Tensor, generator: torch.Generator) -> None:
    """Add 2-4 soft Gaussian blobs of random colour (in place): distractors with no edges."""
    size = image.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for _ in range(int(torch.randint(2, 5, (), generator=generator))):
        cy, cx = (torch.rand(2, generator=generator) * size).tolist()
        sigma = size * (0.04 + 0.06 * float(torch.rand((), generator=generator)))
        colour = torch.rand(3, 1, 1, generator=generator) - 0.5
        weight = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
        image.add_(0.6 * colour * weight).clamp_(0, 1)


def _one(label: int, size: int, generator: torch.Generator):
    background = _texture(size, generator)
    _blobs(background, generator)
    r = size * (0.14 + 0.08 * float(torch.rand((), generator=generator)))
    margin = r + 1
    cy, cx = (margin + torch.rand(2, generator=generator) * (size - 2 * margin)).tolist()
    angle = float(torch.rand((), generator=generator)) * 2 * math.pi
    mask = _shape_mask(CLASSES[label], size, cy, cx, r, angle)
    # The shape's colour stands out from the background under it, lighter or darker at random.
    under = background[:, mask].mean(dim=1)
    sign = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
    offset = 0.3 + 0.2 * torch.rand(3, generator=generator)
    colour = (under + sign * offset).clamp(0, 1)
    if (colour - under).abs().max() < 0.25:  # clamped into the background: go the other way
        colour = (under - sign * offset).clamp(0, 1)
    image = torch.where(mask, colour.view(3, 1, 1), background)
    return image, mask, background


def _normalise(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - _MEAN) / _STD


def make_images(count: int, seed: int, size: int = SIZE, labels=None) -> Images:
    """``count`` images, classes balanced and shuffled (or the given ``labels``), from ``seed``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = torch.arange(count) % len(CLASSES)
        labels = labels[torch.randperm(count, generator=generator)]
    labels = torch.as_tensor(labels, dtype=torch.long)
    images, masks, backgrounds = [], [], []
    for label in labels.tolist():
        image, mask, background = _one(label, size, generator)
        images.append(image)
        masks.append(mask)
        backgrounds.append(background)
    return Images(
        _normalise(torch.stack(images)),
        labels,
        torch.stack(masks),
        _normalise(torch.stack(backgrounds)),
    )


def make_grids(count: int, seed: int, size: int = SIZE) -> Grids:
    """``count`` 2x2 grids, each of four images of four distinct classes (random order)."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.stack(
        [torch.randperm(len(CLASSES), generator=generator)[:4] for _ in range(count)]
    )
    parts = make_images(4 * count, seed + 1_000_003, size, labels=cells.flatten())
    images = parts.images.view(count, 2, 2, 3, size, size)
    images = images.permute(0, 3, 1, 4, 2, 5).reshape(count, 3, 2 * size, 2 * size)
    masks = torch.zeros(count, 4, 2 * size, 2 * size, dtype=torch.bool)
    cell_masks = parts.masks.view(count, 4, size, size)
    for cell in range(4):
        row, col = divmod(cell, 2)
        masks[:, cell, row * size : (row + 1) * size, col * size : (col + 1) * size] = cell_masks[
            :, cell
        ]
    return Grids(images, cells, masks)
