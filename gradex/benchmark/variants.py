"""What the harness times: no-grad inference (the floor) and gradex's modes, as variants.

A variant is built once per (model, batch) from a ``Setup`` and returns a ``Built``: the call to
time, and what to undo afterwards. The peers are variants too (peers.py). Each variant says which
copy of the model it runs: the shared fp32 one, the shared channels_last one (bf16 rows), or its
own copy (the peers, whose hooks stay registered for as long as they live).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..explainer import Explainer
from .zoo import BenchModel

SHARED, CHANNELS_LAST, OWN_COPY = "shared", "channels_last", "own copy"


@dataclass
class Setup:
    bench_model: BenchModel
    model: nn.Module  # the copy this variant runs (see VariantSpec.model_copy)
    x: torch.Tensor  # the batch, in the memory format this variant's model expects
    top1: torch.Tensor  # (B,) the model's top-1 classes, for peers that must be told the target

    @property
    def device(self) -> torch.device:
        return self.x.device


@dataclass
class Built:
    call: Callable[[], object]
    close: Callable[[], None] = lambda: None
    # Grad-CAM peers: () -> their map of this batch (B,h,w) or (B,1,h,w), for the agreement check
    coarse: Callable[[], object] | None = None


@dataclass(frozen=True)
class VariantSpec:
    key: str
    label: str
    group: str  # "floor", "gradex" or "peer"
    build: Callable[[Setup], Built]
    model_copy: str = SHARED
    devices: tuple[str, ...] = ("cpu", "cuda")
    needs: tuple[str, ...] = field(default=())  # peer packages (peers.PEERS keys)


def _inference(setup: Setup) -> Built:
    model, x = setup.model, setup.x

    def call():
        with torch.no_grad():
            return model(x)

    return Built(call)


def _inference_bf16(setup: Setup) -> Built:
    model, x = setup.model, setup.x

    def call():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
            return model(x)

    return Built(call)


def _inference_graph(setup: Setup) -> Built:
    """The forward captured in one CUDA graph, fed through a static input buffer (a copy per
    call, as gradex's static mode makes)."""
    model, x = setup.model, setup.x
    static_x = x.clone()
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_logits = model(static_x)

    def call():
        static_x.copy_(x)
        graph.replay()
        return static_logits

    return Built(call)


def _explainer(setup: Setup, **options) -> Explainer:
    return Explainer(setup.model, target_layer=setup.bench_model.target_layer, **options)


def _gradex_eager(setup: Setup) -> Built:
    explainer, x = _explainer(setup), setup.x
    return Built(lambda: explainer(x))


def _gradex_static(setup: Setup) -> Built:
    static = _explainer(setup, check=False).static(setup.x)
    x = setup.x
    return Built(lambda: static(x))


def _gradex_bf16(setup: Setup) -> Built:
    explainer, x = _explainer(setup, amp_dtype=torch.bfloat16), setup.x
    return Built(lambda: explainer(x))


def _gradex_static_bf16(setup: Setup) -> Built:
    static = _explainer(setup, amp_dtype=torch.bfloat16, check=False).static(setup.x)
    x = setup.x
    return Built(lambda: static(x))


FLOOR_AND_GRADEX = [
    VariantSpec("inference", "no-grad inference, fp32", "floor", _inference),
    VariantSpec(
        "inference_graph",
        "no-grad inference, fp32, CUDA graph",
        "floor",
        _inference_graph,
        devices=("cuda",),
    ),
    VariantSpec(
        "inference_bf16_cl",
        "no-grad inference, bf16 + channels_last",
        "floor",
        _inference_bf16,
        model_copy=CHANNELS_LAST,
    ),
    VariantSpec("gradex", "gradex Grad-CAM+GE, eager fp32", "gradex", _gradex_eager),
    VariantSpec(
        "gradex_static",
        "gradex Grad-CAM+GE, static fp32 (CUDA graph on GPU)",
        "gradex",
        _gradex_static,
    ),
    VariantSpec(
        "gradex_bf16_cl",
        "gradex Grad-CAM+GE, eager bf16 + channels_last",
        "gradex",
        _gradex_bf16,
        model_copy=CHANNELS_LAST,
    ),
    VariantSpec(
        "gradex_static_bf16_cl",
        "gradex Grad-CAM+GE, static bf16 + channels_last (CUDA graph on GPU)",
        "gradex",
        _gradex_static_bf16,
        model_copy=CHANNELS_LAST,
    ),
]
