"""Forward hooks: which layers to read, and reading them during one forward pass.

Discovery runs one probe forward with a hook on every module and records, in completion order,
each 4-D output: its shape, whether it is certainly non-negative, and which module call made it.
Non-negativity is structural (a ReLU-type module made the tensor, or a pooling of such a tensor,
or a container returned exactly that tensor) and confirmed on the probe's values, so a
BatchNorm output that a later in-place ReLU overwrites is not mistaken for a post-ReLU map.

A layer is named by its dotted module name, and by ``name#k`` when the module runs more than once
in one forward (EfficientNet-Lite reuses one ReLU6 module inside each block).

Transformers lay their maps out differently: Swin's stages hand on (B,H,W,C) channels-last maps,
ViT's blocks (B,N,C) token sequences with N = h*w patches after a few class/register tokens.
Which dimension holds the channels is decided by what the model does with the tensor, not by its
shape alone (a (1,16,16,16) map reads both ways): a Linear or a LayerNorm on the last dimension
makes it channels-last, a Conv2d, BatchNorm2d or pooling on dimension 1 channels-first, and a
module that hands on a tensor of its input's shape (a block, an activation) keeps the layout.
Every recognised map is presented to the rest of gradex as a (B,C,H,W) view (``as_feature_map``).
Attention tensors (softmax outputs, anything computed inside an attention module, window
batches whose first dimension is not the batch) are never feature maps.
"""

from __future__ import annotations

import dataclasses
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

# How a recorded tensor holds its map: (B,C,H,W), (B,H,W,C), or (B,N,C) tokens on an h x w grid.
CHANNELS_FIRST, CHANNELS_LAST, TOKENS = "channels-first", "channels-last", "tokens"
# Class, distillation and register tokens before the patch tokens (timm puts at most 1 + 1 + 4
# or so in front); more than this is not read as a patch grid.
_MAX_PREFIX_TOKENS = 8
_CHANNEL_DIM_TYPES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    *_POOL_TYPES,
)
_SOFTMAX_TYPES = (nn.Softmax, nn.Softmax2d, nn.LogSoftmax)
_LAST, _FIRST = "last", "first"


def _is_non_negative_module(module: nn.Module) -> bool:
    if isinstance(module, _NON_NEGATIVE_TYPES):
        return True
    return isinstance(module, nn.Hardtanh) and module.min_val >= 0


def _is_signed_activation(module: nn.Module) -> bool:
    # Swish modules of the efficientnet-pytorch family are not torch.nn classes.
    return isinstance(module, _SIGNED_ACTIVATION_TYPES) or "Swish" in type(module).__name__


def _is_attention_module(module: nn.Module) -> bool:
    # torch's own, and timm's Attention, WindowAttention, AttentionCl, PartitionAttentionCl,
    # TalkingHeadAttn, ClassAttn...: what they compute inside (queries, keys, (B*windows, heads,
    # N, N) probabilities, CaiT's Linear across heads on (B,N,N,heads)) is never a map of the
    # image, though some of it is 4-D and some channels-last.
    name = type(module).__name__
    return isinstance(module, nn.MultiheadAttention) or "Attention" in name or "Attn" in name


def _channels_at(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    """Which end of ``shape`` the module treats as channels, for a module that shows it."""
    if isinstance(module, nn.Linear):
        return _LAST if module.in_features == shape[-1] else None
    # A genuine LayerNorm over the last dimension; subclasses such as LayerNorm2d override
    # forward to normalise dimension 1 of an (B,C,H,W) map.
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return _LAST if tuple(module.normalized_shape) == (shape[-1],) else None
    if len(shape) == 4 and isinstance(module, _CHANNEL_DIM_TYPES):
        return _FIRST
    return None


def _plausible_grid(h: int, w: int, input_hw: tuple[int, int]) -> bool:
    """A grid of the image: not 1x1, not larger than the input, and with the input's aspect."""
    if h * w <= 1 or h > input_hw[0] or w > input_hw[1]:
        return False
    stride_h, stride_w = input_hw[0] / h, input_hw[1] / w
    return max(stride_h, stride_w) / min(stride_h, stride_w) < 1.5


def _token_grid(
    tokens: int, known_grids: Sequence[tuple[int, int]], input_hw: tuple[int, int]
) -> tuple[int, int, int] | None:
    """(prefix tokens, h, w) for a sequence of ``tokens``: a grid seen elsewhere in the model
    (the patch embedding's) with the fewest prefix tokens, else the grid closest to the input's
    aspect; None if no grid fits."""
    fits = [
        (tokens - h * w, h, w)
        for h, w in known_grids
        if 0 <= tokens - h * w <= _MAX_PREFIX_TOKENS and _plausible_grid(h, w, input_hw)
    ]
    if fits:
        return min(fits)
    aspect = input_hw[0] / input_hw[1]
    for prefix in range(min(_MAX_PREFIX_TOKENS, tokens - 1) + 1):
        n = tokens - prefix
        grids = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
        grids = [g for g in grids if _plausible_grid(*g, input_hw)]
        if grids:
            h, w = min(grids, key=lambda g: abs(g[0] / g[1] - aspect))
            return prefix, h, w
    return None


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


# What a LayerRef reads of its module call: what it returns, or the first tensor it is given.
OUTPUT, INPUT = "output", "input"


@dataclass(frozen=True)
class LayerRef:
    """One call of one module: ``name`` and which call (0-based) in a forward pass; ``part``
    says whether the call's output or its first input is read (the paper's layer rule reads
    the input of its first hooked layer: the image itself on ResNet-50)."""

    name: str
    call: int = 0
    calls: int = 1  # how often the module runs per forward; decides how the ref is written
    part: str = OUTPUT

    def __str__(self) -> str:
        base = f"{self.name}#{self.call}" if self.calls > 1 else self.name
        return f"{base} (input)" if self.part == INPUT else base


@dataclass(frozen=True)
class TracedOutput:
    order: int  # completion order in the forward pass
    ref: LayerRef
    module_type: str
    shape: tuple[int, ...]  # as a (B,C,H,W) map, whatever the layout the module returned
    kind: str  # NON_NEGATIVE, SIGNED_ACTIVATION or OTHER
    is_block: bool  # made by a module with children: a block or stage output of the model
    layout: str = CHANNELS_FIRST  # CHANNELS_FIRST, CHANNELS_LAST or TOKENS
    prefix: int = 0  # TOKENS: class/register tokens before the h*w patch tokens
    attention: bool = False  # computed inside attention: never a feature map
    affects_score: bool = True  # the top logit depends on it (checked for transformer layouts)
    # The tensor's identity in the probe forward: a block and the containers around it that
    # return its output unchanged share one.
    tensor: tuple = dataclasses.field(default=(), compare=False, repr=False)
    # The module's first input (the paper's layer rule reads one): its identity and shape.
    input_tensor: tuple = dataclasses.field(default=(), compare=False, repr=False)
    input_shape: tuple = dataclasses.field(default=(), compare=False, repr=False)


def as_feature_map(entry: TracedOutput, output: torch.Tensor) -> torch.Tensor:
    """The module's ``output`` as a (B,C,H,W) view (a copy for tokens); gradients flow through."""
    if entry.layout == CHANNELS_FIRST:
        return output
    if entry.layout == CHANNELS_LAST:
        return output.permute(0, 3, 1, 2)
    h, w = entry.shape[-2:]
    patches = output[:, entry.prefix :]
    return patches.transpose(1, 2).reshape(output.shape[0], output.shape[-1], h, w)


def from_feature_map(
    entry: TracedOutput, feature_map: torch.Tensor, output: torch.Tensor
) -> torch.Tensor:
    """A (B,C,H,W) ``feature_map`` back in the layout of the module's ``output``, the prefix
    tokens taken from ``output``: what the rest of the model reads in its place."""
    if entry.layout == CHANNELS_FIRST:
        return feature_map
    if entry.layout == CHANNELS_LAST:
        return feature_map.permute(0, 2, 3, 1)
    patches = feature_map.flatten(2).transpose(1, 2)
    if entry.prefix == 0:
        return patches
    return torch.cat([output[:, : entry.prefix].to(patches.dtype), patches], dim=1)


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


def register_hooks(pairs, pre: bool = False) -> list:
    """Forward hooks (``pre``: forward pre-hooks) from ``(module, hook)`` pairs, as handles. If a
    registration fails (a module refuses hooks), the ones already made are removed before the
    error goes on: nothing is left on the model on any path."""
    handles: list = []
    try:
        for module, hook in pairs:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook))
    except BaseException:
        remove_hooks(handles)
        raise
    return handles


def remove_hooks(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


@dataclass
class _Call:
    module: nn.Module
    call: int
    input_key: tuple | None
    input_shape: tuple[int, ...] | None
    key: tuple
    shape: tuple[int, ...]
    kind: str


def trace(
    model: nn.Module,
    probe: torch.Tensor,
    logits_of: Callable[[object], torch.Tensor] | None = None,
) -> list[TracedOutput]:
    """Run ``probe`` through ``model`` once and record every module output that is a map of the
    image, in order: 4-D outputs (channels-first, or channels-last where the model treats the
    last dimension as channels) and (B,N,C) token sequences whose N fits a patch grid.
    ``logits_of`` takes the model's output to its logits (the Explainer's ``output=``) where
    the model returns more than them."""
    check_eager(model)
    names = {module: name for name, module in model.named_modules() if name}
    records: list[_Call] = []
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
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            return
        keep_alive.append(output)
        key = _identity(output)
        if isinstance(module, _NOT_A_LAYER_TYPES):
            return
        first_input = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if first_input is not None:
            keep_alive.append(first_input)
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
        records.append(
            _Call(
                module,
                call,
                None if first_input is None else _identity(first_input),
                None if first_input is None else tuple(first_input.shape),
                key,
                tuple(output.shape),
                kind,
            )
        )

    handles = register_hooks((module, hook) for module in names)
    try:
        with torch.no_grad():
            model(probe)
    finally:
        remove_hooks(handles)
        keep_alive.clear()
    entries = _read_layouts(model, records, names, calls, probe)
    maps = [e for e in entries if _is_feature_map(e, tuple(probe.shape[-2:]))]
    if _is_transformer(maps):  # CNNs pay nothing for this
        entries = _mark_score_dependence(model, probe, entries, logits_of)
    return entries


def _is_transformer(maps: Sequence[TracedOutput]) -> bool:
    """Whether the model's deepest block hands on a channels-last or token map (a leaf module
    after it, such as torchvision Swin's final Permute to (B,C,H,W), does not decide)."""
    blocks = [e for e in maps if e.is_block] or maps
    return bool(blocks) and blocks[-1].layout != CHANNELS_FIRST


def _channel_evidence(records: Sequence[_Call]) -> dict[tuple, set[str]]:
    """For each tensor, which end holds its channels, as the modules that made or read it show;
    carried through modules that hand on a tensor of their input's shape (blocks, activations,
    norms), both ways, until nothing changes."""
    evidence: dict[tuple, set[str]] = {}
    for r in records:
        if r.input_key is not None and r.input_shape is not None:
            side = _channels_at(r.module, r.input_shape)
            if side:
                evidence.setdefault(r.input_key, set()).add(side)
                evidence.setdefault(r.key, set()).add(side)
    same_shape = [r for r in records if r.input_key is not None and r.input_shape == r.shape]
    changed = True
    while changed:
        changed = False
        for r in same_shape:
            known = evidence.get(r.input_key, set()) | evidence.get(r.key, set())
            for key in (r.input_key, r.key):
                if known - evidence.get(key, set()):
                    evidence[key] = set(known)
                    changed = True
    return evidence


def _read_layouts(model, records, names, calls, probe) -> list[TracedOutput]:
    input_hw = tuple(probe.shape[-2:])
    batch = probe.shape[0]
    evidence = _channel_evidence(records)
    in_attention = {
        sub
        for module in model.modules()
        if _is_attention_module(module)
        for sub in module.modules()
    }
    attention_keys = {r.key for r in records if isinstance(r.module, _SOFTMAX_TYPES)}
    layouts: list[tuple[str, int, tuple[int, ...]] | None] = []
    for r in records:
        sides = evidence.get(r.key, set())
        channels_last = sides == {_LAST}
        if len(r.shape) == 4:
            b, *rest = r.shape
            layouts.append(
                (CHANNELS_LAST, 0, (b, rest[2], rest[0], rest[1]))
                if channels_last
                else (CHANNELS_FIRST, 0, r.shape)
            )
        else:
            layouts.append(None)  # tokens: resolved below, once the grids are known
    known_grids = list(
        dict.fromkeys(
            layout[2][-2:]
            for r, layout in zip(records, layouts, strict=True)
            if layout and evidence.get(r.key) and _plausible_grid(*layout[2][-2:], input_hw)
        )
    )
    entries = []
    for r, layout in zip(records, layouts, strict=True):
        if layout is None:
            if evidence.get(r.key, set()) != {_LAST}:
                continue
            grid = _token_grid(r.shape[1], known_grids, input_hw)
            if grid is None:
                continue
            prefix, h, w = grid
            layout = (TOKENS, prefix, (r.shape[0], r.shape[2], h, w))
        name, shape = layout[0], layout[2]
        entries.append(
            TracedOutput(
                order=len(entries),
                ref=LayerRef(names[r.module], r.call, calls[r.module]),
                module_type=type(r.module).__name__,
                shape=shape,
                kind=r.kind,
                is_block=next(r.module.children(), None) is not None,
                layout=name,
                prefix=layout[1],
                attention=(
                    r.module in in_attention or r.key in attention_keys or r.shape[0] != batch
                ),
                tensor=r.key,
                input_tensor=r.input_key or (),
                input_shape=r.input_shape or (),
            )
        )
    return entries


def _mark_score_dependence(
    model, probe, entries: list[TracedOutput], logits_of=None
) -> list[TracedOutput]:
    """Mark the transformer-layout maps that the top logit does not depend on.

    A ViT that classifies from its class token never reads the patch tokens of its last block's
    output (the final norm works token by token), so their gradient is exactly zero and a CAM
    there is empty; the last block's input is the last map the class token attends to. One
    probe forward and backward, with a zero added to each map so that the gradient can be read
    without cutting the graph."""
    watched = {
        (e.ref.name, e.ref.call): e
        for e in entries
        if e.layout != CHANNELS_FIRST and not e.attention
    }
    modules = dict(model.named_modules())
    zeros: dict[tuple[str, int], torch.Tensor] = {}
    seen: dict[str, int] = {}
    owner = threading.get_ident()

    def make_hook(name):
        def hook(module, inputs, output):
            if threading.get_ident() != owner:
                return None
            call = seen.get(name, 0)
            seen[name] = call + 1
            if (name, call) not in watched or not isinstance(output, torch.Tensor):
                return None
            zero = torch.zeros_like(output, requires_grad=True)
            zeros[(name, call)] = zero
            return output + zero

        return hook

    handles = register_hooks(
        (modules[name], make_hook(name)) for name in dict.fromkeys(n for n, _ in watched)
    )
    try:
        with torch.enable_grad():
            output = model(probe)
            logits = output if logits_of is None else logits_of(output)
    finally:
        remove_hooks(handles)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.requires_grad:
        return entries  # not checkable here; the explainer reports a bad output itself
    keys = list(zeros)
    grads = torch.autograd.grad(
        logits.max(dim=1).values.sum(), [zeros[k] for k in keys], allow_unused=True
    )
    marked = dict(zip(keys, grads, strict=True))
    result = []
    for e in entries:
        key = (e.ref.name, e.ref.call)
        if key in marked:
            grad = marked[key]
            if e.layout == TOKENS:
                grad = None if grad is None else grad[:, e.prefix :]
            depends = grad is not None and bool(grad.abs().amax() > 0)
            e = dataclasses.replace(e, affects_score=depends)
        result.append(e)
    return result


def _is_feature_map(entry: TracedOutput, input_hw: tuple[int, int]) -> bool:
    """A (B,C,H,W) map of the image (in any layout): not attention, not 1x1, not larger than the
    input, and with the input's aspect (which also rejects channels-last tensors that no module
    showed to be channels-last, read as (B,C,H,W))."""
    return not entry.attention and _plausible_grid(*entry.shape[-2:], input_hw)


@dataclass(frozen=True)
class Layers:
    """The layers one explanation reads."""

    target: TracedOutput
    stages: tuple[TracedOutput, ...]  # shallow to deep
    # A map after the target that is 1x1 at this input size: it may be the one a larger input
    # would explain (gradex.Explainer checks, and refuses rather than move the target).
    collapsed: TracedOutput | None = None
    transformer: bool = False  # found in channels-last or token maps
    # The CAM reads the target's output as the forward left it, not as the module returned it:
    # the paper's Grad-CAM (TorchRay's probe on VGG16's last conv, which the in-place ReLU after
    # it overwrote; gradex.paper_layers).
    target_as_left: bool = False

    @property
    def single_resolution(self) -> bool:
        """A transformer with one resolution (ViT): nothing finer to carry a map through."""
        sizes = {tuple(s.shape[-2:]) for s in self.stages}
        return self.transformer and sizes <= {tuple(self.target.shape[-2:])}

    def describe(self) -> str:
        lines = [f"target layer: {self.target.ref}  {_shape(self.target)}"]
        if self.target_as_left:
            lines[0] += "  read as the forward left it (the paper's Grad-CAM)"
        lines.append(f"GE stages ({len(self.stages)}, shallow to deep):")
        for stage in self.stages:
            lines.append(f"  {str(stage.ref):40s} {_shape(stage)}  {stage.kind}")
        return "\n".join(lines)


def _shape(entry: TracedOutput) -> str:
    layout = "" if entry.layout == CHANNELS_FIRST else f", {entry.layout}"
    if entry.prefix:
        layout += f" after {entry.prefix} prefix token{'s' if entry.prefix > 1 else ''}"
    return "x".join(str(v) for v in entry.shape[1:]) + f" ({entry.module_type}{layout})"


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
        return _not_attention(matches[0], what)
    for entry in matches:
        if entry.ref.call == call:
            return _not_attention(entry, what)
    raise ValueError(f"{what}: {name!r} has no call #{call} with a (B,C,H,W) output")


def _not_attention(entry: TracedOutput, what: str) -> TracedOutput:
    if entry.attention:
        raise ValueError(
            f"{what}: {entry.ref} is an attention tensor ({entry.module_type}, shape "
            f"{'x'.join(map(str, entry.shape[1:]))}), not a map of the image; name a block or "
            "stage output (or leave it out to let gradex find one)"
        )
    return entry


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
    meaning. ``'paper'`` for either takes the original GE code's layers (gradex.paper_layers).
    """
    feature_maps = [e for e in traced if _is_feature_map(e, input_hw)]
    head_pools = {t.__name__ for t in _HEAD_POOL_TYPES}
    candidates = [e for e in feature_maps if e.module_type not in head_pools]
    # A transformer: its deepest block's map is channels-last or tokens. Only those are read
    # then (its patch embedding's conv is one layer, not a stage), and a CNN whose blocks hold
    # channels-last tensors inside (ConvNeXt) is read as before.
    transformer = _is_transformer(candidates)
    feature_maps = [e for e in feature_maps if (e.layout != CHANNELS_FIRST) == transformer]
    candidates = [e for e in candidates if (e.layout != CHANNELS_FIRST) == transformer]
    collapsed = None
    # The original GE code's layers (gradex.paper_layers, which builds on this module).
    from .paper_layers import PAPER, paper_stages, paper_target

    paper_target_chosen = isinstance(target_layer, str) and target_layer == PAPER
    if paper_target_chosen:
        target = paper_target(traced, model)
    elif target_layer is not None:
        target = find_entry(traced, target_layer, model, "target_layer")
    else:
        if transformer:
            # The deepest block the score reads (a class-token ViT never reads its last
            # block's patch tokens: the block before it is the last one that counts).
            reads = [e for e in candidates if e.affects_score]
            candidates = [e for e in reads if e.is_block] or reads
        if not candidates:
            raise ValueError(
                "the model has no layer with a spatial output larger than 1x1 to explain (no "
                "(B,C,H,W) or channels-last map, and no token sequence on a patch grid that the "
                "score depends on); pass target_layer= if its feature maps are shaped differently"
            )
        target = candidates[-1]
        collapsed = _collapsed_after(traced, target, input_hw, head_pools)

    if isinstance(stages, str) and stages == PAPER:
        chosen = paper_stages(traced, model, allow_signed)
        return Layers(target, chosen, collapsed, transformer, paper_target_chosen)
    if stages is not None:
        if isinstance(stages, (str, nn.Module)) or not isinstance(stages, Sequence):
            raise TypeError("stages must be a list of modules or dotted names, or 'paper'")
        chosen = sorted((find_entry(traced, s, model, "stages") for s in stages), key=_order)
        for entry in chosen:
            if entry.kind != NON_NEGATIVE and not allow_signed:
                raise ValueError(
                    f"stages: {entry.ref} may be negative ({entry.module_type}); pass "
                    "stage_transform='relu' or 'abs', or choose a post-ReLU layer"
                )
        check_coarsening(chosen, "stages")
        return Layers(target, tuple(chosen), collapsed, transformer, paper_target_chosen)

    th, tw = target.shape[-2:]
    by_resolution: dict[tuple[int, int], list[TracedOutput]] = {}
    for entry in feature_maps:
        h, w = entry.shape[-2:]
        if entry.order <= target.order and h >= th and w >= tw:
            by_resolution.setdefault((h, w), []).append(entry)
    chosen = []
    for resolution in sorted(by_resolution, key=lambda hw: (-hw[0], -hw[1])):
        group = by_resolution[resolution]
        if transformer:
            # Residual streams are signed everywhere in a transformer: the stage is the deepest
            # block output (a Swin stage), rectified by the stage transform.
            pick = group if allow_signed else [e for e in group if e.kind == NON_NEGATIVE]
            if pick:
                chosen.append(max(pick, key=lambda e: (e.is_block, e.order)))
            continue
        pick = [e for e in group if e.kind == NON_NEGATIVE]
        if not pick and allow_signed:
            pick = [e for e in group if e.kind == SIGNED_ACTIVATION] or group
        if pick:
            best = max(pick, key=lambda e: (e.is_block, e.order))
            if allow_signed and best.kind == NON_NEGATIVE:
                best = _wider_block_after(group, best) or best
            chosen.append(best)
    if not chosen:
        raise ValueError(
            "found no non-negative (post-ReLU) feature map to use as a GE stage; pass "
            "stage_transform='relu' or 'abs' to use signed activations, or stages=[...]"
        )
    chosen = _keep_monotone(chosen)
    if transformer:
        target = _as_block(target, traced, model)
        chosen = [_as_block(e, traced, model) for e in chosen]
    return Layers(target, tuple(chosen), collapsed, transformer, paper_target_chosen)


def _as_block(entry: TracedOutput, traced: Sequence[TracedOutput], model: nn.Module):
    """The same tensor as returned by the outermost module that is one block of a sequence of
    blocks (Swin's ``layers.3``, not ``layers``, the Sequential of all four stages that returns
    the last one's output); ``entry`` itself where no such module returns it."""
    modules = dict(model.named_modules())
    aliases = [e for e in traced if e.tensor and e.tensor == entry.tensor]
    in_sequence = [
        e
        for e in aliases
        if "." in e.ref.name
        and isinstance(modules[e.ref.name.rpartition(".")[0]], (nn.Sequential, nn.ModuleList))
    ]
    return min(in_sequence, key=lambda e: e.ref.name.count(".")) if in_sequence else entry


def _wider_block_after(group: Sequence[TracedOutput], best: TracedOutput) -> TracedOutput | None:
    """A block output at the same resolution that holds ``best`` and is wider: ``best`` is then
    a bottleneck inside that block (DenseNet's 128-channel ReLU in its last dense layer at
    7x7), and the block's output, rectified by the stage transform, is what the model hands on
    (DenseNet-121's 1024-channel ``features``, which its forward passes through a ReLU)."""
    wider = [
        e
        for e in group
        if e.is_block
        and e.order > best.order
        and e.shape[1] > best.shape[1]
        and best.ref.name.startswith(e.ref.name + ".")
    ]
    return max(wider, key=_order) if wider else None


def _collapsed_after(
    traced: Sequence[TracedOutput],
    target: TracedOutput,
    input_hw: tuple[int, int],
    head_pools: set[str],
) -> TracedOutput | None:
    """The last map after ``target`` that is 1x1 at this input size (ResNet-50's layer4 at
    32x32), other than a global pool: the layer that would be the target at a larger size."""
    later = [
        e
        for e in traced
        if e.order > target.order
        and e.layout == target.layout
        and not e.attention
        and e.module_type not in head_pools
        and e.shape[-2] * e.shape[-1] == 1
    ]
    return later[-1] if later else None


def smallest_input_for(
    model: nn.Module, probe: torch.Tensor, layer: TracedOutput, limit: int = 1024
) -> tuple[int, int] | None:
    """The first of the input sizes 2x, 4x, ... (up to ``limit`` px) at which ``layer``'s map is
    larger than 1x1, or None if it stays 1x1 (it follows a global pool, by design)."""
    h, w = probe.shape[-2:]
    factor = 2
    while max(h, w) * factor <= limit:
        size = (h * factor, w * factor)
        bigger = torch.randn(1, probe.shape[1], *size, dtype=probe.dtype, device=probe.device)
        for entry in trace(model, bigger):
            if entry.ref == layer.ref and entry.shape[-2] * entry.shape[-1] > 1:
                return size
        factor *= 2
    return None


def _order(entry: TracedOutput) -> int:
    return entry.order


def _coarsens(shallow: TracedOutput, deep: TracedOutput) -> bool:
    """Whether ``deep`` is no finer than ``shallow`` in either dimension."""
    return deep.shape[-2] <= shallow.shape[-2] and deep.shape[-1] <= shallow.shape[-1]


def check_coarsening(stages: Sequence[TracedOutput], what: str) -> None:
    """Refuse stages (in the order they run) where a deeper one is finer than the one before."""
    for shallow, deep in itertools.pairwise(stages):
        if not _coarsens(shallow, deep):
            raise ValueError(
                f"{what}: {deep.ref} ({deep.shape[-2]}x{deep.shape[-1]}) runs after "
                f"{shallow.ref} but is finer; stages must coarsen from shallow to deep"
            )


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
    return a replacement for the target's output. Both see (B,C,H,W) maps, whatever the layout
    the module returned (``as_feature_map``); a replacement goes back into that layout. Hooks are
    removed on exit, also when the forward raised; calls from other threads (another explainer on
    the same model) are ignored.
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
        self._calls: dict[tuple[str, str], int] = {}
        self.fired: set[LayerRef] = set()

    def _wanted(self) -> dict[tuple[str, str], list[tuple[int, str, int, TracedOutput]]]:
        """The actions per (module name, part read): (call, role, stage index, entry)."""
        wanted: dict[tuple[str, str], list[tuple[int, str, int, TracedOutput]]] = {}
        if self._on_stage is not None:
            for k, stage in enumerate(self._layers.stages):
                key = (stage.ref.name, stage.ref.part)
                wanted.setdefault(key, []).append((stage.ref.call, "stage", k, stage))
        if self._on_target is not None:
            target = self._layers.target
            key = (target.ref.name, target.ref.part)
            wanted.setdefault(key, []).append((target.ref.call, "target", -1, target))
        return wanted

    def __enter__(self) -> HookSession:
        self._owner = threading.get_ident()
        wanted = self._wanted()
        module = self._model.get_submodule
        self._handles = register_hooks(
            (module(name), self._make_hook(name, actions))
            for (name, part), actions in wanted.items()
            if part == OUTPUT
        )
        try:  # a stage read from a module's input is read before the module runs
            self._handles += register_hooks(
                (
                    (module(name), self._make_input_hook(name, actions))
                    for (name, part), actions in wanted.items()
                    if part == INPUT
                ),
                pre=True,
            )
        except BaseException:
            remove_hooks(self._handles)
            raise
        return self

    def _next_call(self, name: str, part: str) -> int | None:
        """This thread's count of the module's calls so far; None on another thread."""
        if threading.get_ident() != self._owner:
            return None
        call = self._calls.get((name, part), 0)
        self._calls[(name, part)] = call + 1
        return call

    def _make_input_hook(self, name: str, actions: list[tuple[int, str, int, TracedOutput]]):
        def hook(module, inputs):
            call = self._next_call(name, INPUT)
            for wanted_call, _, k, entry in actions:  # stages only: a target is an output
                if call == wanted_call:
                    self.fired.add(LayerRef(name, call, part=INPUT))
                    self._on_stage(k, as_feature_map(entry, inputs[0]))
            return None

        return hook

    def _make_hook(self, name: str, actions: list[tuple[int, str, int, TracedOutput]]):
        def hook(module, inputs, output):
            call = self._next_call(name, OUTPUT)
            if call is None:
                return None
            replacement = None
            # Stages first: they must see the output as the module produced it.
            for wanted_call, role, k, entry in sorted(actions, key=lambda a: a[1] != "stage"):
                if wanted_call != call:
                    continue
                self.fired.add(LayerRef(name, call))
                if role == "stage":
                    self._on_stage(k, as_feature_map(entry, output))
                else:
                    feature_map = self._on_target(as_feature_map(entry, output))
                    if feature_map is not None:
                        replacement = from_feature_map(entry, feature_map, output)
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
            if LayerRef(ref.name, ref.call, part=ref.part) not in self.fired:
                raise RuntimeError(f"layer {ref} did not run in this forward pass")
