"""The rows of the evaluation tables: every coarse method with and without GE, GE as the paper
computes it, the ablations of GE's defaults, the sharpening peer and the controls.

A row makes (B,1,H,W) maps in [0, 1] from (model, images, class ids); both testbeds use the same
rows, so their tables line up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import metrics
from ..cams import METHODS as GRADIENT_METHODS
from ..excitation import METHODS as EXCITATION_METHODS
from ..explainer import PAPER_OPTIONS, Explainer
from ..ops import extrapolate
from ..reference import PAPER_FORMULA
from .baselines import layercam_fusion

COARSE_METHODS = (*GRADIENT_METHODS, *EXCITATION_METHODS)
# GE as the original code computes it (per image): its layers and its formula.
PAPER_ROW = "gradcam + GE, the paper's layers and formula"
# GE's defaults, one at a time undone (item 6 of the evaluation issue), for Grad-CAM; then the
# paper's formula on gradex's layers, and the paper whole.
ABLATIONS = {
    "gradcam + GE, global stage weighting": {"stage_weighting": "global"},
    "gradcam + GE, standardise-and-clip": {"normalize": "standardize"},
    "gradcam + GE, paper's formula": PAPER_FORMULA,
    PAPER_ROW: PAPER_OPTIONS,
}

MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Row:
    name: str
    method: str  # the coarse method, or the control's name
    gradual: bool
    make: MapFn = field(compare=False)
    kind: str = "method"  # method | ablation | peer | control


def cam_row(method: str, gradual: bool, name: str | None = None, kind="method", **options) -> Row:
    def make(model, images, targets):
        explainer = Explainer(model, method=method, gradual=gradual, **options)
        return explainer(images, target=targets).saliency

    default = f"{method}{' + GE' if gradual else ''}"
    return Row(name or default, method, gradual, make, kind)


def grid_maps(row: Row, model, grids) -> list[torch.Tensor]:
    """Maps of each cell's class on 2×2 grids (``grids.images``, ``grids.labels`` (N,4)): a list
    of 4 (N,1,H,W) tensors."""
    return [row.make(model, grids.images, grids.labels[:, cell]) for cell in range(4)]


def grid_scores(cell_maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Grid localisation of every cell's map (cell-major, N·4 values) and the correlation
    between the maps of cells 0 and 1 (class sensitivity, N values)."""
    count = cell_maps[0].shape[0]
    localisation = [
        metrics.grid_localisation(maps, torch.full((count,), cell))
        for cell, maps in enumerate(cell_maps)
    ]
    return {
        "grid_localisation": torch.cat(localisation),
        "cross_cell_correlation": metrics.pearson(cell_maps[0], cell_maps[1]),
    }


def _ge_on_constant(model, images, targets):
    """The control: GE carrying a constant coarse map, i.e. what the activations alone give."""
    captured = Explainer(model).capture(images)
    coarse = captured.activations[-1]
    constant = torch.ones(images.shape[0], 1, *coarse.shape[-2:], device=images.device)
    return extrapolate(constant, captured.activations, output_size=images.shape[-2:])


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


def rows(
    methods: Sequence[str], fusion_layers: Sequence[str], extra: Sequence[Row] = ()
) -> list[Row]:
    """Each method coarse and with GE; the ablations; LayerCAM fused over ``fusion_layers``;
    any testbed-specific ``extra`` rows; the controls."""
    out = []
    for method in methods:
        out += [cam_row(method, False), cam_row(method, True)]
    out += [cam_row("gradcam", True, name, "ablation", **o) for name, o in ABLATIONS.items()]
    out += list(extra)

    def fusion(model, images, targets):
        return layercam_fusion(model, fusion_layers, images, targets)

    out += [
        Row(
            f"LayerCAM fusion, {len(fusion_layers)} layers (peer)",
            "layercam",
            False,
            fusion,
            "peer",
        ),
        Row("GE on a constant map (control)", "constant", True, _ge_on_constant, "control"),
        Row("random map (baseline)", "random", False, _random_map, "control"),
        Row("centred Gaussian (baseline)", "gaussian", False, _centred_gaussian, "control"),
    ]
    return out
