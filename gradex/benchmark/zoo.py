"""The models the harness times, each with the layer every method explains.

The target layer is a module that runs once per forward, so that the peers (whose hooks fire on
every call of a module) and gradex read the very same tensor. ResNet-50 and VGG16 carry random
weights (nothing is downloaded; timing does not depend on the weights), with random BatchNorm
statistics so that the maps are not trivial; EfficientNet-Lite0 is the embedded model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from .. import models


@dataclass(frozen=True)
class BenchModel:
    name: str
    input_size: int
    target_layer: str  # Grad-CAM's layer, for gradex and for every peer
    layercam_layers: tuple[str, ...]  # the peer LayerCAM's layers: one per resolution


ZOO = {
    "resnet50": BenchModel(
        "resnet50", 224, "layer4", ("relu", "layer1", "layer2", "layer3", "layer4")
    ),
    "vgg16": BenchModel(
        "vgg16",
        224,
        "features.30",
        ("features.4", "features.9", "features.16", "features.23", "features.30"),
    ),
    "efficientnet_lite0": BenchModel(
        "efficientnet_lite0",
        224,
        "_bn1",
        ("_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_bn1"),
    ),
    # For CI and smoke runs: seconds on two CPU cores.
    "tiny": BenchModel("tiny", 64, "layer4", ("relu", "layer1", "layer2", "layer3", "layer4")),
}


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator))
                module.running_mean.mul_(0.4).sub_(0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator))
                module.running_var.mul_(1.5).add_(0.5)


def build_model(name: str) -> nn.Module:
    """The model called ``name`` in eval mode, on the CPU, built the same way every run."""
    if name not in ZOO:
        raise ValueError(f"--models: unknown model {name!r}; choose from {', '.join(ZOO)}")
    if name == "efficientnet_lite0":
        return models.load_lite0().eval()
    torch.manual_seed(0)
    torchvision_name = "resnet18" if name == "tiny" else name
    model = torchvision.models.get_model(torchvision_name, weights=None).eval()
    _randomise_batchnorm(model, torch.Generator().manual_seed(0))
    return model
