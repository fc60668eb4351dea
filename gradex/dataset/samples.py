"""A folder of sample images for trying ``gradex explain-dataset`` without a dataset at hand,
and for its tests and benchmark: crops of the demo photos (scikit-image's and matplotlib's,
installed, nothing downloaded) at random places, sizes and formats, in ImageFolder layout (one
class folder per photo), plus synthetic images (shapes on noise) in a folder of their own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..images import demo_photos

_FORMATS = (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"))


def _crop(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = photo.size
    side = int(rng.integers(min(width, height) // 2, min(width, height) + 1))
    aspect = rng.uniform(0.75, 1.33)
    w, h = min(width, int(side * aspect)), min(height, side)
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return photo.crop((left, top, left + w, top + h))


def _synthetic(rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(96, 400))
    noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
        x1, y1 = (
            x0 + int(rng.integers(side // 8, side // 2)),
            y0 + int(rng.integers(side // 8, side // 2)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def write_sample_images(
    root: str | Path, count: int, *, seed: int = 0, synthetic_share: float = 0.25
) -> list[Path]:
    """``count`` images under ``root`` (``<photo>/NNNNN.ext`` and ``synthetic/NNNNN.ext``); the
    paths written, in the order of a sorted walk."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = {}
    for path in demo_photos():
        with Image.open(path) as image:
            photos[path.stem.split("_")[0]] = image.convert("RGB")
    names = sorted(photos)
    written = []
    for i in range(count):
        if rng.random() < synthetic_share:
            folder, image = "synthetic", _synthetic(rng)
        else:
            folder = names[int(rng.integers(len(names)))]
            image = _crop(photos[folder], rng)
        kind, suffix = _FORMATS[int(rng.integers(len(_FORMATS)))]
        path = root / folder / f"{i:05d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format=kind, quality=90) if kind != "PNG" else image.save(path)
        written.append(path)
    return sorted(written)
