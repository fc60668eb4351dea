"""Gradual Extrapolation on TorchCAM's maps (GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM,
SmoothGradCAMpp, CAM, ...: extractors made on one target layer).

    from torchcam.methods import GradCAM
    from gradex.integrations import torchcam

    ge = torchcam.with_ge(GradCAM(model, "layer4"))
    out = ge(x)                  # class_idx=None: the top-1 class of each sample

With TorchCAM the user runs the forward (``scores = model(x)``) and then the extractor; the
adapter does both, recording the GE stages in that forward. TorchCAM min-max normalises its maps
by default, which shifts a map whose minimum is above 0 (GE does not depend on a map's scale, but
does on such a shift): pass ``normalized=False`` to extrapolate the raw map.
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


class TorchCamGE:
    """A TorchCAM extractor with Gradual Extrapolation; see ``with_ge``."""

    def __init__(self, extractor, **ge_options):
        core = import_peer("torchcam.methods.core", "torchcam")
        if not isinstance(extractor, core._CAM):
            raise TypeError(
                f"extractor must be a TorchCAM CAM extractor (torchcam.methods.GradCAM, ...), "
                f"got {type(extractor).__name__}"
            )
        if len(extractor.target_names) != 1:
            raise ValueError(
                f"extractor: GE extrapolates the map of one layer, this extractor has "
                f"{len(extractor.target_names)} ({extractor.target_names}); make it on one"
            )
        self.extractor = extractor
        self.explainer = ge_explainer(extractor.model, extractor.target_names[0], ge_options)

    def __call__(self, x: torch.Tensor, class_idx=None, **kwargs) -> PeerExplanation:
        model, extractor = self.extractor.model, self.extractor

        def run():
            scores = model(x)
            ids = scores.argmax(dim=1).tolist() if class_idx is None else class_idx
            return extractor(ids, scores, **kwargs)

        peer, activations = run_recording_stages(self.explainer, x, run)
        heatmap = as_peer_heatmap(peer[0], "the extractor's map", activations[0].device)
        return extrapolate_peer_map(self.explainer, heatmap, activations, x, peer)


def with_ge(extractor, **ge_options) -> TorchCamGE:
    """Gradual Extrapolation added to a TorchCAM extractor.

    ``with_ge(extractor)(x, class_idx=None, **kwargs)`` runs ``scores = extractor.model(x)`` and
    ``extractor(class_idx or the top-1 classes, scores, **kwargs)``, recording the GE stages in
    that forward, and returns a ``PeerExplanation``: ``saliency`` (the GE map at the input's
    size), ``heatmap`` (the (B,1,h,w) map GE started from) and ``peer`` (the extractor's list of
    maps, unchanged). ``ge_options``: ``stages``, ``backend``, ``stage_transform``,
    ``stage_weighting``, ``normalize``, as for ``gradex.Explainer``.
    """
    return TorchCamGE(extractor, **ge_options)
