"""Does the model use the object? The occlusion check of the synthetic testbed.

Before its masks are trusted as ground truth, the model must (1) classify well, (2) fall to
chance when the shape is removed (the image without it, distractors and texture kept), and
(3) stay accurate when everything but the shape is removed (the shape on the mean colour).
"""

from __future__ import annotations

import torch
from torch import nn

from .shapes import CLASSES, Images


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 256):
    correct = 0
    for first in range(0, images.shape[0], chunk):
        logits = model(images[first : first + chunk])
        correct += int((logits.argmax(dim=1) == labels[first : first + chunk]).sum())
    return correct / images.shape[0]


def occlusion_check(model: nn.Module, data: Images) -> dict:
    """Accuracies on the images, without the object, and with only the object; and whether the
    model passes (object removed: within 10 points of chance; only the object: within 10 points
    of the full images)."""
    chance = 1 / len(CLASSES)
    full = accuracy(model, data.images, data.labels)
    without_object = accuracy(model, data.backgrounds, data.labels)
    only_object = accuracy(model, data.images * data.masks.unsqueeze(1), data.labels)
    return {
        "accuracy": full,
        "object_removed": without_object,
        "background_removed": only_object,
        "chance": chance,
        "uses_the_object": without_object <= chance + 0.10 and only_object >= full - 0.10,
    }
