"""Is GE's lower insertion AUC on the photo crops (testbed A) only the sharpness of its reveal
order? Insertion of Grad-CAM, GE, and GE blurred (Gaussian σ 8 px) on the crops that
``gradex evaluate`` uses for RISE on testbed A (the first of each photo's confident crops).

python bench/insertion_blur_check.py [--crops 5]
"""

from __future__ import annotations

import argparse

import torchvision.transforms.v2.functional as TF

from gradex import Explainer, metrics
from gradex.evaluation.photo_testbed import CROPS_SEED, crops_in_photo_order
from gradex.evaluation.photos import make_crops
from gradex.models import load_lite0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crops", type=int, default=5)
    parser.add_argument("--per-photo", type=int, default=16, help="as gradex evaluate")
    args = parser.parse_args()
    model = load_lite0()
    crops = make_crops(model, args.per_photo, CROPS_SEED)
    order = crops_in_photo_order(crops)[: args.crops]
    x, y = crops.images[order], crops.labels[order]
    ge = Explainer(model)(x, target=y).saliency
    maps = {
        "Grad-CAM": Explainer(model, gradual=False)(x, target=y).saliency,
        "Grad-CAM + GE": ge,
        "GE blurred, σ 8 px": metrics.min_max(TF.gaussian_blur(ge, [33, 33], [8.0, 8.0])[:, 0]),
    }
    for name, saliency in maps.items():
        auc, _ = metrics.deletion_insertion(model, x, saliency, y, "insertion", x.shape[-1])
        values = ", ".join(f"{v:.3f}" for v in auc.tolist())
        print(f"{name:20s} insertion AUC mean {auc.mean():.3f}  per crop: {values}")


if __name__ == "__main__":
    main()
