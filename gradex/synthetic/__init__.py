"""Testbed B of the evaluation: synthetic images with exact ground truth, and a small CNN trained
on them (its weights ship with gradex, so nothing retrains at test or report time).

    from gradex.synthetic import make_images, make_grids, load_model
    batch = make_images(256, seed=1)        # images, labels, masks (exact object masks)
    model = load_model(seed=0)              # the shipped CNN trained with seed 0

Retrain (a few minutes on two CPU cores): ``python -m gradex.synthetic.train --seed 0``.
"""

from .model import SyntheticCNN, available_seeds, load_model
from .shapes import CLASSES, Grids, Images, make_grids, make_images

__all__ = [
    "CLASSES",
    "Grids",
    "Images",
    "SyntheticCNN",
    "available_seeds",
    "load_model",
    "make_grids",
    "make_images",
]
