"""Coarse class activation maps from a layer's activations A and the score's gradient G.

Every method takes A and G of shape (B,C,h,w) and returns a non-negative (B,1,h,w) float32 map,
computed in fp32 whatever the dtype the model ran in. The formulas follow the papers, in the
gradient-only form that pytorch-grad-cam also uses (no exp() of the score for Grad-CAM++).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import excitation
from .excitation import mass_map

CamMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_EPS = 1e-7


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return (weights * activations).sum(dim=1, keepdim=True).clamp_min(0)


def gradcam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): channel weights = spatial mean of the gradient."""
    return _weighted_sum(grads.mean(dim=(2, 3), keepdim=True), activations)


def gradcam_pp(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): closed-form alpha from gradient powers."""
    grads_2 = grads.pow(2)
    grads_3 = grads_2 * grads
    activation_sum = activations.sum(dim=(2, 3), keepdim=True)
    alpha = grads_2 / (2 * grads_2 + activation_sum * grads_3 + _EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * grads.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    return _weighted_sum(weights, activations)


def xgradcam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020): gradients weighted by the normalised activations."""
    activation_sum = activations.sum(dim=(2, 3), keepdim=True)
    weights = (grads * activations).sum(dim=(2, 3), keepdim=True) / (activation_sum + _EPS)
    return _weighted_sum(weights, activations)


def hirescam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020): the element-wise product, summed over channels."""
    return (grads * activations).sum(dim=1, keepdim=True).clamp_min(0)


def layercam(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., TIP 2021): positive gradients as element-wise weights."""
    return (grads.clamp_min(0) * activations).sum(dim=1, keepdim=True).clamp_min(0)


METHODS: dict[str, CamMethod] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_pp,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "layercam": layercam,
}
# Excitation backprop (gradex.excitation): G is the excitation mass sent down from the class,
# not a gradient; the Explainer switches its backward pass for these names.
EXCITATION_METHODS: dict[str, CamMethod] = {name: mass_map for name in excitation.METHODS}
_ALIASES = {
    "grad-cam": "gradcam",
    "gradcampp": "gradcam++",
    "grad-cam++": "gradcam++",
    "eb": "excitation",
    "excitation backprop": "excitation",
    "c-eb": "contrastive excitation",
    "contrastive-excitation": "contrastive excitation",
    "contrastive excitation backprop": "contrastive excitation",
}


# Every method's name as the command line spells it (no spaces; ``get_method`` resolves them).
METHOD_CHOICES = [*METHODS, "excitation", "contrastive-excitation"]


def get_method(name: str | CamMethod) -> tuple[str, CamMethod]:
    """(canonical name, function) for a method name, or a user's own ``f(A, G) -> (B,1,h,w)``."""
    if callable(name):
        return getattr(name, "__name__", "custom"), name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name or a callable, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    known = {**METHODS, **EXCITATION_METHODS}
    if key not in known:
        raise ValueError(f"method must be one of {', '.join(known)}; got {name!r}")
    return key, known[key]


def compute_cam(method: CamMethod, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Run ``method`` in fp32 and check that it returned a (B,1,h,w) map."""
    cam = method(activations.float(), grads.float())
    expected = (activations.shape[0], 1, *activations.shape[-2:])
    if not isinstance(cam, torch.Tensor) or tuple(cam.shape) != expected:
        got = tuple(cam.shape) if isinstance(cam, torch.Tensor) else type(cam).__name__
        raise ValueError(f"method must return a map of shape {expected}, got {got}")
    return cam.float()
