"""The logits in what a model returns: the ``output=`` selector of the Explainer.

Many models return more than a (B,K) tensor: torchvision's GoogLeNet and Inception in training
mode, detection-style heads and models with an auxiliary output return tuples, HuggingFace models
return an object with ``.logits``, others a dict. The selector says where the logits are: an int
(an index into a tuple or list), a str (a key of a mapping, or an attribute, as HuggingFace's
``ModelOutput`` has both), or a callable that takes the output and returns the logits. It runs
with gradients on, so a callable may compute the logits from the output (slice, combine heads).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence

import torch

OutputSelector = None | int | str | Callable[[object], torch.Tensor]

_HOW = (
    "pass output= to say where the logits are: an index (output=0 for (logits, aux)), a key or "
    "attribute name (output='logits'), or a callable taking the model's output and returning "
    "the (B,K) logits"
)


def check_output_selector(output) -> OutputSelector:
    if output is None or callable(output) or isinstance(output, str):
        return output
    if isinstance(output, numbers.Integral) and not isinstance(output, bool):
        return int(output)
    raise TypeError(
        f"output must be None, an int index, a str key or a callable, got {type(output).__name__}"
    )


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:8]}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _pick(value, selector):
    if callable(selector):
        return selector(value)
    if isinstance(selector, int):
        if isinstance(value, Sequence) and not isinstance(value, (str, torch.Tensor)):
            if -len(value) <= selector < len(value):
                return value[selector]
            raise ValueError(
                f"output={selector}: the model returned {_describe(value)}, which has no index "
                f"{selector}"
            )
        raise ValueError(
            f"output={selector}: the model returned {_describe(value)}, not a tuple or list to "
            "index; pass a key, or a callable"
        )
    if isinstance(value, Mapping):
        if selector in value:
            return value[selector]
    elif hasattr(value, selector):
        return getattr(value, selector)
    raise ValueError(
        f"output={selector!r}: the model returned {_describe(value)}, which has no key or "
        f"attribute {selector!r}"
    )


def select_logits(value, selector: OutputSelector, batch: int) -> torch.Tensor:
    """The (B,K) logits in the model's output ``value``; a clear error naming ``output=`` where
    the output (or what the selector picked) is not that."""
    picked = value if selector is None else _pick(value, selector)
    if isinstance(picked, torch.Tensor) and picked.dim() == 2 and picked.shape[0] == batch:
        return picked
    if selector is None:
        raise ValueError(
            f"model must return (B,K) logits for B={batch}, got {_describe(value)}: {_HOW}"
        )
    raise ValueError(
        f"output={selector!r} must select (B,K) logits for B={batch}, got {_describe(picked)}"
    )
