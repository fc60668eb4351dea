"""The Explainer: one forward pass, one gradient to the target layer, a CAM, then GE.

Gradients flow only from the score back to the target layer: the forward runs without autograd
until the target layer's hook switches it on, so earlier layers record no graph, no parameter
``.grad`` is written, and nothing of the graph outlives the call. Each GE stage is reduced to its
channel sum and max inside its hook, so no full stage activation is kept.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import cams
from ._validation import (
    STAGE_TRANSFORMS,
    check_finite,
    check_image_batch,
    check_normalize,
    check_stage_weighting,
)
from .capture import (
    NON_NEGATIVE,
    HookSession,
    Layers,
    check_eager,
    choose_layers,
    smallest_input_for,
    trace,
)
from .excitation import ExcitationHooks
from .model_output import OutputSelector, check_output_selector, select_logits
from .ops import Backend, check_backend_name, extrapolate_reduced, resolve_backend
from .paper_layers import PAPER
from .reference import PAPER_FORMULA, apply_transform

# GE as the original code computes it, per image: its layers (gradex.paper_layers) and its
# formula. ``gradex explain --paper`` runs the Explainer with these options.
PAPER_OPTIONS = {"target_layer": PAPER, "stages": PAPER, **PAPER_FORMULA}

AMP_DTYPES = (None, torch.bfloat16, torch.float16)

Target = None | int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Explanation:
    saliency: torch.Tensor  # (B,1,H,W) float32 in [0,1]: the GE map (or the upsampled CAM)
    cam: torch.Tensor  # (B,1,h,w) float32: the coarse map at the target layer
    target: torch.Tensor  # (B,) int64 class ids; -1 where a callable target returned scores
    score: torch.Tensor  # (B,) the score that was explained (the target's logit)
    logits: torch.Tensor  # (B,K) the model's output


@dataclass
class Capture:
    logits: torch.Tensor  # (B,K)
    activations: list[torch.Tensor]  # the GE stages, shallow to deep, transform applied
    layers: Layers


def _check_eval_mode(model: nn.Module, modules: Sequence[nn.Module]) -> None:
    """Refuse a model with any module in training mode.

    gradex explains a model as it predicts (no dropout, no BatchNorm statistics updated). It
    does not switch the model to eval mode and back for a call: the model is the caller's and
    may be in use on other threads at the same time, where the switch would show through (a
    plain forward would run in eval mode, and a forward of another explanation would run in
    training mode after this call switched back, updating the BatchNorm statistics). Asking for
    ``model.eval()`` keeps every call free of side effects. ``modules`` is listed once per
    explainer (``model.modules()`` costs about 5 µs a module each time)."""
    if not any(module.training for module in modules):
        return
    training = [name or "(the model itself)" for name, m in model.named_modules() if m.training]
    shown = ", ".join(repr(name) for name in training[:5])
    more = f" and {len(training) - 5} more" if len(training) > 5 else ""
    raise ValueError(
        f"model is in training mode (modules {shown}{more}): call model.eval() before explaining "
        "it. gradex explains the model as it predicts and never switches a model's mode itself, "
        "since that would race with other threads using the same model"
    )


def _model_device(model: nn.Module) -> torch.device | None:
    # The first tensor only: listing them all costs a walk over every module on every call.
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


_TARGET_KINDS = "target must be None, an int, one int per sample, or a callable"


def check_target_ids(target, batch: int, classes: int, device: torch.device) -> torch.Tensor:
    """``target`` (an integer: a Python or NumPy int or a 0-d integer tensor or array, or one
    integer per sample) as (batch,) int64 class ids on ``device``, each checked to be in range.
    Floats and bools are refused in every form, never truncated to a class id."""
    if isinstance(target, bool):
        raise TypeError(f"{_TARGET_KINDS}; got a bool ({target!r})")
    if isinstance(target, numbers.Integral):  # int and NumPy's integer scalars (not its bool)
        value = int(target)
        if not 0 <= value < classes:
            raise ValueError(f"target {value} is out of range for a model with {classes} classes")
        return torch.full((batch,), value, dtype=torch.long, device=device)
    # Tensors and arrays (NumPy's among them), 0-d or one id per sample.
    try:
        ids = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{_TARGET_KINDS}; got {type(target).__name__}") from error
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"target must hold integer class ids, got {ids.dtype}")
    if ids.dim() == 0:
        ids = ids.reshape(1).expand(batch)
    if ids.shape != (batch,):
        raise ValueError(
            f"target must hold one class id per sample ({batch}), got shape {tuple(ids.shape)}"
        )
    ids = ids.long().contiguous()
    bad = (ids < 0) | (ids >= classes)
    if bool(bad.any()):
        raise ValueError(
            f"target {int(ids[bad][0])} is out of range for a model with {classes} classes"
        )
    return ids


def resolve_targets(target: Target, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids, scores) for each sample; checks that every class id is in range."""
    batch, classes = logits.shape
    if callable(target):
        result = target(logits)
        if not isinstance(result, torch.Tensor) or result.shape != (batch,):
            raise ValueError(
                f"target: the callable must return a ({batch},) tensor of class ids or scores"
            )
        if result.is_floating_point():
            return torch.full((batch,), -1, dtype=torch.long, device=logits.device), result
        target = result
    if target is None:
        ids = logits.detach().argmax(dim=1)
    else:
        ids = check_target_ids(target, batch, classes, logits.device)
    return ids, logits.gather(1, ids.unsqueeze(1)).squeeze(1)


INFERENCE_MODE_MESSAGE = (
    "cannot explain inside torch.inference_mode(): it forbids the gradient that the class map "
    "needs, and no setting inside the block can turn it back on. Call the explainer outside the "
    "inference_mode() block, or use torch.no_grad() there instead, which works: gradex turns "
    "gradients on for the layers it needs"
)


def refuse_inference_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(INFERENCE_MODE_MESSAGE)


class Explainer:
    """Grad-CAM-family maps sharpened by Gradual Extrapolation.

    Args:
        model: a CNN classifier returning (B,K) logits (or an output they are in: ``output``).
        method: 'gradcam', 'gradcam++', 'xgradcam', 'hirescam', 'layercam', or ``f(A, G)``;
            or 'excitation' / 'contrastive excitation' (excitation backprop, gradex.excitation:
            the layers after the target layer pass a class's mass down instead of a gradient).
        target_layer: module or dotted name (``name#k`` for the k-th call of a reused module);
            default: the last spatial feature map; 'paper': the original GE code's (the last
            convolution, read as TorchRay read it; gradex.paper_layers).
        stages: modules or names of the GE stages; default: one per resolution, the deepest
            non-negative (post-ReLU) map at each resolution at least as fine as the target's;
            'paper': the original's (every max pool and strided convolution, and the input of
            the first). ``PAPER_OPTIONS`` holds the original's layers and formula together.
        backend: 'auto' or a name from ``gradex.backends()``.
        gradual: False gives the plain upsampled CAM (normalised the same way).
        stage_transform: applied to stages that may be negative (where a resolution has no
            post-ReLU map, as in SiLU or GELU networks): 'relu' (default; never flips a sign),
            'abs', or None to refuse such stages.
        stage_weighting: 'local' (default) or 'global' (the paper's); see ``gradex.extrapolate``.
        normalize: 'minmax' (default) or 'standardize' (the paper's); the map is in [0, 1].
            The paper's exact GE: ``stage_weighting='global', normalize='standardize'``.
        check: validate inputs and outputs (finite values); off for a trusted low-latency path.
        amp_dtype: torch.bfloat16 or torch.float16 runs the model's forward under autocast (the
            CAM and GE math stay in float32); None (default) runs it as it is.
        output: where the logits are when the model returns more than a (B,K) tensor: an int
            (``(logits, aux)``: 0), a key or attribute (a dict's key, HuggingFace's 'logits'), or
            a callable taking the model's output and returning the (B,K) logits.

    The model must be an eager ``nn.Module`` (TorchScript runs no hooks) in eval mode: gradex
    explains a model as it predicts, and refuses one in training mode rather than switching it
    to eval and back, which would race with other threads using it. Its modules are listed once,
    here: make a new explainer after adding modules to the model.

    Nothing of the model is changed during a call (no parameter, buffer, flag or hook outlives
    it), and explainers share nothing: several may run at once, in threads, on one model or
    several, beside plain inference on the same model.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | cams.CamMethod = "gradcam",
        target_layer=None,
        stages=None,
        backend: str = "auto",
        *,
        gradual: bool = True,
        stage_transform: str | None = "relu",
        stage_weighting: str = "local",
        normalize: str = "minmax",
        check: bool = True,
        amp_dtype: torch.dtype | None = None,
        output: OutputSelector = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_eager(model)
        if stage_transform not in STAGE_TRANSFORMS:
            raise ValueError(
                f"stage_transform must be one of {STAGE_TRANSFORMS}, got {stage_transform!r}"
            )
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(
                f"amp_dtype must be torch.bfloat16, torch.float16 or None, got {amp_dtype}"
            )
        check_backend_name(backend)
        if normalize is None or normalize is False:
            raise ValueError("normalize: an Explainer's maps are always normalised to [0, 1]")
        self.normalize = check_normalize(normalize)
        self.stage_weighting = check_stage_weighting(stage_weighting)
        self.model = model
        self._modules = tuple(model.modules())
        self.method_name, self._method = cams.get_method(method)
        self._excitation = self.method_name in cams.EXCITATION_METHODS
        self.target_layer = target_layer
        self.stages = stages
        self.backend = backend
        self.gradual = gradual
        self.stage_transform = stage_transform
        self.check = check
        self.amp_dtype = amp_dtype
        self.output = check_output_selector(output)
        self._layers: dict[tuple[int, int], Layers] = {}
        self._lock = threading.Lock()

    # -- which layers -------------------------------------------------------------------------

    def layers_for(self, x: torch.Tensor) -> Layers:
        """The target layer and stages for inputs shaped like ``x`` (found once per size)."""
        size = tuple(x.shape[-2:])
        with self._lock:
            if size not in self._layers:
                _check_eval_mode(self.model, self._modules)
                probe = x[:1].detach()
                layers = choose_layers(
                    trace(self.model, probe, self._probe_logits()),
                    size,
                    self.model,
                    self.target_layer,
                    self.stages,
                    allow_signed=self.stage_transform is not None,
                )
                self._check_layers(layers, probe)
                self._layers[size] = layers
            return self._layers[size]

    def _probe_logits(self):
        """How layer discovery reads the logits of its batch-1 probe: through ``output=``."""
        if self.output is None:
            return None
        return lambda output: select_logits(output, self.output, 1)

    def _check_layers(self, layers: Layers, probe: torch.Tensor) -> None:
        size = "x".join(str(v) for v in probe.shape[-2:])
        if layers.collapsed is not None:
            # The last feature map is 1x1 at this size (ResNet-50's layer4 at 32x32). Taking
            # the last larger map instead would explain another layer at each input size, so
            # the maps of one model would not compare; a 1x1 map localises nothing.
            larger = smallest_input_for(self.model, probe, layers.collapsed)
            if larger is not None:
                raise ValueError(
                    f"x: at {size} px the model's last feature map, {layers.collapsed.ref}, is "
                    "1x1, so it cannot show where anything is; give images of at least "
                    f"{larger[0]}x{larger[1]} px (where it is larger than 1x1), or pass "
                    f"target_layer= to explain an earlier layer (such as {layers.target.ref}) "
                    "at this size"
                )
        if self.gradual and self.stages is None and layers.single_resolution:
            raise ValueError(
                f"gradual: every map of this transformer is on one grid (its patch grid, "
                f"{layers.target.shape[-2]}x{layers.target.shape[-1]} at {size} px), so there "
                "is no finer feature map to carry the CAM through and Gradual Extrapolation "
                "cannot sharpen it; pass gradual=False for its Grad-CAM on the last block's "
                "patch tokens, upsampled to the input"
            )

    def describe(self, input_size: int | tuple[int, int] = 224) -> str:
        """What this explainer reads for (input_size) images: the target layer and the stages."""
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        device = _model_device(self.model) or torch.device("cpu")
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(1, 3, *input_size, generator=generator).to(device)
        layers = self.layers_for(probe)
        transform = self.stage_transform
        text = [
            f"method: {self.method_name}  gradual: {self.gradual}  stage_weighting: "
            f"{self.stage_weighting}  normalize: {self.normalize}",
            layers.describe(),
        ]
        signed = [str(s.ref) for s in layers.stages if s.kind != NON_NEGATIVE]
        if signed:
            text.append(f"stage_transform {transform!r} applied to: {', '.join(signed)}")
        return "\n".join(text)

    def _transform_for(self, layers: Layers) -> list[str | None]:
        return [None if s.kind == NON_NEGATIVE else self.stage_transform for s in layers.stages]

    # -- running ------------------------------------------------------------------------------

    def _autocast(self, device: torch.device):
        """The forward's mixed precision (``amp_dtype``). Autocast's weight-cast cache stays off,
        as CUDA graph capture requires (PyTorch's CUDA-graph notes): the weights are cast inside
        the captured graph on every replay, never taken from a cache outside it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype, cache_enabled=False)

    def _check_input(self, x) -> torch.Tensor:
        x = check_image_batch(x)
        device = _model_device(self.model)
        if device is not None and device != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {device}")
        if self.check:
            check_finite(x, "x")
        return x

    def _check_logits(self, output, batch: int) -> torch.Tensor:
        """The (B,K) logits in the model's ``output`` (see ``output=``)."""
        return select_logits(output, self.output, batch)

    def __call__(self, x: torch.Tensor, target: Target = None) -> Explanation:
        refuse_inference_mode()
        if self._excitation and callable(target):
            raise TypeError(
                f"target: method {self.method_name!r} sends a class's mass down; give class ids "
                "(None, an int or one per sample), not a callable"
            )
        x = self._check_input(x)
        layers = self.layers_for(x)
        backend = resolve_backend(self.backend, x.device)
        return self._explain_tensors(
            x, layers, backend, lambda logits: resolve_targets(target, logits), self.check
        )

    def _explain_tensors(
        self,
        x: torch.Tensor,
        layers: Layers,
        backend: Backend,
        choose_targets: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        check: bool,
    ) -> Explanation:
        """The explanation of a checked ``x`` as tensor operations only: with ``check`` off and a
        ``choose_targets`` that stays on the device, nothing here waits for the device, so
        ``gradex.StaticExplainer`` can capture it whole in a CUDA graph."""
        _check_eval_mode(self.model, self._modules)
        transforms = self._transform_for(layers)
        reduced: list = [None] * len(layers.stages)
        # The target layer's output as a leaf (the gradient is taken there), and the copy of it
        # handed on to the rest of the model.
        target_leaf: list[torch.Tensor] = []
        target_handed_on: list[torch.Tensor] = []

        def on_stage(k: int, output: torch.Tensor) -> None:
            reduced[k] = backend.reduce_stage(output, transforms[k])

        def on_target(output: torch.Tensor) -> torch.Tensor:
            leaf = output.detach().requires_grad_(True)
            target_leaf.append(leaf)
            # From here on the forward records a graph: the score's gradient is needed only
            # down to this layer. The enclosing no_grad() restores the mode after the forward.
            torch.set_grad_enabled(True)
            # A clone, so that an in-place op after this layer never touches the leaf.
            target_handed_on.append(leaf.clone())
            return target_handed_on[0]

        # Excitation hooks go on first, so that the target layer's call, which runs before any
        # graph is recorded, is left to the session's hook.
        rules = ExcitationHooks(self.model) if self._excitation else contextlib.nullcontext()
        session = HookSession(self.model, layers, on_stage if self.gradual else None, on_target)
        with rules, session, torch.no_grad(), self._autocast(x.device):
            output = self.model(x)
        session.check_complete()
        # With gradients on whatever the caller's mode (an evaluation loop's torch.no_grad()):
        # the logits' selection and the score must extend the graph the forward recorded.
        with torch.enable_grad():
            logits = self._check_logits(output, x.shape[0])
            ids, score = choose_targets(logits)
            if not score.requires_grad:
                raise RuntimeError(
                    f"the score does not depend on the target layer {layers.target.ref}"
                )
            if self._excitation:
                contrastive = self.method_name == "contrastive excitation"
                grads = rules.mass_at(logits, target_leaf[0], ids, contrastive)
            else:
                (grads,) = torch.autograd.grad(score.sum(), target_leaf[0])
        # The paper's Grad-CAM reads the activation as the forward left it (an in-place ReLU
        # after VGG16's features.28 rectifies it); the gradient stays the layer output's.
        activation = target_handed_on[0] if layers.target_as_left else target_leaf[0]
        cam = cams.compute_cam(self._method, activation.detach(), grads)
        stages = reduced if self.gradual else []
        if check:
            check_finite(cam, f"the CAM at {layers.target.ref}")
            for k, stage in enumerate(stages):
                check_finite(stage.sums, f"stage {layers.stages[k].ref}")
        saliency = extrapolate_reduced(
            cam, stages, tuple(x.shape[-2:]), backend, self.normalize, self.stage_weighting
        )
        return Explanation(
            saliency=saliency,
            cam=cam,
            target=ids,
            score=score.detach(),
            logits=logits.detach(),
        )

    def static(self, example: torch.Tensor, *, mode: str = "auto", warmup: int = 3):
        """A low-latency explainer for inputs shaped like ``example``; see
        ``gradex.StaticExplainer``."""
        from .static import StaticExplainer

        return StaticExplainer(self, example, mode=mode, warmup=warmup)

    def capture(self, x: torch.Tensor) -> Capture:
        """Forward ``x`` and keep the GE stages' activations, for ``gradex.extrapolate`` on a
        heatmap made elsewhere (pytorch-grad-cam, Captum, TorchCAM)."""
        x = self._check_input(x)
        layers = self.layers_for(x)
        _check_eval_mode(self.model, self._modules)
        activations, on_stage = self.stage_keeper(layers)
        session = HookSession(self.model, layers, on_stage, None)
        with session, torch.no_grad(), self._autocast(x.device):
            output = self.model(x)
        session.check_complete()
        return Capture(self._check_logits(output, x.shape[0]), activations, layers)

    def stage_keeper(self, layers: Layers):
        """``(activations, on_stage)``: a list that ``on_stage(k, output)`` (a ``HookSession``
        callback) fills with each GE stage's activation, stage transform applied."""
        transforms = self._transform_for(layers)
        activations: list = [None] * len(layers.stages)

        def on_stage(k: int, output: torch.Tensor) -> None:
            # A copy (a transform makes one): later in-place ops of the model must not change
            # what was captured.
            output = output.detach()
            activations[k] = (
                apply_transform(output, transforms[k]) if transforms[k] else output.clone()
            )

        return activations, on_stage
