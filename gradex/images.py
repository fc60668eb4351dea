"""Reading images for the command line: files, folders, and the offline demo photos."""

from __future__ import annotations

import importlib.util
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .cli_paths import MAPS_SUFFIX, PANEL_SUFFIX

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# 16-bit grey (PNG, TIFF): the format's own range, 0..65535, maps to 0..255, so a 16-bit and an
# 8-bit copy of one photo give the model the same image.
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
# With transparency: composited on white, as an image viewer or a web page shows them; the RGB
# hidden under transparent pixels is often black or leftover paint, never what a person saw.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


# Decoding is bounded before it starts, from the header alone: a few hundred bytes of PNG can
# declare gigapixels, and a thin strip is blown up by the resize of its short side to the model's
# input size (1x6000 pixels becomes a 224x1,344,000 float tensor, 3.6 GB). MAX_PIXELS is PIL's
# decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, whose default only warns); MAX_ASPECT
# keeps the resized image under 50 times the model's input.
MAX_PIXELS = 89_478_485
MAX_ASPECT = 50

_FILE_KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class ImageError(ValueError):
    """An input file that cannot be explained; the message names the file and the reason."""


def _not_regular(path: Path, mode: int) -> ImageError:
    kind = next((name for test, name in _FILE_KINDS.items() if test(mode)), "not a plain file")
    return ImageError(f"{path}: not a regular file ({kind}), not read")


def size_problem(width: int, height: int, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why an image of this size is refused before it is decoded, or None: over ``max_pixels``,
    or an aspect ratio over MAX_ASPECT."""
    if width * height > max_pixels:
        return (
            f"{width}x{height} pixels ({width * height:,}) is over the limit of "
            f"{max_pixels:,} pixels"
        )
    short, long = sorted((width, height))
    if long > MAX_ASPECT * max(short, 1):
        return (
            f"{width}x{height} pixels, an aspect ratio over the limit of {MAX_ASPECT}:1 "
            "(its short side would be scaled up to the model's input size)"
        )
    return None


def check_size(path: str | Path, width: int, height: int) -> None:
    """Refuse, by name, an image whose decoding or preprocessing would take unbounded memory."""
    problem = size_problem(width, height)
    if problem is not None:
        raise ImageError(f"{path}: {problem}, not decoded")


def _open_regular(path: Path):
    """A binary file object for ``path``, which must be a regular file. A FIFO or a device is
    refused from its status, before any open() that would block (or rewind a tape)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    # O_NONBLOCK: had the file been swapped for a FIFO since the stat, open() still returns.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    return os.fdopen(fd, "rb")


def _grey_to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grey image as 8-bit grey, scaled by its range rather than clipped at
    255 (Pillow's convert clips). 16-bit: the format's range. 32-bit integer ("I") and float
    ("F") have no fixed range: 0..65535 integers (how some decoders hand over 16-bit files) and
    0..1 floats are taken as such, anything else is stretched from its minimum to its maximum."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(values.min()), float(values.max())
    if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def as_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as the RGB a person sees: its EXIF orientation applied (a phone stores
    portrait photos sideways, with a tag), grey and 16-bit images scaled to 8 bits and
    repeated over three channels, palette and CMYK converted, transparency composited on white.
    Shared by the command line, the dataset job and the server."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = _grey_to_8_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """The image in ``path`` as RGB (see ``as_rgb``), its size checked before decoding."""
    path = Path(path)
    try:
        with _open_regular(path) as file, warnings.catch_warnings():
            # Sizes between MAX_PIXELS and twice it: PIL warns, check_size refuses.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                check_size(path, *image.size)
                image.load()
                try:
                    return as_rgb(image)
                except ValueError as error:  # a mode Pillow cannot convert (LAB, HSV, ...)
                    raise ImageError(
                        f"{path}: cannot convert an image of mode {image.mode} to RGB ({error})"
                    ) from error
    except Image.DecompressionBombError as error:  # over twice PIL's limit: refused in open()
        raise ImageError(f"{path}: over the limit of {MAX_PIXELS:,} pixels ({error})") from error
    except (OSError, UnidentifiedImageError) as error:
        raise ImageError(f"{path}: cannot read as an image ({error.__class__.__name__})") from error


@dataclass(frozen=True)
class FoundImages:
    """The image files that inputs name, and how many subfolders a walk that is not recursive
    left out (so a caller can say so rather than skip them silently)."""

    files: list[Path]
    skipped_folders: int = 0


def _is_output(name: str) -> bool:
    """Files gradex explain writes: outputs, never inputs."""
    return name.lower().endswith((PANEL_SUFFIX, MAPS_SUFFIX))


def _images_in(folder: Path, recursive: bool) -> FoundImages:
    """The image files in ``folder`` (and, when ``recursive``, in its subfolders at any depth),
    sorted by path; hidden files and folders and gradex's outputs left out. Links to folders are
    not followed: a link back up the tree would never end."""
    files: list[Path] = []
    skipped = 0
    for here, folders, names in os.walk(folder):
        visible = sorted(name for name in folders if not name.startswith("."))
        if recursive:
            folders[:] = visible
        else:
            skipped += len(visible)
            folders[:] = []
        files.extend(
            Path(here, name)
            for name in names
            if not name.startswith(".")
            and Path(name).suffix.lower() in IMAGE_SUFFIXES
            and not _is_output(name)
        )
    return FoundImages(sorted(files, key=lambda p: p.relative_to(folder).parts), skipped)


def find_images(inputs: list[str | Path], recursive: bool = False) -> FoundImages:
    """Files as given, and the image files inside each folder: only its own files, or with
    ``recursive`` those of its subfolders too, at any depth."""
    files: list[Path] = []
    skipped = 0
    for item in map(Path, inputs):
        if item.is_dir():
            found = _images_in(item, recursive)
            files.extend(found.files)
            skipped += found.skipped_folders
        else:
            files.append(item)
    return FoundImages(files, skipped)


def expand_inputs(inputs: list[str | Path], recursive: bool = False) -> list[Path]:
    """Files as given, and the image files inside each folder (sorted; subfolders only when
    ``recursive``). Hidden files and gradex's outputs in a folder (``*.gradex.png``) are left
    out."""
    return find_images(inputs, recursive).files


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
