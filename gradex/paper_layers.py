"""The layers the original GE code reads: ``target_layer="paper"`` and ``stages="paper"``.

github.com/szandala/gradual-extrapolation (``GradualExtrapolator.register_hooks``) hooks every
leaf ``MaxPool2d`` and every leaf ``Conv2d`` whose stride is above (1, 1), keeps each one's
output in the order they finish, and keeps the input of the first one as the finest map ("for
better output sharpness we collect input images"). Its Grad-CAM is TorchRay's at VGG16's
``features.28``, the last convolution. On VGG16 at 224 px that is:

- stages: the 224² ReLU before pool1 (pool1's input), then pool1 ... pool5 (112² ... 7²);
- target: the 14×14 output of ``features.28``, so the CAM is carried *down* through pool5
  (bilinearly, as the original's ``interpolate`` does) before it is carried up;
- the CAM reads ``features.28``'s output as the forward left it: TorchRay's probe keeps the
  output tensor, which the in-place ReLU after it overwrites, so its activations are post-ReLU;
  the gradient is the conv output's (the original ran torch 1.7.1, where a tensor's retained
  gradient was its value's before an in-place op; torch 2.0 changed that, pytorch#79996).

What gradex does differently, and why:

- signed stages are rectified, never multiplied in with their sign. On ResNet-50 the rule picks
  the normalised image and the strided convolutions' pre-BatchNorm outputs, whose channel sums
  change sign: the original multiplies the map by them, flipping its sign wherever a sum is
  negative. gradex applies the Explainer's ``stage_transform`` to them ('relu' by default,
  'abs' on request) and refuses them with ``stage_transform=None``; on VGG16 every stage is
  non-negative and nothing changes.
- one image's map never depends on its batch-mates: the original takes the max, mean and std
  over the whole batch; gradex computes per image what the original computes for that image run
  alone (``gradex.reference.extrapolate_paper`` is the batch-global form).
- each stage is read when its module returns (the original reads the kept tensors after the
  forward, so an in-place op on a hooked map later in the forward would change what it reads;
  neither VGG16 nor torchvision's ResNets has one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from .capture import (
    CHANNELS_FIRST,
    INPUT,
    NON_NEGATIVE,
    OTHER,
    TracedOutput,
    check_coarsening,
)

PAPER = "paper"


def hooked_by_original(module: nn.Module) -> bool:
    """The original's rule: a max pool, or a convolution with stride > (1, 1) (a tuple
    comparison there, true for every stride but (1, 1)).

    The original looked only at modules without children, so it never hooked a convolution that
    holds its own padding module: on EfficientNet-Lite0, whose strided convolutions are
    ``Conv2dStaticSamePadding`` with a ``ZeroPad2d`` inside, it found no layer at all. gradex
    counts them; on VGG16 and torchvision's ResNets the two rules pick the same layers."""
    if isinstance(module, nn.MaxPool2d):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.stride) > (1, 1)


def paper_target(traced: Sequence[TracedOutput], model: nn.Module) -> TracedOutput:
    """The output of the model's last convolution (VGG16's ``features.28``), larger than 1x1."""
    modules = dict(model.named_modules())
    convolutions = [
        e
        for e in traced
        if isinstance(modules[e.ref.name], nn.Conv2d)
        and e.layout == CHANNELS_FIRST
        and e.shape[-2] * e.shape[-1] > 1
    ]
    if not convolutions:
        raise ValueError(
            "target_layer='paper': the original's Grad-CAM is at the model's last convolution "
            "(VGG16's features.28), and this model has no Conv2d with an output larger than 1x1"
        )
    return convolutions[-1]


def paper_stages(
    traced: Sequence[TracedOutput], model: nn.Module, allow_signed: bool
) -> tuple[TracedOutput, ...]:
    """The original's GE stages, shallow to deep: the input of the first hooked layer, then the
    output of every hooked layer (``hooked_by_original``), each call, in the order they finish."""
    modules = dict(model.named_modules())
    hooked = [
        e for e in traced if e.layout == CHANNELS_FIRST and hooked_by_original(modules[e.ref.name])
    ]
    if not hooked:
        raise ValueError(
            "stages='paper': the original reads the outputs of max pools and strided "
            "convolutions, and this model runs neither; pass stages=[...] or leave it out"
        )
    first = hooked[0]
    if len(first.input_shape) != 4:
        raise ValueError(
            f"stages='paper': the input of {first.ref}, the first layer the original hooks, is "
            "not a (B,C,H,W) tensor"
        )
    # The module that made that input (VGG16's ReLU before pool1) says whether it is
    # non-negative; the model's input (ResNet-50's conv1 reads the image) is not.
    makers = [e for e in traced if e.tensor == first.input_tensor and e.order < first.order]
    source = dataclasses.replace(
        first,
        ref=dataclasses.replace(first.ref, part=INPUT),
        module_type=f"input of {first.module_type}",
        shape=first.input_shape,
        kind=makers[-1].kind if makers else OTHER,
        is_block=False,
        tensor=first.input_tensor,
    )
    stages = (source, *hooked)
    signed = [str(s.ref) for s in stages if s.kind != NON_NEGATIVE]
    if signed and not allow_signed:
        raise ValueError(
            f"stages='paper': the original's layers here include maps that may be negative "
            f"({', '.join(signed)}); the original multiplied by their signed channel sums, "
            "which flips the map's sign where a sum is negative, and gradex does not: pass "
            "stage_transform='relu' (the default) or 'abs' to rectify them"
        )
    check_coarsening(stages, "stages='paper'")
    return stages
