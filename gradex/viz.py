"""Pictures of explanations: heat-map overlays and the three-panel figure the CLI writes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .metrics import min_max  # noqa: E402


def _to_unit(saliency: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1,h,w) or (h,w) map -> (H,W) numpy array in [0, 1] at ``size``."""
    m = saliency.detach().float().reshape(1, 1, *saliency.shape[-2:])
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return min_max(m[0]).view(m.shape[-2:]).cpu().numpy()


def overlay(image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured map over a (3,H,W) RGB image in [0, 1]; returns (H,W,3) in [0, 1]."""
    rgb = image.detach().float().permute(1, 2, 0).cpu().numpy()
    heat = matplotlib.colormaps["jet"](_to_unit(saliency, rgb.shape[:2]))[..., :3]
    return (1 - alpha) * rgb + alpha * heat


def save_panel(
    path: str | Path,
    image: torch.Tensor,
    cam: torch.Tensor,
    saliency: torch.Tensor | None,
    title: str,
    method: str = "Grad-CAM",
) -> None:
    """input | coarse map overlay | GE overlay (left out when ``saliency`` is None), with
    ``title`` above."""
    panels = [
        (image.detach().permute(1, 2, 0).cpu().numpy(), "input"),
        (overlay(image, cam), f"{method} (upsampled)"),
    ]
    if saliency is not None:
        panels.append((overlay(image, saliency), f"Gradual {method}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (picture, label) in zip(axes, panels, strict=True):
        ax.imshow(np.clip(picture, 0, 1))
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
