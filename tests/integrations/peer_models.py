"""What the adapters' tests explain: a random-weight ResNet-18 (10 classes) and TinyCNN."""

import torch
import torchvision
from models_zoo import TinyCNN, random_statistics
from torch import nn

import gradex

SIZE = 64  # layer4 is 2x2: the stages run 32, 16, 16, 8, 4, 2
# TinyCNN's stage3 (4x4 at 32 px) has 32 channels: the methods that run a forward per channel
# (ScoreCAM, AblationCAM) take a second there, against minutes on ResNet-18's 512.
TINY_SIZE = 32


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return random_statistics(torchvision.models.resnet18(num_classes=10).eval())


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return random_statistics(TinyCNN().eval())


def images(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def stages_of(model: nn.Module, layer, x: torch.Tensor) -> list[torch.Tensor]:
    """gradex's own GE stages for ``layer``, from a forward of their own."""
    return gradex.Explainer(model, target_layer=layer).capture(x).activations


def hook_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules()
    }
