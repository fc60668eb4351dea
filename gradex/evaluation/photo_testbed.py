"""Testbed A: the embedded EfficientNet-Lite0 on 2×2 grids of confidently classified photo crops.

Per row: grid localisation of each cell's class (and each cell's photo, for the per-photo table),
the correlation between the maps of two cells' classes, and on single crops deletion/insertion,
Average Drop / Increase and the correlation with the crop's edges. Two extra rows answer "which
tensor in a block": GE through the blocks' outputs (linear bottlenecks, made non-negative by
'relu' or 'abs') instead of the default post-ReLU6 maps.

The diagnostic for failing cells: each cell's share of the stages' activation strength (the
product over stages of the cell's mean channel sum, as a share of the four cells'), beside how
much GE changed the cell's grid localisation. With the paper's global weighting, GE moves a class
map towards the cells that fire hardest, whatever their class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import metrics
from ..explainer import Explainer
from ..models import load_lite0
from .photos import make_crops, make_grids
from .rows import COARSE_METHODS, PAPER_ROW, cam_row, grid_maps, grid_scores, rows

CROPS_SEED, GRIDS_SEED = 60_000, 70_000
# The last block at each resolution (448 px grids: 224, 112, 56, 28, 14).
BLOCK_OUTPUTS = ("_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15")
EXAMPLES = 2  # grids shown with each method's maps in the report
# Deletion/insertion cost 2 × 225 forward passes an image (over 15 s on a 2-core CPU): only the
# methods and the paper (its layers and formula, PAPER_ROW) get them here; the other rows show "–".


def _stage_rows():
    return [
        cam_row(
            "gradcam",
            True,
            f"gradcam + GE, block outputs ({transform})",
            "ablation",
            stages=list(BLOCK_OUTPUTS),
            stage_transform=transform,
        )
        for transform in ("relu", "abs")
    ]


def crops_in_photo_order(crops) -> torch.Tensor:
    """Indices of the crops, every photo's first crop first, then every photo's second, ...:
    the first few cover several photos."""
    photos = crops.photos.tolist()
    first = {photo: i for i, photo in reversed(list(enumerate(photos)))}
    rank_in_photo = torch.tensor([i - first[photo] for i, photo in enumerate(photos)])
    return torch.argsort(rank_in_photo, stable=True)


def energy_share(model, grids: torch.Tensor) -> torch.Tensor:
    """(N,4) log of each cell's share of the activation strength, averaged over the GE stages
    (log ¼ = −1.39 is an even share; GE's product over five stages compounds five times it)."""
    captured = Explainer(model).capture(grids)
    total = torch.zeros(grids.shape[0], 4)
    for activation in captured.activations:
        # Mean channel sum of each cell, row-major as the grid's cells.
        strength = F.adaptive_avg_pool2d(activation.sum(dim=1, keepdim=True), 2).flatten(1)
        cells = strength.clamp_min(1e-30)
        total += (cells / cells.sum(dim=1, keepdim=True)).log()
    return total / len(captured.activations)


def evaluate_photos(
    grids: int,
    crops_per_photo: int,
    faithfulness_images: int,
    single_crops: int,
    methods=COARSE_METHODS,
    progress: Callable[[str], None] = print,
) -> dict:
    model = load_lite0()
    crops = make_crops(model, crops_per_photo, CROPS_SEED)
    grid_data = make_grids(crops, grids, GRIDS_SEED)
    order = crops_in_photo_order(crops)
    # Crops for Average Drop / Increase and the edge correlation, the first ones for RISE.
    singles, single_labels = crops.images[order[:single_crops]], crops.labels[order[:single_crops]]
    step = crops.images.shape[-1]  # 224 steps at 224²
    edges = metrics.sobel_edges(singles)
    result = {
        "names": crops.names,
        "crops_per_photo": torch.bincount(crops.photos, minlength=len(crops.names)).tolist(),
        "cell_photos": grid_data.photos.T.flatten(),  # cell-major, as the scores below
        "energy_share": energy_share(model, grid_data.images).T.flatten(),
        "rows": {},
        "examples": {"images": grid_data.images[:EXAMPLES], "maps": {}},
    }
    for row in rows(methods, BLOCK_OUTPUTS, extra=_stage_rows()):
        progress(f"photos: {row.name}")
        cell_maps = grid_maps(row, model, grid_data)
        if row.kind == "method":
            result["examples"]["maps"][row.name] = cell_maps[0][:EXAMPLES]
        maps = row.make(model, singles, single_labels)
        drop, increase = metrics.average_drop_increase(model, singles, maps, single_labels)
        scores = {
            **grid_scores(cell_maps),
            "edge_correlation": metrics.pearson(maps, edges),
            "average_drop": 100 * drop,
            "increase_in_confidence": 100 * increase.float(),
        }
        if faithfulness_images and (row.kind == "method" or row.name == PAPER_ROW):
            few = slice(0, faithfulness_images)
            for curve in ("deletion", "insertion"):
                scores[f"{curve}_auc"], _ = metrics.deletion_insertion(
                    model, singles[few], maps[few], single_labels[few], curve, step
                )
        result["rows"][row.name] = scores
    return result
