"""Sharpening baselines GE is compared with: multi-layer LayerCAM fusion (Jiang et al., TIP
2021), the strongest peer that also sharpens a class map with earlier layers at similar cost."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..cams import layercam
from ..metrics import min_max


def layercam_fusion(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """LayerCAM at each of ``layers`` (dotted module names, each run once per forward), each
    upsampled to the input and min-max normalised, then averaged and normalised again: the
    fusion pytorch-grad-cam applies to a LayerCAM over several layers. (B,1,H,W) in [0, 1]."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, name=name: outputs.__setitem__(name, output)
        )
        for name in layers
    ]
    try:
        with torch.enable_grad():
            logits = model(x)
            score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
            grads = torch.autograd.grad(score, [outputs[name] for name in layers])
    finally:
        for handle in handles:
            handle.remove()
    size = x.shape[-2:]
    fused = torch.zeros(x.shape[0], size[0] * size[1], device=x.device)
    for name, grad in zip(layers, grads, strict=True):
        cam = layercam(outputs[name].detach().float(), grad.float())
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        fused += min_max(cam[:, 0]).flatten(1)
    return min_max(fused.view(-1, *size)).unsqueeze(1)
