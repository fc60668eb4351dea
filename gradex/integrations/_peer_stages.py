"""What every adapter shares: GE stages recorded in the forward pass a peer runs, and GE of the
peer's map through them.

A peer runs the model itself, sometimes more than once (ScoreCAM forwards masked copies of the
input, Captum's integrated gradients scaled copies). The stages GE needs are those of the forward
on the input itself: hooks on the model's root start recording at the first forward whose input
equals ``x`` and stop when it ends, so later forwards are ignored. A peer that never runs the
model on ``x`` itself gets one extra forward, without gradients, for the stages.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..capture import HookSession, remove_hooks
from ..explainer import Explainer, refuse_inference_mode
from ..ops import extrapolate


@dataclass
class PeerExplanation:
    saliency: torch.Tensor  # (B,1,H,W) float32 in [0,1]: GE of the peer's map, at x's size
    heatmap: torch.Tensor  # (B,1,h,w) float32: the peer's map that GE started from (positive part)
    peer: object  # what the peer returned, unchanged


def import_peer(module: str, distribution: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this adapter needs {distribution} ({module} cannot be imported: {error}); "
            f"pip install {distribution}, or pip install 'gradex[peers]' for all three peers"
        ) from error


def ge_explainer(model, target_layer, options: dict) -> Explainer:
    """The gradex Explainer whose stage discovery (``layers_for``) and GE options an adapter
    uses; ``options`` are the adapter's keyword arguments (stages, backend, stage_transform,
    stage_weighting, normalize), checked by the Explainer."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module for Gradual Extrapolation, got "
            f"{type(model).__name__}: GE reads the model's layers with hooks"
        )
    allowed = {"stages", "backend", "stage_transform", "stage_weighting", "normalize"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown GE option(s) {unknown}; the options are {sorted(allowed)}")
    return Explainer(model, target_layer=target_layer, **options)


def _is_the_input(value, x: torch.Tensor) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.shape == x.shape
        and value.dtype == x.dtype
        and value.device == x.device
        and torch.equal(value.detach(), x.detach())
    )


def run_recording_stages(explainer: Explainer, x: torch.Tensor, run: Callable[[], object]):
    """``(run(), stage activations)``: the stages of the first forward of the model on ``x``
    inside ``run``, or of one extra forward if there was none. No hook outlives the call."""
    refuse_inference_mode()
    x = explainer._check_input(x)
    layers = explainer.layers_for(x)
    activations, on_stage = explainer.stage_keeper(layers)
    session = HookSession(explainer.model, layers, on_stage, None)
    owner = threading.get_ident()
    state = {"recording": False, "done": False}

    def start(module, inputs):
        if state["recording"] or state["done"] or threading.get_ident() != owner:
            return
        if inputs and _is_the_input(inputs[0], x):
            session.__enter__()
            state["recording"] = True

    def stop(module, inputs, output):
        if state["recording"] and threading.get_ident() == owner:
            session.__exit__(None, None, None)
            state["recording"], state["done"] = False, True

    handles = [
        explainer.model.register_forward_pre_hook(start),
        explainer.model.register_forward_hook(stop),
    ]
    try:
        result = run()
    finally:
        remove_hooks(handles)
        if state["recording"]:  # the forward raised: its stage hooks go too
            session.__exit__(None, None, None)
    if not state["done"]:
        return result, explainer.capture(x).activations
    session.check_complete()
    return result, activations


def as_peer_heatmap(value, what: str, device: torch.device) -> torch.Tensor:
    """A peer's map ((B,h,w), (B,1,h,w) or (B,C,h,w): summed over channels; a tensor or an
    array) as a (B,1,h,w) float32 tensor on ``device``, positive part (the evidence for the
    class, as Grad-CAM's ReLU keeps it)."""
    heatmap = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
    heatmap = heatmap.detach().to(device=device, dtype=torch.float32)
    if heatmap.dim() == 3:
        heatmap = heatmap.unsqueeze(1)
    if heatmap.dim() != 4:
        raise ValueError(
            f"{what} must be a (B,h,w) or (B,C,h,w) map, got shape {tuple(heatmap.shape)}"
        )
    if heatmap.shape[1] != 1:
        heatmap = heatmap.sum(dim=1, keepdim=True)
    return heatmap.clamp_min(0)


def extrapolate_peer_map(
    explainer: Explainer, heatmap: torch.Tensor, activations, x: torch.Tensor, peer
) -> PeerExplanation:
    saliency = extrapolate(
        heatmap,
        activations,
        output_size=tuple(x.shape[-2:]),
        normalize=explainer.normalize,
        backend=explainer.backend,
        stage_weighting=explainer.stage_weighting,
    )
    return PeerExplanation(saliency=saliency, heatmap=heatmap, peer=peer)
