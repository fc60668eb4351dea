"""What ``gradex.extrapolate`` does with a pytorch-grad-cam map at the input's size (issue 14,
finding 2), before and after area pooling to the deepest stage's grid.

For each demo photo (the embedded EfficientNet-Lite0, ImageNet weights, 224x224, its 7x7 head)
and a random ResNet-18: pytorch-grad-cam's GradCAM map at the input's size, GE of it as
extrapolate ran it before (the chain straight on the fine map: a bilinear downsample to the
deepest stage) and now (area-pooled first), and gradex's own GE at the same layer. Prints the
Pearson correlation of each GE map with the map it was given (near 1: GE handed the blurry map
back) and with gradex's own GE.

python bench/peer_map_resolution.py
"""

from __future__ import annotations

import torch
import torchvision
from pytorch_grad_cam import GradCAM

import gradex
from gradex import reference
from gradex.images import demo_photos, load_rgb
from gradex.metrics import pearson
from gradex.models import lite0_preprocess, load_lite0


def _row(name: str, model, layer, x: torch.Tensor) -> str:
    with GradCAM(model, target_layers=[layer]) as cam:
        fine = torch.from_numpy(cam(input_tensor=x, targets=None)).unsqueeze(1)
    explainer = gradex.Explainer(model, target_layer=layer)
    activations = explainer.capture(x).activations
    size = tuple(x.shape[-2:])
    stages = [reference.reduce_stage(a) for a in activations]
    before = reference.chain(fine, stages, size)  # the chain on the fine map, as it ran before
    after = gradex.extrapolate(fine, activations, size, backend="reference")
    own = explainer(x).saliency

    def r(a, b):
        return float(pearson(a[:, 0], b[:, 0]).mean())

    return (
        f"| {name} | {fine.shape[-1]}² → {activations[-1].shape[-1]}² | {r(before, fine):.3f} | "
        f"{r(after, fine):.3f} | {r(before, own):.3f} | {r(after, own):.3f} |"
    )


def main() -> None:
    print(
        "| model, image | map → grid | r(before, map) | r(after, map) | r(before, own GE) "
        "| r(after, own GE) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    lite0 = load_lite0()
    # gradex's target there is _swish#1, a module Lite0 calls twice per forward, which
    # pytorch-grad-cam cannot name: both read the 7x7 head's BatchNorm output instead.
    for path in demo_photos():
        x = lite0_preprocess(load_rgb(path)).unsqueeze(0)
        print(_row(f"EfficientNet-Lite0, {path.name}", lite0, lite0._bn1, x))
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    print(_row("ResNet-18 (random), noise", resnet, resnet.layer4, x))


if __name__ == "__main__":
    main()
