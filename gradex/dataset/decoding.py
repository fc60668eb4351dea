"""Reading and preprocessing one image of a job, in whichever process decodes (a DataLoader
worker, a Ray task). A file that cannot be explained becomes a reason, never an exception: one
bad file must not stop a job over millions."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..images import ImageError, load_rgb
from .sources import Item


def decode(path: str, preprocess) -> tuple[torch.Tensor | None, str | None]:
    """(the preprocessed (3,H,W) image, None), or (None, why it cannot be explained)."""
    try:
        return preprocess(load_rgb(path)), None
    except ImageError as error:
        return None, str(error)
    except Exception as error:  # a preprocessing failure on a strange file: recorded, not fatal
        return None, f"{path}: cannot preprocess ({type(error).__name__}: {error})"


class DecodedImages(Dataset):
    """The job's pending items for a DataLoader: item i as (i, image or None, reason or None)."""

    def __init__(self, items: list[Item], preprocess):
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image, reason = decode(self.items[i].path, self.preprocess)
        return i, image, reason


def collate(samples):
    """A batch as (positions, images stacked or None, failures as (position, reason))."""
    good = [(i, image) for i, image, _ in samples if image is not None]
    failed = [(i, reason) for i, image, reason in samples if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [i for i, _ in good], images, failed


def quiet_worker(_worker_id: int) -> None:
    """A decoding worker uses one thread: the explainer owns the cores' intra-op threads."""
    torch.set_num_threads(1)
