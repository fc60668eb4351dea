"""Testbed B: every method with and without GE on synthetic images whose object masks are exact.

For each shipped training seed of the synthetic CNN: held-out images (energy in mask, pointing
game, deletion/insertion AUC, correlation with the image's edges), 2×2 grids of four classes
(grid localisation of each cell's class, correlation between the maps of two cells' classes),
and the cascading-randomisation sanity check on a subset. Every value is kept per image, so the
report can give means, medians and paired intervals.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import metrics
from ..explainer import Explainer
from ..synthetic import load_model, make_grids, make_images
from ..synthetic.occlusion import occlusion_check
from .rows import COARSE_METHODS, grid_maps, grid_scores, rows

# Generator seeds of the evaluation data: disjoint from the training and validation seeds.
IMAGES_SEED, GRIDS_SEED = 30_000, 40_000

# The synthetic CNN's stage outputs: what GE carries the map through (their final ReLUs), and
# what the LayerCAM fusion baseline fuses.
FUSION_LAYERS = ("stages.0", "stages.1", "stages.2", "stages.3")
# Randomised cumulatively from the logits down, one stage at a time.
SANITY_LAYERS = ("fc", "stages.3", "stages.2", "stages.1", "stages.0")

EXAMPLES = 4  # images shown with each method's maps in the report


def evaluate_seed(
    seed: int,
    images: int,
    grids: int,
    faithfulness_images: int,
    sanity_images: int,
    methods=COARSE_METHODS,
    progress: Callable[[str], None] = print,
) -> dict:
    """Per-image metrics of every row for the CNN trained with ``seed``."""
    model = load_model(seed)
    data = make_images(images, IMAGES_SEED)
    grid_data = make_grids(grids, GRIDS_SEED)
    pixels = data.images.shape[-1] * data.images.shape[-2]
    step = max(1, pixels // 224)  # the RISE protocol's 224 steps
    subset = slice(0, faithfulness_images)
    edges = metrics.sobel_edges(data.images)
    result = {"seed": seed, "occlusion_check": occlusion_check(model, data), "rows": {}}
    examples = {
        "images": data.images[:EXAMPLES],
        "masks": data.masks[:EXAMPLES],
        "labels": data.labels[:EXAMPLES],
        "maps": {},
    }
    for row in rows(methods, FUSION_LAYERS):
        progress(f"seed {seed}: {row.name}")
        maps = row.make(model, data.images, data.labels)
        if row.kind == "method":  # the coarse methods, with and without GE: the report's panels
            examples["maps"][row.name] = maps[:EXAMPLES]
        cell_maps = grid_maps(row, model, grid_data)
        deletion, _ = metrics.deletion_insertion(
            model, data.images[subset], maps[subset], data.labels[subset], "deletion", step
        )
        insertion, _ = metrics.deletion_insertion(
            model, data.images[subset], maps[subset], data.labels[subset], "insertion", step
        )
        drop, increase = metrics.average_drop_increase(model, data.images, maps, data.labels)
        result["rows"][row.name] = {
            "energy_in_mask": metrics.energy_in_mask(maps, data.masks),
            "pointing_game": metrics.pointing_game(maps, data.masks).float(),
            **grid_scores(cell_maps),
            "deletion_auc": deletion,
            "insertion_auc": insertion,
            "edge_correlation": metrics.pearson(maps, edges),
            "average_drop": 100 * drop,
            "increase_in_confidence": 100 * increase.float(),
        }
    result["sanity"] = _sanity(model, data.images[:sanity_images], data.labels[:sanity_images])
    result["examples"] = examples
    return result


def _sanity(model, images, labels) -> dict:
    """Cascading randomisation for Grad-CAM with and without GE."""
    out = {}
    for gradual in (False, True):

        def explain(m, x, gradual=gradual):
            return Explainer(m, gradual=gradual)(x, target=labels).saliency

        steps = metrics.cascading_randomisation(model, explain, images, SANITY_LAYERS)
        out["gradcam + GE" if gradual else "gradcam"] = [
            {
                "randomised": s["randomised"],
                "spearman": float(s["spearman"].mean()),
                "ssim": float(s["ssim"].mean()),
            }
            for s in steps
        ]
    return out
