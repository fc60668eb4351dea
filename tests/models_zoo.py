"""Models the tests explain: random-weight torchvision models and the embedded one, built once."""

from functools import cache

import torch
import torchvision
from torch import nn

import gradex.models

TORCHVISION_MODELS = [
    "resnet18",
    "resnet50",
    "vgg16",
    "densenet121",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
]
ALL_MODELS = [*TORCHVISION_MODELS, "efficientnet_lite0"]


@cache
def get(name: str) -> nn.Module:
    if name == "efficientnet_lite0":
        return gradex.models.load_lite0()
    torch.manual_seed(0)
    return random_statistics(torchvision.models.get_model(name, weights=None).eval())


def random_statistics(model: nn.Module) -> nn.Module:
    """``model`` with random BatchNorm statistics (drawn from torch's global generator). Random
    init leaves BatchNorm at identity; random statistics make the maps less trivial."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


class TinyCNN(nn.Module):
    """Three ReLU stages at 1/2, 1/4, 1/8 of the input: small enough for many quick tests."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.pool(x).flatten(1))


# timm transformers with random weights, small enough for quick tests at 64x64: a hierarchical
# one (Swin: four stages, channels-last maps, window attention), single-resolution ones (ViT
# with a class token, with register tokens, with average pooling; CaiT) and MaxViT (channels-first
# blocks holding channels-last attention).
TIMM_MODELS = {
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 4},
    ),
    "vit": ("vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    "vit_registers": (
        "vit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "reg_tokens": 4},
    ),
    "vit_avg": (
        "vit_tiny_patch16_224",
        {
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "class_token": False,
            "global_pool": "avg",
        },
    ),
    # CaiT: talking-heads attention (a Linear across heads on (B,N,N,heads): channels-last and
    # 4-D, and still attention), then class-attention blocks that append the class token.
    "cait": (
        "cait_xxs24_224",
        {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "depth_token_only": 1},
    ),
    "maxvit": ("maxvit_rmlp_pico_rw_256", {}),
}


@cache
def get_timm(key: str) -> nn.Module:
    import timm

    name, options = TIMM_MODELS[key]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=64, num_classes=5, **options).eval()
