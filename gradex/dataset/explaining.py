"""The model side of a dataset job: batches of preprocessed images in, one row's numbers and
maps per image out. Both engines (local and Ray) run exactly this, which is what makes their
outputs equal.

Each batch size gets its own ``StaticExplainer`` (a CUDA graph on a GPU, fixed eager on the
CPU), built on first use: a job meets the full batch size and at most a few shorter tails, so no
batch pays for layer discovery, cuDNN's algorithm search or a graph capture more than once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..explainer import PAPER_OPTIONS, Explainer
from ..metrics import min_max
from ..models import ModelBundle, load_model
from ..overlays import as_uint8, overlay_png
from ..static import StaticExplainer


@dataclass(frozen=True)
class ExplainOptions:
    """Everything that decides a row's values; a job's fingerprint includes all of it."""

    model: str
    weights: str | None
    method: str
    gradual: bool
    paper: bool
    map_size: int | None  # None: the model's input size
    map_dtype: str
    top_k: int
    labels: str | None = None  # a --labels file: the class names of target_name and targets

    def explainer_for(self, bundle: ModelBundle) -> Explainer:
        options = PAPER_OPTIONS if self.paper else {}
        return Explainer(bundle.model, method=self.method, gradual=self.gradual, **options)


@dataclass
class BatchResult:
    """Per image (first axis), on the CPU, ready to become Parquet columns."""

    top_classes: np.ndarray  # (B, k) int32
    top_probs: np.ndarray  # (B, k) float32
    target: np.ndarray  # (B,) int32
    score: np.ndarray  # (B,) float32, the explained logit
    prob: np.ndarray  # (B,) float32, the explained class's probability
    saliency: np.ndarray  # (B, S, S) uint8 or float16 in [0, 1]
    cam: np.ndarray  # (B, S, S) likewise: the coarse map, upsampled and min-max scaled
    overlays: list[bytes] | None = None  # PNGs of the GE map over the image, when asked for

    def take(self, positions: list[int]) -> BatchResult:
        """The entries at ``positions``, in that order."""
        return BatchResult(
            **{
                name: [value[p] for p in positions] if isinstance(value, list) else value[positions]
                for name, value in vars(self).items()
                if value is not None
            }
        )


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(B,1,h,w) float maps to (B,size,size), bilinear (antialiased when shrinking)."""
    if tuple(maps.shape[-2:]) == (size, size):
        return maps[:, 0]
    shrink = size < maps.shape[-1] or size < maps.shape[-2]
    resized = F.interpolate(
        maps.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    return resized[:, 0]


def encode_maps(maps: torch.Tensor, dtype: str) -> np.ndarray:
    """(B,S,S) float maps in [0, 1] as the stored dtype."""
    values = maps.detach().float().cpu().numpy()
    return as_uint8(values) if dtype == "uint8" else values.astype(np.float16)


class BatchExplainer:
    """Explains batches for one job. Not shared between threads (one per engine worker)."""

    def __init__(
        self, options: ExplainOptions, device: torch.device, *, bundle=None, overlays=False
    ):
        self.options = options
        self.overlays = overlays
        self.device = device
        self.bundle = (
            bundle
            if bundle is not None
            else load_model(options.model, options.weights, options.labels)
        )
        self.bundle.model.to(device).eval()
        self.explainer = options.explainer_for(self.bundle)
        self.map_size = options.map_size or self.bundle.input_size
        self._static: dict[int, StaticExplainer] = {}

    def _static_for(self, x: torch.Tensor) -> StaticExplainer:
        size = x.shape[0]
        if size not in self._static:
            self._static[size] = self.explainer.static(x, warmup=1)
        return self._static[size]

    def __call__(self, images: torch.Tensor, targets: list[int | None]) -> BatchResult:
        x = images.to(self.device, non_blocking=True)
        static = self._static_for(x)
        exp = static(x, target=None if all(t is None for t in targets) else list(targets))
        probabilities = exp.logits.float().softmax(dim=1)
        top = probabilities.topk(min(self.options.top_k, probabilities.shape[1]), dim=1)
        prob = probabilities.gather(1, exp.target.unsqueeze(1))[:, 0]
        # Both maps min-max scaled per image after resizing, so a stored map spans [0, 1] at
        # any --map-size (shrinking averages the peak away); the coarse map as the panels show
        # it. At the default size the GE map is unchanged: it spans [0, 1] already.
        saliency = min_max(resize_maps(exp.saliency, self.map_size))
        cam = min_max(resize_maps(exp.cam, self.map_size))
        pictures = None
        if self.overlays:
            full = exp.saliency.cpu()
            pictures = [
                overlay_png(self.bundle.to_display(image), full[i])
                for i, image in enumerate(images.cpu())
            ]
        return BatchResult(
            top_classes=top.indices.to(torch.int32).cpu().numpy(),
            top_probs=top.values.cpu().numpy(),
            target=exp.target.to(torch.int32).cpu().numpy(),
            score=exp.score.float().cpu().numpy(),
            prob=prob.cpu().numpy(),
            saliency=encode_maps(saliency, self.options.map_dtype),
            cam=encode_maps(cam, self.options.map_dtype),
            overlays=pictures,
        )
