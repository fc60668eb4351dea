"""The peers users explain with today, as harness variants, and the agreement check.

Each peer runs the way its documentation shows, in fp32, on its own copy of the model (their
hooks stay registered while the explainer object lives): pytorch-grad-cam's ``GradCAM`` and
``LayerCAM`` (the latter over one layer per resolution, like GE's stages), Captum's
``LayerGradCam`` (told the top-1 target, computed outside the timing: Captum needs it), and
TorchCAM's ``GradCAM`` (a forward with gradients, then the extractor on the scores).
"""

from __future__ import annotations

import importlib
from importlib import metadata

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import min_max, pearson
from .variants import OWN_COPY, Built, Setup, VariantSpec

# peer -> (import name, distribution name)
PEERS = {
    "pytorch-grad-cam": ("pytorch_grad_cam", "grad-cam"),
    "captum": ("captum", "captum"),
    "torchcam": ("torchcam", "torchcam"),
}
AGREEMENT_MIN_R = 0.99  # per-sample Pearson correlation of the normalised maps


def peer_status() -> dict[str, tuple[bool, str]]:
    """{peer: (importable, version or why not)}."""
    status = {}
    for peer, (module, distribution) in PEERS.items():
        try:
            importlib.import_module(module)
        except Exception as error:  # a peer that fails to import for any reason is skipped
            status[peer] = (False, f"cannot import {module}: {error} (pip install 'gradex[bench]')")
            continue
        try:
            status[peer] = (True, metadata.version(distribution))
        except metadata.PackageNotFoundError:
            status[peer] = (True, "version unknown")
    return status


def _pgc_gradcam(setup: Setup) -> Built:
    from pytorch_grad_cam import GradCAM

    layer = setup.model.get_submodule(setup.bench_model.target_layer)
    cam = GradCAM(model=setup.model, target_layers=[layer])
    x = setup.x

    def call():
        return cam(input_tensor=x, targets=None)

    return Built(call, cam.activations_and_grads.release, coarse=call)


def _pgc_layercam(setup: Setup) -> Built:
    from pytorch_grad_cam import LayerCAM

    layers = [setup.model.get_submodule(n) for n in setup.bench_model.layercam_layers]
    cam = LayerCAM(model=setup.model, target_layers=layers)
    x = setup.x
    return Built(lambda: cam(input_tensor=x, targets=None), cam.activations_and_grads.release)


def _captum_layergradcam(setup: Setup) -> Built:
    from captum.attr import LayerGradCam

    layer = setup.model.get_submodule(setup.bench_model.target_layer)
    gradcam = LayerGradCam(setup.model, layer)
    x, target = setup.x, setup.top1

    def call():
        return gradcam.attribute(x, target=target, relu_attributions=True)

    return Built(call, coarse=call)


def _torchcam_gradcam(setup: Setup) -> Built:
    from torchcam.methods import GradCAM

    size = setup.bench_model.input_size
    extractor = GradCAM(setup.model, setup.bench_model.target_layer, input_shape=(3, size, size))
    model, x = setup.model, setup.x

    def call():
        scores = model(x)
        return extractor(scores.argmax(dim=1).tolist(), scores)[0]

    return Built(call, extractor.remove_hooks, coarse=call)


PEER_VARIANTS = [
    VariantSpec(
        "pgc_gradcam",
        "pytorch-grad-cam GradCAM",
        "peer",
        _pgc_gradcam,
        model_copy=OWN_COPY,
        needs=("pytorch-grad-cam",),
    ),
    VariantSpec(
        "pgc_layercam",
        "pytorch-grad-cam LayerCAM, 5 layers",
        "peer",
        _pgc_layercam,
        model_copy=OWN_COPY,
        needs=("pytorch-grad-cam",),
    ),
    VariantSpec(
        "captum_layergradcam",
        "Captum LayerGradCam",
        "peer",
        _captum_layergradcam,
        model_copy=OWN_COPY,
        needs=("captum",),
    ),
    VariantSpec(
        "torchcam_gradcam",
        "TorchCAM GradCAM",
        "peer",
        _torchcam_gradcam,
        model_copy=OWN_COPY,
        needs=("torchcam",),
    ),
]


def agreement(ours: torch.Tensor, theirs) -> dict:
    """Compare gradex's coarse map (B,1,h,w) with a peer's map of the same batch ((B,H,W) or
    (B,1,H,W), tensor or array, at the layer's or the input's resolution): both min-max
    normalised per sample at the peer's resolution (ours upsampled bilinearly, as the peers do),
    then the per-sample Pearson correlation. Two constant maps agree; one constant map does not
    agree with a varying one."""
    theirs = (
        theirs.detach().cpu() if torch.is_tensor(theirs) else torch.as_tensor(np.asarray(theirs))
    )
    theirs = theirs.float().reshape(ours.shape[0], 1, *theirs.shape[-2:])
    ours = ours.detach().float().cpu()
    if ours.shape[-2:] != theirs.shape[-2:]:
        ours = F.interpolate(ours, size=theirs.shape[-2:], mode="bilinear", align_corners=False)
    a, b = min_max(ours[:, 0]), min_max(theirs[:, 0])
    # Pearson gives 0 where a map is constant; two constant maps do agree.
    both_constant = (a.flatten(1).amax(dim=1) == 0) & (b.flatten(1).amax(dim=1) == 0)
    r = torch.where(both_constant, 1.0, pearson(a, b))
    min_r = float(r.min())
    return {
        "min_r": round(min_r, 5),
        "max_abs_diff": round(float((a - b).abs().max()), 5),
        "agrees": min_r >= AGREEMENT_MIN_R,
    }
