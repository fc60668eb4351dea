"""Reading images for the command line: files, folders, and the offline demo photos."""

from __future__ import annotations

import importlib.util
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .cli_paths import MAPS_SUFFIX, PANEL_SUFFIX

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Modes without colour: the models were trained on RGB photos, so these are skipped, not guessed.
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


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


def load_rgb(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        with _open_regular(path) as file, warnings.catch_warnings():
            # Sizes between MAX_PIXELS and twice it: PIL warns, check_size refuses.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                check_size(path, *image.size)
                mode = image.mode
                if mode in _GREY_MODES:
                    raise ImageError(f"{path}: not an RGB image (mode {mode})")
                image.load()
                return image.convert("RGB")
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
