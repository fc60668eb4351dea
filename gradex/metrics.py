"""How good a saliency map is: the metrics of the project's evaluation protocol, batched and on
the device of the tensors (and model) they are given.

Maps are (B,1,H,W) or (B,H,W) tensors; only their positive part counts as evidence (a map may be
signed, a class map never points with negative values). Each metric returns one value per sample,
so that the caller can take means, medians and bootstrap intervals over images.

- Localisation against ground truth: ``energy_in_mask``, ``pointing_game``, ``grid_localisation``.
- Faithfulness to the model: ``deletion_insertion`` (RISE: Petsiuk et al., BMVC 2018) and
  ``average_drop_increase`` (Grad-CAM++: Chattopadhay et al., WACV 2018; secondary only, a map of
  all ones scores perfectly on it).
- Sanity (Adebayo et al., NeurIPS 2018): ``cascading_randomisation`` with ``spearman`` and
  ``ssim`` between the maps of the trained and the randomised model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

ExplainFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


# -- checks -----------------------------------------------------------------------------------


def _as_maps(value, name: str) -> torch.Tensor:
    """(B,1,H,W) or (B,H,W) -> (B,H,W) float32."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() == 4 and value.shape[1] == 1:
        value = value[:, 0]
    if value.dim() != 3:
        raise ValueError(f"{name} must have shape (B,1,H,W) or (B,H,W), got {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)})")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return value.float()


def _pair(saliency, other, other_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    saliency = _as_maps(saliency, "saliency")
    other = _as_maps(other, other_name)
    if other.shape != saliency.shape:
        raise ValueError(
            f"{other_name} has shape {tuple(other.shape)} but saliency has "
            f"{tuple(saliency.shape)} (as (B,H,W))"
        )
    if other.device != saliency.device:
        raise ValueError(f"{other_name} is on {other.device} but saliency is on {saliency.device}")
    return saliency, other


def _positive_share(saliency: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive saliency that lies in ``region``; 0 for a map with none."""
    positive = saliency.clamp_min(0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * region.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))


# -- localisation -----------------------------------------------------------------------------


def energy_in_mask(saliency, mask) -> torch.Tensor:
    """Σ positive saliency inside the object mask / Σ positive saliency, per sample (0 for a map
    with no positive value). A constant map scores the mask's area fraction."""
    saliency, mask = _pair(saliency, mask, "mask")
    return _positive_share(saliency, (mask > 0).float())


def pointing_game(saliency, mask, tolerance: float = 15.0) -> torch.Tensor:
    """Hit (True) if the map's maximum lies within ``tolerance`` pixels of the object mask
    (Zhang et al., ECCV 2016, 15 px at 224²). A map without a unique peak (a constant map) is a
    miss: it points nowhere. An empty mask is a miss."""
    saliency, mask = _pair(saliency, mask, "mask")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    batch, height, width = saliency.shape
    flat = saliency.flatten(1)
    peak = flat.argmax(dim=1)
    varying = flat.amax(dim=1) > flat.amin(dim=1)
    ys = torch.arange(height, device=saliency.device).view(1, height, 1)
    xs = torch.arange(width, device=saliency.device).view(1, 1, width)
    distance2 = (ys - (peak // width).view(-1, 1, 1)) ** 2 + (
        xs - (peak % width).view(-1, 1, 1)
    ) ** 2
    inside = mask > 0
    near = (distance2.float() <= tolerance**2) & inside
    return near.flatten(1).any(dim=1) & varying


def grid_cell_masks(batch: int, size: tuple[int, int], cells: torch.Tensor, grid=(2, 2)):
    """(B,H,W) masks of one cell of a ``grid`` (rows, cols) per sample, cells numbered row-major."""
    rows, cols = grid
    height, width = size
    if height % rows or width % cols:
        raise ValueError(f"a {height}x{width} map does not split into a {rows}x{cols} grid")
    cells = torch.as_tensor(cells).view(-1).cpu()
    if cells.shape[0] != batch:
        raise ValueError(f"cells must hold one cell index per sample ({batch}), got {cells.shape}")
    if bool(((cells < 0) | (cells >= rows * cols)).any()):
        raise ValueError(f"cells must be in [0, {rows * cols}), got {cells.tolist()}")
    ys = torch.arange(height).view(1, height, 1) // (height // rows)
    xs = torch.arange(width).view(1, 1, width) // (width // cols)
    return ((ys * cols + xs) == cells.view(-1, 1, 1)).float()


def grid_localisation(saliency, cells, grid=(2, 2)) -> torch.Tensor:
    """Positive saliency inside each sample's cell / all its positive saliency (Böhle et al.;
    Rao et al., CVPR 2022). ``cells``: the cell (row-major) whose class was explained. A constant
    map scores 1 / number of cells."""
    saliency = _as_maps(saliency, "saliency")
    masks = grid_cell_masks(saliency.shape[0], saliency.shape[-2:], cells, grid)
    return _positive_share(saliency, masks.to(saliency.device))


# -- faithfulness -----------------------------------------------------------------------------


def _probability(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return model(images).float().softmax(dim=1).gather(1, target.view(-1, 1)).squeeze(1)


def _check_model_inputs(x, saliency, target):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an image batch of shape (B,C,H,W), got {got}")
    saliency = _as_maps(saliency, "saliency")
    if saliency.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(
            f"saliency must match x: ({x.shape[0]},1,{x.shape[2]},{x.shape[3]}), "
            f"got {tuple(saliency.shape)}"
        )
    target = torch.as_tensor(target, device=x.device).view(-1).long()
    if target.shape[0] != x.shape[0]:
        raise ValueError(f"target must hold one class per sample ({x.shape[0]})")
    return saliency.to(x.device), target


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each row of ``curves`` (B, n+1), sampled evenly over [0, 1]."""
    steps = curves.shape[1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curves[:, :-1] + curves[:, 1:]).sum(dim=1) / (2 * steps)


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    saliency,
    target,
    mode: str = "deletion",
    step: int = 224,
    chunk: int = 64,
    deletion_baseline: float = 0.0,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE deletion or insertion: (AUC (B,), curves (B, n+1)).

    Pixels are ranked by saliency (highest first, ties in raster order). Deletion replaces the
    top ``k`` pixels (all channels) with ``deletion_baseline`` (0: the mean colour in normalised
    space); insertion starts from the image blurred (Gaussian, ``blur_kernel``, ``blur_sigma``)
    and puts back the top ``k``; ``k`` grows by ``step`` pixels from none to all. The curve is the
    softmax probability of ``target``; AUC by the trapezoid rule over [0, 1]. Lower deletion and
    higher insertion AUC are better. ``chunk`` images go through the model at once.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if step < 1 or chunk < 1:
        raise ValueError(f"step and chunk must be >= 1, got {step} and {chunk}")
    saliency, target = _check_model_inputs(x, saliency, target)
    batch, channels, height, width = x.shape
    pixels = height * width
    counts = torch.arange(0, pixels + step, step, device=x.device).clamp_max(pixels)
    order = saliency.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=x.device).expand(batch, -1))
    if mode == "deletion":
        start, end = x, torch.full_like(x, deletion_baseline)
    else:
        start = TF.gaussian_blur(x, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma])
        end = x
    curves = torch.empty(batch, counts.numel(), device=x.device)
    for b in range(batch):
        for first in range(0, counts.numel(), chunk):
            k = counts[first : first + chunk]
            changed = (rank[b].view(1, 1, height, width) < k.view(-1, 1, 1, 1)).to(x.dtype)
            images = start[b] * (1 - changed) + end[b] * changed
            curves[b, first : first + k.numel()] = _probability(
                model, images, target[b].expand(k.numel())
            )
    return trapezoid_auc(curves), curves


@torch.no_grad()
def average_drop_increase(
    model: nn.Module, x: torch.Tensor, saliency, target
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: drop = max(0, Y − O) / Y and increase = (O > Y), with Y the softmax
    probability of ``target`` on ``x`` and O on ``x ⊙ map`` (maps in [0, 1]; in normalised
    space, a 0 is the mean colour). Average Drop and Increase in Confidence are their means ×100.
    Secondary only: a map of all ones has no drop."""
    saliency, target = _check_model_inputs(x, saliency, target)
    if bool((saliency < 0).any()) or bool((saliency > 1).any()):
        raise ValueError("saliency must lie in [0, 1] for the Average Drop / Increase")
    original = _probability(model, x, target)
    masked = _probability(model, x * saliency.unsqueeze(1).to(x.dtype), target)
    drop = (original - masked).clamp_min(0) / original.clamp_min(1e-12)
    return drop, masked > original


# -- sanity -----------------------------------------------------------------------------------


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (as scipy.stats.rankdata)."""
    sorted_values, order = values.sort(stable=True)
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(average[inverse])
    ranks[order] = average[inverse]
    return ranks


def spearman(a, b) -> torch.Tensor:
    """Spearman rank correlation between the maps of ``a`` and ``b``, per sample (ties take
    average ranks); 0 where either map is constant (it ranks nothing)."""
    a, b = _pair(a, b, "b")
    out = torch.empty(a.shape[0], dtype=torch.float64, device=a.device)
    for i, (u, v) in enumerate(zip(a.flatten(1), b.flatten(1), strict=True)):
        ru, rv = _average_ranks(u), _average_ranks(v)
        ru, rv = ru - ru.mean(), rv - rv.mean()
        denominator = ru.norm() * rv.norm()
        out[i] = (ru * rv).sum() / denominator if denominator > 0 else 0.0
    return out.float()


def _gaussian_window(sigma: float, truncate: float, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    window = torch.exp(-(taps**2) / (2 * sigma**2))
    return (window / window.sum()).float()


def ssim(a, b, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per sample (Wang et al., 2004): Gaussian window of ``sigma`` (taps to
    3.5 σ), K1 = 0.01, K2 = 0.03, population (co)variances, averaged over the positions where the
    window fits, as ``skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``."""
    a, b = _pair(a, b, "b")
    window = _gaussian_window(sigma, 3.5, a.device)
    if a.shape[-1] < window.numel() or a.shape[-2] < window.numel():
        raise ValueError(f"maps must be at least {window.numel()} pixels on each side for SSIM")

    def blur(t):
        t = F.conv2d(t.unsqueeze(1), window.view(1, 1, 1, -1))
        return F.conv2d(t, window.view(1, 1, -1, 1)).squeeze(1)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return index.flatten(1).mean(dim=1)


def _reinitialise(module: nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        elif any(True for _ in sub.parameters(recurse=False)):
            for parameter in sub.parameters(recurse=False):
                nn.init.normal_(parameter, std=0.02)


def cascading_randomisation(
    model: nn.Module,
    explain: ExplainFn,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Adebayo et al.'s cascading randomisation: re-initialise the model's layers from the
    logits down, one more at a time, on a copy of ``model``, and compare the maps.

    Args:
        explain: ``explain(model, x) -> (B,1,H,W)`` maps (e.g. a fresh ``gradex.Explainer``).
        layers: dotted names, from the output back; default: the model's top-level children that
            hold parameters, last first.

    Returns, for each step: ``{"randomised": name, "spearman": (B,), "ssim": (B,)}``, the maps
    of the model with that layer and every one above it re-initialised against the trained
    model's. ``model`` itself is not touched.
    """
    if layers is None:
        layers = [
            name
            for name, child in reversed(list(model.named_children()))
            if any(True for _ in child.parameters())
        ]
    if not layers:
        raise ValueError("layers: the model has no layer with parameters to randomise")
    trained = _as_maps(explain(model, x), "explain(model, x)")
    randomised = copy.deepcopy(model)
    steps = []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for name in layers:
            _reinitialise(randomised.get_submodule(name))
            maps = _as_maps(explain(randomised, x), f"explain(model with {name} randomised, x)")
            steps.append(
                {
                    "randomised": name,
                    "spearman": spearman(trained, maps),
                    "ssim": ssim(min_max(trained), min_max(maps)),
                }
            )
    return steps


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own minimum and maximum; a constant map becomes 0."""
    flat = maps.flatten(1).float()
    low, high = flat.aminmax(dim=1)
    span = (high - low).view(-1, 1)
    scaled = torch.where(span > 0, (flat - low.view(-1, 1)) / span.clamp_min(1e-30), 0.0)
    return scaled.view(maps.shape)


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """(B,H,W) gradient magnitude of the channel-mean image: the edge-map control (how much a
    map only follows the image's edges)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x must be an image batch of shape (B,C,H,W)")
    grey = x.float().mean(dim=1, keepdim=True)
    kernel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kernel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, kernel.t().contiguous().view(1, 1, 3, 3))
    return torch.sqrt(gx**2 + gy**2)[:, 0]


def pearson(a, b) -> torch.Tensor:
    """Pearson correlation between maps, per sample; 0 where either map is constant."""
    a, b = _pair(a, b, "b")
    a = a.flatten(1) - a.flatten(1).mean(dim=1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(dim=1) / denominator.clamp_min(1e-30), 0.0)


__all__ = [
    "average_drop_increase",
    "cascading_randomisation",
    "deletion_insertion",
    "energy_in_mask",
    "grid_cell_masks",
    "grid_localisation",
    "min_max",
    "pearson",
    "pointing_game",
    "sobel_edges",
    "spearman",
    "ssim",
    "trapezoid_auc",
]
