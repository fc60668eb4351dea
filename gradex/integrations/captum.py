"""Gradual Extrapolation on Captum's layer attributions (LayerGradCam, LayerGradientXActivation,
LayerActivation, LayerIntegratedGradients, ... any ``captum.attr.LayerAttribution``).

    from captum.attr import LayerGradCam
    from gradex.integrations import captum

    ge = captum.with_ge(LayerGradCam(model, model.layer4))
    out = ge(x, target=3, relu_attributions=True)   # arguments as for .attribute(...)

GE starts from the attribution at the layer: summed over channels where it has several
(LayerGradientXActivation's (B,C,h,w)), positive part. Methods that run the model on the input
itself (LayerGradCam, LayerActivation, LayerGradientXActivation) give GE the stages of that
forward; those that only run it on scaled or perturbed copies (LayerIntegratedGradients,
LayerConductance) cost one extra forward, without gradients, for the stages.
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


class CaptumGE:
    """A Captum layer attribution with Gradual Extrapolation; see ``with_ge``."""

    def __init__(self, attribution, model=None, **ge_options):
        layer_attribution = import_peer("captum.attr", "captum").LayerAttribution
        if not isinstance(attribution, layer_attribution):
            raise TypeError(
                f"attribution must be a Captum layer attribution (a LayerAttribution such as "
                f"LayerGradCam), got {type(attribution).__name__}"
            )
        layer = attribution.layer
        if not isinstance(layer, torch.nn.Module) or isinstance(layer, torch.nn.ModuleList):
            raise TypeError(
                "attribution: GE extrapolates the map of one layer; make the attribution with a "
                "single layer"
            )
        model = attribution.forward_func if model is None else model
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                "model: the attribution's forward_func is not a torch.nn.Module; pass the model "
                "it calls as model= (GE reads the model's layers with hooks)"
            )
        self.attribution = attribution
        self.explainer = ge_explainer(model, layer, ge_options)

    def __call__(self, inputs: torch.Tensor, *args, **kwargs) -> PeerExplanation:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                f"inputs must be one (B,C,H,W) image tensor, got {type(inputs).__name__}"
            )
        peer, activations = run_recording_stages(
            self.explainer, inputs, lambda: self.attribution.attribute(inputs, *args, **kwargs)
        )
        if not isinstance(peer, torch.Tensor):
            raise TypeError(
                f"the attribution returned a {type(peer).__name__}, not one map: GE extrapolates "
                "one layer's attribution of one input tensor"
            )
        heatmap = as_peer_heatmap(peer, "the attribution", activations[0].device)
        return extrapolate_peer_map(self.explainer, heatmap, activations, inputs, peer)


def with_ge(attribution, model=None, **ge_options) -> CaptumGE:
    """Gradual Extrapolation added to a Captum layer attribution.

    ``with_ge(attribution)(inputs, *args, **kwargs)`` runs ``attribution.attribute(inputs, *args,
    **kwargs)``, records the GE stages for its layer, and returns a ``PeerExplanation``:
    ``saliency`` (the GE map at the input's size), ``heatmap`` (the (B,1,h,w) map GE started
    from) and ``peer`` (the attribution, unchanged). ``model``: the ``nn.Module`` the
    attribution runs, where its ``forward_func`` is a function around it. ``ge_options``:
    ``stages``, ``backend``, ``stage_transform``, ``stage_weighting``, ``normalize``.
    """
    return CaptumGE(attribution, model, **ge_options)
