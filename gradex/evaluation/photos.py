"""Testbed A's data: 2×2 grids of photos that ship inside installed packages, for the embedded
EfficientNet-Lite0.

Few distinct photos exist offline (scikit-image's and matplotlib's sample data), so each is cut
into many random resized crops (a quarter to all of its area, aspect 3:4 to 4:3) and flips; a
crop is kept only if the model classifies it confidently (top-1 probability ≥ 0.5). A grid puts
four kept crops of four different photos with four different predicted classes side by side at
224 px each (448 px in all), and each cell is explained for its own predicted class. With so few
photos this is corroboration, reported per photo, not a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import nn

from ..images import _package_dir, load_rgb
from ..models import _LITE_MEAN, _LITE_STD

CELL = 224
CONFIDENT = 0.5  # the grid protocol's threshold on the top-1 probability

# (package, path inside it): RGB photos of things ImageNet has classes for. Photos the model
# cannot classify confidently in any crop (the Hubble field, the retina) simply contribute none.
PHOTOS = (
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
)


@dataclass
class Crops:
    images: torch.Tensor  # (N,3,224,224) in the model's input space
    labels: torch.Tensor  # (N,) the predicted class (the one explained)
    photos: torch.Tensor  # (N,) index into ``names``
    probability: torch.Tensor  # (N,) the top-1 probability
    names: list[str]  # the photos' file names


@dataclass
class PhotoGrids:
    images: torch.Tensor  # (N,3,448,448)
    labels: torch.Tensor  # (N,4) each cell's class, row-major
    photos: torch.Tensor  # (N,4) each cell's photo
    names: list[str]


def photo_paths() -> list:
    """The sample photos that are installed here (scikit-image is the ``demo``/``test`` extra)."""
    paths = []
    for package, relative in PHOTOS:
        root = _package_dir(package)
        if root is not None and (root / relative).is_file():
            paths.append(root / relative)
    return paths


def _normalise(rgb: torch.Tensor) -> torch.Tensor:
    return TF.normalize(rgb, list(_LITE_MEAN), list(_LITE_STD))


@torch.no_grad()
def make_crops(model: nn.Module, per_photo: int, seed: int, batch: int = 32) -> Crops:
    """Up to ``per_photo`` confidently classified random crops of each installed photo."""
    paths = photo_paths()
    if not paths:
        raise FileNotFoundError(
            "no sample photos found: testbed A needs scikit-image (pip install 'gradex[demo]')"
        )
    images, labels, photos, probability = [], [], [], []
    # torchvision's random transforms draw from the global generator: seed a forked copy of it,
    # so that the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        crop = T.Compose(
            [
                T.RandomResizedCrop(CELL, scale=(0.25, 1.0), antialias=True),
                T.RandomHorizontalFlip(),
            ]
        )
        for index, path in enumerate(paths):
            rgb = TF.to_dtype(TF.to_image(load_rgb(path)), torch.float32, scale=True)
            candidates = _normalise(torch.stack([crop(rgb) for _ in range(2 * per_photo)]))
            probs = torch.cat([model(part).softmax(dim=1) for part in candidates.split(batch)])
            top, cls = probs.max(dim=1)
            keep = (top >= CONFIDENT).nonzero().flatten()[:per_photo]
            images.append(candidates[keep])
            labels.append(cls[keep])
            photos.append(torch.full((len(keep),), index))
            probability.append(top[keep])
    return Crops(
        torch.cat(images),
        torch.cat(labels),
        torch.cat(photos),
        torch.cat(probability),
        [p.name for p in paths],
    )


def make_grids(crops: Crops, count: int, seed: int) -> PhotoGrids:
    """``count`` grids of four crops from four different photos with four different classes."""
    generator = torch.Generator().manual_seed(seed)
    by_photo = [(crops.photos == p).nonzero().flatten() for p in range(len(crops.names))]
    usable = [p for p, members in enumerate(by_photo) if len(members)]
    if len(usable) < 4:
        raise ValueError(
            f"only {len(usable)} photos gave a confident crop; a 2x2 grid needs four different ones"
        )
    cells = []
    while len(cells) < count:
        chosen = [usable[i] for i in torch.randperm(len(usable), generator=generator)[:4]]
        picks = [
            int(by_photo[p][torch.randint(len(by_photo[p]), (), generator=generator)])
            for p in chosen
        ]
        if len(set(crops.labels[picks].tolist())) == 4:  # two photos may share a class
            cells.append(picks)
    index = torch.tensor(cells)
    parts = crops.images[index.flatten()].view(count, 2, 2, 3, CELL, CELL)
    images = parts.permute(0, 3, 1, 4, 2, 5).reshape(count, 3, 2 * CELL, 2 * CELL)
    return PhotoGrids(images, crops.labels[index], crops.photos[index], crops.names)
