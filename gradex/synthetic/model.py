"""The small CNN of the synthetic testbed, and the weights that ship with gradex.

Four stride-2 stages (conv-BN-ReLU, then a second conv-BN-ReLU at the same resolution), global
average pooling and a linear classifier: at 64×64 the stages are 32², 16², 8², 4², so Grad-CAM at
the last stage is 4×4 and Gradual Extrapolation has three finer stages to carry it through.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .shapes import CLASSES

WEIGHTS = Path(__file__).parent / "weights"
WIDTHS = (16, 32, 64, 96)


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class SyntheticCNN(nn.Module):
    def __init__(self, classes: int = len(CLASSES), widths=WIDTHS):
        super().__init__()
        channels = (3, *widths)
        self.stages = nn.Sequential(
            *(_stage(channels[k], channels[k + 1]) for k in range(len(widths)))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(x)).flatten(1))


def weights_path(seed: int) -> Path:
    return WEIGHTS / f"synthetic_cnn_seed{seed}.pt"


def available_seeds() -> list[int]:
    """The training seeds whose weights ship with this install."""
    return sorted(int(p.stem.rsplit("seed", 1)[1]) for p in WEIGHTS.glob("synthetic_cnn_seed*.pt"))


def load_model(seed: int = 0) -> SyntheticCNN:
    """The shipped CNN trained with ``seed``, in eval mode, on the CPU."""
    path = weights_path(seed)
    if not path.exists():
        raise FileNotFoundError(
            f"no shipped weights for seed {seed} (have {available_seeds()}); "
            f"train them with: python -m gradex.synthetic.train --seed {seed}"
        )
    model = SyntheticCNN()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()
