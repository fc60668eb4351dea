"""The model side of the server: explainers and predictors built and warmed once per batch size.

A batch of n images runs on the smallest bucket (1, 2, 4, ..., max_batch) that holds it, padded
with copies of its last image whose results are dropped: each bucket is a ``StaticExplainer``
(one CUDA graph on a GPU, fixed eager on the CPU) and a predictor of the same shape, so no request
ever pays for layer discovery, cuDNN's algorithm search, Triton's compilation or a graph capture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..explainer import Explainer
from ..models import ModelBundle
from ..static import StaticExplainer, capture_cuda_graph


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get their own explainer: powers of two up to max_batch, and max_batch."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


class StaticPredictor:
    """No-grad inference for one input shape: a CUDA graph on a GPU, plain eager elsewhere.
    The floor an explanation is measured against. Calls run one at a time (one runner thread)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, amp_dtype, warmup: int):
        self.model = model
        self.amp_dtype = amp_dtype
        self.input = example.clone()
        self._graph = None
        if example.device.type == "cuda":
            self._graph, self._logits = capture_cuda_graph(self._forward, example.device, warmup)
        else:
            for _ in range(warmup):
                self._forward()

    def _forward(self) -> torch.Tensor:
        autocast = (
            torch.autocast(self.input.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            return self.model(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        if self._graph is None:
            return self._forward()
        with torch.cuda.device(self.input.device):
            self._graph.replay()
        return self._logits.clone()


@dataclass
class Prediction:
    probabilities: torch.Tensor  # (K,) float32 on the CPU


@dataclass
class ImageExplanation:
    probabilities: torch.Tensor  # (K,) float32, CPU
    target: int
    score: float  # the explained logit
    saliency: torch.Tensor  # (H, W) float32 in [0, 1], CPU
    cam: torch.Tensor  # (h, w) float32, CPU


class Runner:
    """Runs batches of preprocessed (3,H,W) images; built and warmed by ``warm()``."""

    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device,
        *,
        method: str,
        amp_dtype,
        max_batch: int,
        warmup: int,
    ):
        self.bundle = bundle
        self.device = device
        self.amp_dtype = amp_dtype
        self.max_batch = max_batch
        self.warmup = warmup
        self.model = bundle.model.to(device).eval()
        self.explainer = Explainer(self.model, method=method, amp_dtype=amp_dtype)
        self.sizes = buckets(max_batch)
        self._explainers: dict[int, StaticExplainer] = {}
        self._predictors: dict[int, StaticPredictor] = {}
        self.layer_names: dict | None = None  # {"target": name, "stages": [names]}, once warm

    def warm(self) -> None:
        """Build and warm every bucket. Random images, not zeros: a zero input leaves ReLU
        stages dead and would warm a path real photos never take."""
        side = self.bundle.input_size
        generator = torch.Generator().manual_seed(0)
        for size in self.sizes:
            example = torch.randn(size, 3, side, side, generator=generator).to(self.device)
            self._explainers[size] = self.explainer.static(example, warmup=self.warmup)
            self._predictors[size] = StaticPredictor(
                self.model, example, self.amp_dtype, self.warmup
            )
        layers = self._explainers[self.sizes[0]].layers
        # Named once here: every answer carries them.
        self.layer_names = {
            "target": str(layers.target.ref),
            "stages": [str(stage.ref) for stage in layers.stages],
        }

    @property
    def classes(self) -> int:
        return self._explainers[self.sizes[0]].classes

    def _pad(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        count = len(images)
        size = next(s for s in self.sizes if s >= count)
        batch = torch.stack([*images, *[images[-1]] * (size - count)])
        return batch.to(self.device, non_blocking=True), size

    def predict(self, images: Sequence[torch.Tensor]) -> list[Prediction]:
        batch, size = self._pad(images)
        logits = self._predictors[size](batch)
        probabilities = logits.float().softmax(dim=1).cpu()
        return [Prediction(probabilities[i]) for i in range(len(images))]

    def explain(self, items: Sequence[tuple[torch.Tensor, int | None]]) -> list[ImageExplanation]:
        images = [image for image, _ in items]
        targets = [target for _, target in items]
        batch, size = self._pad(images)
        targets += [None] * (size - len(items))
        exp = self._explainers[size](
            batch, target=None if all(t is None for t in targets) else targets
        )
        probabilities = exp.logits.float().softmax(dim=1).cpu()
        ids, scores = exp.target.cpu(), exp.score.float().cpu()
        saliency, cam = exp.saliency[:, 0].cpu(), exp.cam[:, 0].float().cpu()
        return [
            ImageExplanation(probabilities[i], int(ids[i]), float(scores[i]), saliency[i], cam[i])
            for i in range(len(items))
        ]
