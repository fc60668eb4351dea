"""Pictures of explanations: heat-map overlays and the three-panel figure the CLI writes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .metrics import unit_map  # noqa: E402


def overlay(image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured map over a (3,H,W) RGB image in [0, 1]; returns (H,W,3) in [0, 1]."""
    rgb = image.detach().float().permute(1, 2, 0).cpu().numpy()
    heat = matplotlib.colormaps["jet"](unit_map(saliency, rgb.shape[:2]).cpu().numpy())[..., :3]
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
