"""Testbed B: every method with and without GE on synthetic images whose object masks are exact.

For each shipped training seed of the synthetic CNN: held-out images (energy in mask, pointing
game, deletion/insertion AUC, correlation with the image's edges), 2×2 grids of four classes
(grid localisation of each cell's class, correlation between the maps of two cells' classes),
and the cascading-randomisation sanity check on a subset. Every value is kept per image, so the
report can give means, medians and paired intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import metrics
from ..cams import METHODS
from ..explainer import Explainer
from ..ops import extrapolate
from ..synthetic import load_model, make_grids, make_images
from ..synthetic.occlusion import occlusion_check
from .baselines import layercam_fusion

# Generator seeds of the evaluation data: disjoint from the training and validation seeds.
IMAGES_SEED, GRIDS_SEED = 30_000, 40_000

# The synthetic CNN's stage outputs: what GE carries the map through, and what the LayerCAM
# fusion baseline fuses.
FUSION_LAYERS = ("stages.0", "stages.1", "stages.2", "stages.3")
# Randomised cumulatively from the logits down, one stage at a time.
SANITY_LAYERS = ("fc", "stages.3", "stages.2", "stages.1", "stages.0")

EXAMPLES = 4  # images shown with each method's maps in the report

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Row:
    name: str
    method: str  # the CAM method, or the control's name
    gradual: bool
    make: MapFn  # (model, images, targets) -> (B,1,H,W) maps in [0, 1]


def _cam_row(method: str, gradual: bool) -> Row:
    def make(model, images, targets):
        return Explainer(model, method=method, gradual=gradual)(images, target=targets).saliency

    return Row(f"{method}{' + GE' if gradual else ''}", method, gradual, make)


def _ge_on_constant(model, images, targets):
    """The control: GE carrying a constant coarse map, i.e. what the activations alone give."""
    explainer = Explainer(model)
    captured = explainer.capture(images)
    coarse = captured.activations[-1]
    constant = torch.ones(images.shape[0], 1, *coarse.shape[-2:], device=images.device)
    return extrapolate(constant, captured.activations, output_size=images.shape[-2:])


def _layercam_fusion(model, images, targets):
    """LayerCAM fused over the stages GE reads (the synthetic CNN's four stage outputs)."""
    return layercam_fusion(model, FUSION_LAYERS, images, targets)


def _random_map(model, images, targets):
    """Uniform noise, one fixed draw per batch shape (the same for every target: its maps of two
    grid cells correlate perfectly, which says nothing about class sensitivity)."""
    generator = torch.Generator().manual_seed(int(images.shape[-1]) * 7919 + images.shape[0])
    return torch.rand(images.shape[0], 1, *images.shape[-2:], generator=generator)


def _centred_gaussian(model, images, targets):
    height, width = images.shape[-2:]
    ys = torch.arange(height).view(-1, 1) + 0.5 - height / 2
    xs = torch.arange(width).view(1, -1) + 0.5 - width / 2
    sigma = min(height, width) / 4
    gaussian = torch.exp(-(ys**2 + xs**2) / (2 * sigma**2))
    return gaussian.expand(images.shape[0], 1, height, width).clone()


def rows(methods=tuple(METHODS)) -> list[Row]:
    out = []
    for method in methods:
        out += [_cam_row(method, False), _cam_row(method, True)]
    out += [
        Row("LayerCAM fusion, 4 layers (peer)", "layercam fusion", False, _layercam_fusion),
        Row("GE on a constant map (control)", "constant", True, _ge_on_constant),
        Row("random map (baseline)", "random", False, _random_map),
        Row("centred Gaussian (baseline)", "gaussian", False, _centred_gaussian),
    ]
    return out


def _grid_maps(row: Row, model, grids) -> list[torch.Tensor]:
    """Maps of each cell's class on the grids: a list of 4 (N,1,2S,2S) tensors."""
    return [row.make(model, grids.images, grids.labels[:, cell]) for cell in range(4)]


def evaluate_seed(
    seed: int,
    images: int,
    grids: int,
    faithfulness_images: int,
    sanity_images: int,
    methods=tuple(METHODS),
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
    for row in rows(methods):
        progress(f"seed {seed}: {row.name}")
        maps = row.make(model, data.images, data.labels)
        if row.method in methods:  # the CAM rows, with and without GE: the report's panels
            examples["maps"][row.name] = maps[:EXAMPLES]
        cell_maps = _grid_maps(row, model, grid_data)
        grid_scores = torch.cat(
            [
                metrics.grid_localisation(cell_maps[cell], torch.full((grids,), cell))
                for cell in range(4)
            ]
        )
        deletion, _ = metrics.deletion_insertion(
            model, data.images[subset], maps[subset], data.labels[subset], "deletion", step
        )
        insertion, _ = metrics.deletion_insertion(
            model, data.images[subset], maps[subset], data.labels[subset], "insertion", step
        )
        result["rows"][row.name] = {
            "energy_in_mask": metrics.energy_in_mask(maps, data.masks),
            "pointing_game": metrics.pointing_game(maps, data.masks).float(),
            "grid_localisation": grid_scores,
            "deletion_auc": deletion,
            "insertion_auc": insertion,
            "edge_correlation": metrics.pearson(maps, edges),
            "cross_cell_correlation": metrics.pearson(cell_maps[0], cell_maps[1]),
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
