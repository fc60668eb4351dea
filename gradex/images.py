"""Reading images for the command line: files, folders, and the offline demo photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Modes without colour: the models were trained on RGB photos, so these are skipped, not guessed.
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


class ImageError(ValueError):
    """An input file that cannot be explained; the message names the file and the reason."""


def load_rgb(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in _GREY_MODES:
                raise ImageError(f"{path}: not an RGB image (mode {mode})")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot read as an image ({error.__class__.__name__})") from error


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside each folder (sorted, not recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def demo_photos() -> list[Path]:
    """Photos that ship inside installed packages, so the demo runs offline: scikit-image's cat
    (Chelsea), espresso and motorcycle, and matplotlib's Grace Hopper portrait."""
    photos = []
    skimage_dir = _package_dir("skimage")
    if skimage_dir is None:
        raise ImageError(
            "the demo photos ship with scikit-image: pip install 'gradex[demo]' (or scikit-image)"
        )
    for name in ("chelsea.png", "coffee.png", "motorcycle_left.png"):
        photos.append(skimage_dir / "data" / name)
    matplotlib_dir = _package_dir("matplotlib")
    photos.append(matplotlib_dir / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    return photos
