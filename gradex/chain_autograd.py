"""The gradient of GE with respect to its heatmap, for the fused chain ops.

Users train with saliency losses, so GE must be differentiable on every backend, not only on the
reference (whose plain PyTorch ops autograd records). The fused ``extrapolate_chain`` ops get a
backward that recomputes the chain with the reference ops (``reference.chain_op``, the same math
on the same reduced stages) and differentiates that: one extra chain on maps C_k times smaller
than the activations, paid only when a gradient is asked for. As on the reference, the stages
are constants: the gradient flows to the heatmap (a Grad-CAM's, say, and through it to the
model), not into the stage activations, which GE reads as weights.
"""

from __future__ import annotations

import torch

from . import reference
from ._ext import NORMALIZE_CODES

_NORMALIZE_NAMES = {code: name for name, code in NORMALIZE_CODES.items()}


def _setup_context(ctx, inputs, output) -> None:
    heatmap, sums, maxima, windows, output_size, local, normalize = inputs
    ctx.stages = len(sums)
    ctx.options = (list(windows), list(output_size), bool(local), _NORMALIZE_NAMES[normalize])
    ctx.save_for_backward(heatmap, *sums, *maxima)


def _backward(ctx, grad: torch.Tensor):
    heatmap, *stages = ctx.saved_tensors
    sums, maxima = stages[: ctx.stages], stages[ctx.stages :]
    windows, output_size, local, normalize = ctx.options
    with torch.enable_grad():
        leaf = heatmap.detach().requires_grad_()
        out = reference.chain_op(leaf, sums, maxima, windows, output_size, local, normalize)
        (grad_heatmap,) = torch.autograd.grad(out, leaf, grad)
    none = [None] * ctx.stages
    return grad_heatmap, none, list(none), None, None, None, None


def register(qualname: str) -> None:
    """Give the chain op ``qualname`` (e.g. 'gradex::extrapolate_chain') its backward."""
    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)
