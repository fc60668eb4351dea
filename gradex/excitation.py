"""Excitation backprop and its contrastive form (Zhang et al., "Top-down Neural Attention by
Excitation Backprop", ECCV 2016 / IJCV 2018): the coarse maps the GE paper used beside Grad-CAM.

Excitation backprop sends a probability mass P down from the target class instead of a
gradient. Through a layer with non-negative input x and weights W (a convolution, a linear layer,
an average pooling), each output unit shares its mass among the inputs that excite it:

    P_in = x ⊙ W₊ᵀ (P_out ⊘ W₊x)            W₊ = max(W, 0), biases ignored

BatchNorm and element-wise activations belong to the unit before them and pass P unchanged; max
pooling passes it to the winning input (its usual backward). The map at the target layer is
Σ_c P. The contrastive form subtracts the mass that the *opposite* of the class (the classifier
row negated) sends to the same layer, and keeps the positive part.

The rules are applied with forward hooks that wrap each layer's output in an autograd function
whose backward is the rule, only while the forward records a graph: the Explainer records it only
after the target layer, so only the layers between the target layer and the logits are touched
(that is where the mass travels). The model's own modules are never changed.
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .capture import register_hooks, remove_hooks

METHODS = ("excitation", "contrastive excitation")


def mass_map(activations: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """The coarse map of both methods: the mass summed over channels, positive part."""
    return mass.sum(dim=1, keepdim=True).clamp_min(0)


# Layers whose excitation rule is P_in = x ⊙ W₊ᵀ(P_out ⊘ W₊x): linear in x, with weights.
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Linear layers with fixed non-negative weights: the same rule, with the layer as it is.
_AVERAGING = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
# Part of the unit before them: P passes unchanged.
_PASS_THROUGH = (
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.ELU,
    nn.Identity,
)


_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STANDARD_FORWARDS = {nn.Linear.forward, *(conv.forward for conv in _CONVOLUTIONS)}


def _positive_forward(module: nn.Module, x: torch.Tensor, negate: bool) -> torch.Tensor:
    """The layer's output for ``x`` with its weights W₊ (or (-W)₊) and no bias, computed without
    touching ``module``: the model may be running in other threads at the same time (swapping
    its parameters, as ``torch.func.functional_call`` does, would hand them W₊ for a while).
    ``forward`` is called, not the module, so that no one's hooks see this rerun."""
    if not isinstance(module, _WEIGHTED):
        return module.forward(x)
    weight = module.weight.detach()
    weight = (-weight if negate else weight).float().clamp_min(0)
    forward = type(module).forward
    if forward is nn.Linear.forward:
        return F.linear(x, weight)
    if forward in _STANDARD_FORWARDS:
        # The convolution's own arithmetic (padding mode included), with the weight given.
        return module._conv_forward(x, weight, None)
    # A subclass with a forward of its own (timm's Conv2dSame pads first): that forward, run on
    # a shallow copy whose parameter table is its own, so the user's module is left alone.
    layer = copy.copy(module)
    parameters = dict(module._parameters)
    parameters["weight"] = weight
    if parameters.get("bias") is not None:
        parameters["bias"] = torch.zeros_like(parameters["bias"], dtype=torch.float32)
    object.__setattr__(layer, "_parameters", parameters)
    return layer.forward(x)


def _share(total: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """mass / total where total > 0, else 0: a unit nothing excites passes no mass on."""
    positive = total > 0
    return torch.where(positive, mass / torch.where(positive, total, 1), 0)


class _ExcitationRule(torch.autograd.Function):
    """Forward: the layer's own output. Backward: the excitation rule for its input."""

    @staticmethod
    def forward(ctx, x, output, module, state):
        ctx.save_for_backward(x)
        # A weak reference: the state holds this node's output (``weighted_outputs``), and a
        # strong one back would make a cycle through the autograd graph, which the garbage
        # collector cannot see into: every call's graph and state would stay alive.
        ctx.module, ctx.state = module, weakref.ref(state)
        return output.clone()

    @staticmethod
    def backward(ctx, mass):
        (x,) = ctx.saved_tensors
        state = ctx.state()
        negate = state is not None and state.negated is ctx.module
        # In float32, whatever autocast ran the forward in (the weights are float32 here, and
        # the backward runs outside the autocast region).
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            leaf = x.detach().float().requires_grad_(True)
            excitation = _positive_forward(ctx.module, leaf, negate)
            (carried,) = torch.autograd.grad(excitation, leaf, _share(excitation, mass.float()))
        return (leaf.detach() * carried).to(x.dtype), None, None, None


class _PassMass(torch.autograd.Function):
    """Forward: the module's own output. Backward: the mass, unchanged, to its input."""

    @staticmethod
    def forward(ctx, x, output):
        ctx.input_shape = x.shape
        return output.clone()

    @staticmethod
    def backward(ctx, mass):
        return mass.reshape(ctx.input_shape), None


class _State:
    def __init__(self) -> None:
        self.negated: nn.Module | None = None  # the classifier, while the contrast is sent down
        self.weighted_outputs: list[tuple[nn.Module, torch.Tensor]] = []


class ExcitationHooks:
    """Hooks on every layer of ``model`` that apply the excitation rules to the graph the
    forward records (register them before the target layer's hook, so that the target call
    itself, which runs without a graph, is left alone). Calls from other threads are ignored."""

    def __init__(self, model: nn.Module):
        self._model = model
        self._handles: list = []
        self._owner: int | None = None
        self.state = _State()

    def _hook(self, module, inputs, output):
        if threading.get_ident() != self._owner or not torch.is_grad_enabled():
            return None
        if len(inputs) != 1 or not isinstance(output, torch.Tensor):
            return None
        (x,) = inputs
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return None
        if isinstance(module, _PASS_THROUGH):
            if x.numel() != output.numel():
                return None
            return _PassMass.apply(x, output.detach())
        wrapped = _ExcitationRule.apply(x, output.detach(), module, self.state)
        if isinstance(module, _WEIGHTED):
            self.state.weighted_outputs.append((module, wrapped))
        return wrapped

    def __enter__(self) -> ExcitationHooks:
        self._owner = threading.get_ident()
        ruled = (*_WEIGHTED, *_AVERAGING, *_PASS_THROUGH)
        self._handles = register_hooks(
            (module, self._hook) for module in self._model.modules() if isinstance(module, ruled)
        )
        return self

    def __exit__(self, *exc) -> None:
        remove_hooks(self._handles)

    def mass_at(
        self, logits: torch.Tensor, leaf: torch.Tensor, ids: torch.Tensor, contrastive: bool
    ) -> torch.Tensor:
        """The mass (B,C,h,w) that the classes ``ids`` send to ``leaf`` (the target layer's
        output); with ``contrastive``, minus the mass that their negated classifier rows send."""
        seed = torch.zeros_like(logits).scatter_(1, ids.view(-1, 1), 1.0)
        try:
            if not contrastive:
                (mass,) = torch.autograd.grad(logits, leaf, seed)
                return mass
            self.state.negated = self._classifier(logits)
            try:
                (contrast,) = torch.autograd.grad(logits, leaf, seed, retain_graph=True)
            finally:
                self.state.negated = None
            (mass,) = torch.autograd.grad(logits, leaf, seed)
            return mass - contrast
        finally:
            self.state.weighted_outputs.clear()  # the graph is spent: let it go now

    def _classifier(self, logits: torch.Tensor) -> nn.Module:
        for module, output in reversed(self.state.weighted_outputs):
            if output is logits:
                return module
        raise ValueError(
            "method 'contrastive excitation' negates the classifier's weights: the model must "
            "return the output of its last Linear (or convolution) layer as it is"
        )
