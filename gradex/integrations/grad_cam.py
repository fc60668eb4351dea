"""Gradual Extrapolation on pytorch-grad-cam's maps: every ``BaseCAM`` method (GradCAM,
GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, EigenCAM, ScoreCAM, AblationCAM, ...).

    from pytorch_grad_cam import GradCAM
    from gradex.integrations import grad_cam

    ge = grad_cam.with_ge(GradCAM(model, target_layers=[model.layer4]))
    out = ge(x, targets=None)     # out.saliency (B,1,H,W); out.peer: the CAM's own (B,H,W) array

pytorch-grad-cam returns its map min-max scaled and resized to the input (cv2). GE starts from
the coarse map the method computed at the target layer (``get_cam_image``'s result, positive
part, before that scaling), kept as the CAM computes it during the call. Methods that compute
their map otherwise (FullGrad), and CAMs over several target layers, give GE their final map,
which ``gradex.extrapolate`` area-pools to the deepest stage's grid.
"""

from __future__ import annotations

import torch

from ._peer_stages import (
    PeerExplanation,
    as_peer_heatmap,
    extrapolate_peer_map,
    ge_explainer,
    import_peer,
    run_recording_stages,
)


class GradCamGE:
    """A pytorch-grad-cam CAM object with Gradual Extrapolation; see ``with_ge``."""

    def __init__(self, cam, **ge_options):
        base_cam = import_peer("pytorch_grad_cam.base_cam", "grad-cam").BaseCAM
        if not isinstance(cam, base_cam):
            raise TypeError(
                f"cam must be a pytorch-grad-cam CAM object (a BaseCAM such as GradCAM), got "
                f"{type(cam).__name__}; wrappers such as FinerCAM hold one as .base_cam"
            )
        self.cam = cam
        layers = list(cam.target_layers)
        # With several target layers, the stages of the last: all of them are finer or equal.
        self.explainer = ge_explainer(cam.model, layers[-1], ge_options)
        self._single_layer = len(layers) == 1

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets=None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> PeerExplanation:
        if aug_smooth:
            raise ValueError(
                "aug_smooth=True averages the CAM over flipped and rescaled forwards, while GE "
                "carries a map through the stages of one forward: call without aug_smooth"
            )
        cam = self.cam
        # pytorch-grad-cam moves the input to the model's device itself; so does the adapter,
        # so that the forward it records is that one.
        input_tensor = (
            input_tensor.to(cam.device) if isinstance(input_tensor, torch.Tensor) else input_tensor
        )
        coarse: list = []
        own = vars(cam).get("get_cam_image")  # an instance attribute of the user's, if any
        method = cam.get_cam_image

        def keep_coarse(*args, **kw):
            result = method(*args, **kw)
            coarse.append(result)
            return result

        def run():
            cam.get_cam_image = keep_coarse
            try:
                return cam(input_tensor=input_tensor, targets=targets, eigen_smooth=eigen_smooth)
            finally:
                if own is None:
                    del cam.get_cam_image
                else:
                    cam.get_cam_image = own

        peer, activations = run_recording_stages(self.explainer, input_tensor, run)
        device = activations[0].device
        if self._single_layer and len(coarse) == 1:
            heatmap = as_peer_heatmap(coarse[0], "the CAM's map", device)
        else:
            heatmap = as_peer_heatmap(peer, "the CAM's map", device)
        return extrapolate_peer_map(self.explainer, heatmap, activations, input_tensor, peer)


def with_ge(cam, **ge_options) -> GradCamGE:
    """Gradual Extrapolation added to a pytorch-grad-cam CAM object.

    ``with_ge(cam)(input_tensor, targets=None, eigen_smooth=False)`` runs the CAM as
    ``cam(input_tensor=..., targets=..., eigen_smooth=...)`` does, recording the GE stages for
    its (last) target layer in the same forward pass, and returns a ``PeerExplanation``:
    ``saliency`` (the GE map at the input's size), ``heatmap`` (the coarse map GE started from)
    and ``peer`` (what the CAM returned, unchanged). ``ge_options``: ``stages``, ``backend``,
    ``stage_transform``, ``stage_weighting``, ``normalize``, as for ``gradex.Explainer``.
    """
    return GradCamGE(cam, **ge_options)
