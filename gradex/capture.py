"""Forward hooks: which layers to read, and reading them during one forward pass.

Discovery runs one probe forward with a hook on every module and records, in completion order,
each 4-D output: its shape, whether it is certainly non-negative, and which module call made it.
Non-negativity is structural (a ReLU-type module made the tensor, or a pooling of such a tensor,
or a container returned exactly that tensor) and confirmed on the probe's values, so a
BatchNorm output that a later in-place ReLU overwrites is not mistaken for a post-ReLU map.

A layer is named by its dotted module name, and by ``name#k`` when the module runs more than once
in one forward (EfficientNet-Lite reuses one ReLU6 module inside each block).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

_NON_NEGATIVE_TYPES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Global pooling into the classifier head: its output is not a feature map to explain.
_HEAD_POOL_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Pass-through and padding modules: their output is a tensor already recorded under the module
# that made it, or that tensor with a border added.
_NOT_A_LAYER_TYPES = (
    nn.Identity,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
_SIGNED_ACTIVATION_TYPES = (
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Tanh,
)

NON_NEGATIVE, SIGNED_ACTIVATION, OTHER = "non-negative", "signed activation", "other"


def _is_non_negative_module(module: nn.Module) -> bool:
    if isinstance(module, _NON_NEGATIVE_TYPES):
        return True
    return isinstance(module, nn.Hardtanh) and module.min_val >= 0


def _is_signed_activation(module: nn.Module) -> bool:
    # Swish modules of the efficientnet-pytorch family are not torch.nn classes.
    return isinstance(module, _SIGNED_ACTIVATION_TYPES) or "Swish" in type(module).__name__


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


@dataclass(frozen=True)
class LayerRef:
    """One call of one module: ``name`` and which call (0-based) in a forward pass."""

    name: str
    call: int = 0
    calls: int = 1  # how often the module runs per forward; decides how the ref is written

    def __str__(self) -> str:
        return f"{self.name}#{self.call}" if self.calls > 1 else self.name


@dataclass(frozen=True)
class TracedOutput:
    order: int  # completion order in the forward pass
    ref: LayerRef
    module_type: str
    shape: tuple[int, ...]
    kind: str  # NON_NEGATIVE, SIGNED_ACTIVATION or OTHER
    is_block: bool  # made by a module with children: a block or stage output of the model


def check_eager(model: nn.Module) -> None:
    """Refuse a TorchScript model, or an eager one with a TorchScript part: forward hooks, which
    are how gradex reads layers and sends the excitation mass down, never run inside
    TorchScript (and ``register_forward_hook`` raises on a ScriptModule)."""
    needs = (
        "gradex reads layers with forward hooks, which do not run inside TorchScript; pass the "
        "eager torch.nn.Module (the model before torch.jit.script or torch.jit.trace)"
    )
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"model is a TorchScript module ({type(model).__name__}, from torch.jit.script or "
            f"torch.jit.trace): {needs}"
        )
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            raise TypeError(f"model: its submodule {name!r} is a TorchScript module: {needs}")


def register_hooks(pairs) -> list:
    """Forward hooks from ``(module, hook)`` pairs, as handles. If a registration fails (a
    module refuses hooks), the ones already made are removed before the error goes on: nothing
    is left on the model on any path."""
    handles: list = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
    except BaseException:
        remove_hooks(handles)
        raise
    return handles


def remove_hooks(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


def trace(model: nn.Module, probe: torch.Tensor) -> list[TracedOutput]:
    """Run ``probe`` through ``model`` once and record every 4-D module output, in order."""
    check_eager(model)
    names = {module: name for name, module in model.named_modules() if name}
    records: list[tuple[nn.Module, int, tuple, str]] = []
    calls: dict[nn.Module, int] = {}
    non_negative: set[tuple] = set()
    signed: set[tuple] = set()
    keep_alive: list[torch.Tensor] = []  # so no freed buffer is reused and mistaken for another
    owner = threading.get_ident()

    def hook(module, inputs, output):
        if threading.get_ident() != owner:  # another thread's forward on the same model
            return
        call = calls.get(module, 0)
        calls[module] = call + 1
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            return
        keep_alive.append(output)
        key = _identity(output)
        if isinstance(module, _NOT_A_LAYER_TYPES):
            return
        first_input = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        pooled_non_negative = (
            isinstance(module, _POOL_TYPES)
            and first_input is not None
            and _identity(first_input) in non_negative
        )
        if (_is_non_negative_module(module) or pooled_non_negative or key in non_negative) and (
            output.numel() == 0 or float(output.detach().amin()) >= 0
        ):
            non_negative.add(key)
            kind = NON_NEGATIVE
        elif _is_signed_activation(module) or key in signed:
            signed.add(key)
            kind = SIGNED_ACTIVATION
        else:
            kind = OTHER
        records.append((module, call, tuple(output.shape), kind))

    handles = register_hooks((module, hook) for module in names)
    try:
        with torch.no_grad():
            model(probe)
    finally:
        remove_hooks(handles)
        keep_alive.clear()
    return [
        TracedOutput(
            order=i,
            ref=LayerRef(names[module], call, calls[module]),
            module_type=type(module).__name__,
            shape=shape,
            kind=kind,
            is_block=next(module.children(), None) is not None,
        )
        for i, (module, call, shape, kind) in enumerate(records)
    ]


def _is_feature_map(entry: TracedOutput, input_hw: tuple[int, int]) -> bool:
    """A (B,C,H,W) map of the image: not 1x1, not larger than the input, and with the input's
    aspect (which rejects channels-last tensors such as ConvNeXt's (B,H,W,C) inside blocks)."""
    h, w = entry.shape[-2:]
    if h * w <= 1 or h > input_hw[0] or w > input_hw[1]:
        return False
    stride_h, stride_w = input_hw[0] / h, input_hw[1] / w
    return max(stride_h, stride_w) / min(stride_h, stride_w) < 1.5


@dataclass(frozen=True)
class Layers:
    """The layers one explanation reads."""

    target: TracedOutput
    stages: tuple[TracedOutput, ...]  # shallow to deep

    def describe(self) -> str:
        lines = [f"target layer: {self.target.ref}  {_shape(self.target)}"]
        lines.append(f"GE stages ({len(self.stages)}, shallow to deep):")
        for stage in self.stages:
            lines.append(f"  {str(stage.ref):40s} {_shape(stage)}  {stage.kind}")
        return "\n".join(lines)


def _shape(entry: TracedOutput) -> str:
    return "x".join(str(v) for v in entry.shape[1:]) + f" ({entry.module_type})"


def find_entry(traced: Sequence[TracedOutput], spec, model: nn.Module, what: str) -> TracedOutput:
    """The traced output that ``spec`` names: a module, a dotted name, or ``name#k``."""
    if isinstance(spec, nn.Module):
        name = next((n for n, m in model.named_modules() if m is spec), None)
        if not name:
            raise ValueError(f"{what}: the module given is not a submodule of the model")
        call = None
    elif isinstance(spec, str):
        name, _, call_text = spec.partition("#")
        if call_text and not call_text.isdigit():
            raise ValueError(f"{what}: {spec!r} is not 'name' or 'name#k' with k a call index")
        call = int(call_text) if call_text else None
    else:
        raise TypeError(f"{what} must be a module or a dotted name, got {type(spec).__name__}")
    if name not in dict(model.named_modules()):
        raise ValueError(f"{what}: the model has no submodule named {name!r}")
    matches = [e for e in traced if e.ref.name == name]
    if not matches:
        raise ValueError(
            f"{what}: {name!r} produced no (B,C,H,W) output in the forward pass; "
            "name a layer that outputs a spatial feature map"
        )
    if call is None:
        if len(matches) > 1:
            options = ", ".join(str(e.ref) for e in matches)
            raise ValueError(f"{what}: {name!r} runs {len(matches)} times; name one of {options}")
        return matches[0]
    for entry in matches:
        if entry.ref.call == call:
            return entry
    raise ValueError(f"{what}: {name!r} has no call #{call} with a (B,C,H,W) output")


def choose_layers(
    traced: Sequence[TracedOutput],
    input_hw: tuple[int, int],
    model: nn.Module,
    target_layer=None,
    stages=None,
    allow_signed: bool = True,
) -> Layers:
    """Resolve explicit choices, or discover the target layer and one stage per resolution.

    The target is the last spatial feature map. A stage is, for every resolution at least as
    fine as the target's, the deepest non-negative map there; where a resolution has none and
    ``allow_signed`` (a stage transform will be applied), the deepest signed activation output,
    else the deepest feature map at all. Within each kind, the output of a block (a module with
    children: ResNet's layer1, ConvNeXt's stages) comes before a lone activation inside the next
    block, such as the 1x1 reduction of ResNet-50's layer2.0, which is narrower and no deeper in
    meaning.
    """
    feature_maps = [e for e in traced if _is_feature_map(e, input_hw)]
    if target_layer is not None:
        target = find_entry(traced, target_layer, model, "target_layer")
    else:
        candidates = [
            e for e in feature_maps if e.module_type not in {t.__name__ for t in _HEAD_POOL_TYPES}
        ]
        if not candidates:
            raise ValueError(
                "the model has no layer with a spatial (B,C,H,W) output larger than 1x1 to "
                "explain; pass target_layer= if its feature maps are shaped differently"
            )
        target = candidates[-1]

    if stages is not None:
        if isinstance(stages, (str, nn.Module)) or not isinstance(stages, Sequence):
            raise TypeError("stages must be a list of modules or dotted names")
        chosen = sorted((find_entry(traced, s, model, "stages") for s in stages), key=_order)
        for entry in chosen:
            if entry.kind != NON_NEGATIVE and not allow_signed:
                raise ValueError(
                    f"stages: {entry.ref} may be negative ({entry.module_type}); pass "
                    "stage_transform='relu' or 'abs', or choose a post-ReLU layer"
                )
        for shallow, deep in itertools.pairwise(chosen):
            if not _coarsens(shallow, deep):
                raise ValueError(
                    f"stages: {deep.ref} ({deep.shape[-2]}x{deep.shape[-1]}) runs after "
                    f"{shallow.ref} but is finer; stages must coarsen from shallow to deep"
                )
        return Layers(target, tuple(chosen))

    th, tw = target.shape[-2:]
    by_resolution: dict[tuple[int, int], list[TracedOutput]] = {}
    for entry in feature_maps:
        h, w = entry.shape[-2:]
        if entry.order <= target.order and h >= th and w >= tw:
            by_resolution.setdefault((h, w), []).append(entry)
    chosen = []
    for resolution in sorted(by_resolution, key=lambda hw: (-hw[0], -hw[1])):
        group = by_resolution[resolution]
        pick = [e for e in group if e.kind == NON_NEGATIVE]
        if not pick and allow_signed:
            pick = [e for e in group if e.kind == SIGNED_ACTIVATION] or group
        if pick:
            chosen.append(max(pick, key=lambda e: (e.is_block, e.order)))
    if not chosen:
        raise ValueError(
            "found no non-negative (post-ReLU) feature map to use as a GE stage; pass "
            "stage_transform='relu' or 'abs' to use signed activations, or stages=[...]"
        )
    chosen = _keep_monotone(chosen)
    return Layers(target, tuple(chosen))


def _order(entry: TracedOutput) -> int:
    return entry.order


def _coarsens(shallow: TracedOutput, deep: TracedOutput) -> bool:
    """Whether ``deep`` is no finer than ``shallow`` in either dimension."""
    return deep.shape[-2] <= shallow.shape[-2] and deep.shape[-1] <= shallow.shape[-1]


def _keep_monotone(chosen: list[TracedOutput]) -> list[TracedOutput]:
    """Stages run in resolution order; drop any that would break shallow-to-deep coarsening."""
    chosen = sorted(chosen, key=_order)
    kept: list[TracedOutput] = []
    for entry in chosen:
        if kept and not _coarsens(kept[-1], entry):
            continue
        kept.append(entry)
    return kept


class HookSession:
    """Hooks on the chosen layers for one forward pass, on this thread only.

    ``on_stage(k, tensor)`` sees stage k's output when it is produced; ``on_target(tensor)`` may
    return a replacement for the target's output. Hooks are removed on exit, also when the
    forward raised; calls from other threads (another explainer on the same model) are ignored.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers,
        on_stage: Callable[[int, torch.Tensor], None] | None,
        on_target: Callable[[torch.Tensor], torch.Tensor | None] | None,
    ):
        self._model = model
        self._layers = layers
        self._on_stage = on_stage
        self._on_target = on_target
        self._handles: list = []
        self._owner: int | None = None
        self._calls: dict[str, int] = {}
        self.fired: set[LayerRef] = set()

    def _wanted(self) -> dict[str, list[tuple[int, str, int]]]:
        wanted: dict[str, list[tuple[int, str, int]]] = {}
        if self._on_stage is not None:
            for k, stage in enumerate(self._layers.stages):
                wanted.setdefault(stage.ref.name, []).append((stage.ref.call, "stage", k))
        if self._on_target is not None:
            target = self._layers.target.ref
            wanted.setdefault(target.name, []).append((target.call, "target", -1))
        return wanted

    def __enter__(self) -> HookSession:
        self._owner = threading.get_ident()
        self._handles = register_hooks(
            (self._model.get_submodule(name), self._make_hook(name, actions))
            for name, actions in self._wanted().items()
        )
        return self

    def _make_hook(self, name: str, actions: list[tuple[int, str, int]]):
        def hook(module, inputs, output):
            if threading.get_ident() != self._owner:
                return None
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            replacement = None
            # Stages first: they must see the output as the module produced it.
            for wanted_call, role, k in sorted(actions, key=lambda a: a[1] != "stage"):
                if wanted_call != call:
                    continue
                self.fired.add(LayerRef(name, call))
                if role == "stage":
                    self._on_stage(k, output)
                else:
                    replacement = self._on_target(output)
            return replacement

        return hook

    def __exit__(self, *exc) -> None:
        remove_hooks(self._handles)

    def check_complete(self) -> None:
        """Raise if a chosen layer did not run (a model whose forward depends on the input)."""
        refs = [s.ref for s in self._layers.stages] if self._on_stage else []
        if self._on_target:
            refs.append(self._layers.target.ref)
        for ref in refs:
            if LayerRef(ref.name, ref.call) not in self.fired:
                raise RuntimeError(f"layer {ref} did not run in this forward pass")
