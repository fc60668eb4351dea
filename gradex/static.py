"""Low-latency explanations for one fixed input shape: set up once, then replay.

On a CUDA device the whole explanation (the forward with each GE stage reduced in its hook, the
gradient down to the target layer, the CAM, the GE chain, the normalisation) is captured once in a
CUDA graph and replayed from a static input buffer. One replay launches everything the eager path
launches one by one from Python, which is what batch-1 latency on a GPU is made of.

On the CPU there is no graph: the layers, the backend and the buffers are fixed once, and each
call runs the explanation with none of the per-call discovery (the same code the graph captures).

Capture needs an explanation that never waits for the device, so targets are chosen on the device
(``torch.where`` between the top-1 class and the caller's ids, both in fixed buffers) and value
checks, when the explainer's ``check`` is on, run before (the input) and after (the CAM) a replay.
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from ._validation import check_finite, check_image_batch
from .explainer import Explainer, Explanation, check_target_ids, refuse_inference_mode
from .ops import resolve_backend

MODES = ("auto", "cuda_graph", "eager")


def capture_cuda_graph(run, device: torch.device, warmup: int):
    """``(graph, outputs)``: ``run()`` warmed up ``warmup`` times, then captured in a CUDA graph
    whose replays rewrite ``outputs`` in place."""
    # Everything on the given device, whichever device is current: the warm-up and the
    # capture streams, the kernels' launches (torch.cuda.graph captures on the current
    # device otherwise, and a model on cuda:1 would be captured on cuda:0).
    with torch.cuda.device(device):
        # Warm-up on a side stream, as CUDA graph capture asks: cuDNN picks its algorithms,
        # Triton compiles, autograd starts its device thread, all before capture begins.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
            outputs = run()
    return graph, outputs


class StaticExplainer:
    """An ``Explainer`` frozen for inputs shaped like ``example``.

    Args:
        explainer: the ``gradex.Explainer`` to run (its method, layers, backend, ``amp_dtype``,
            ``check`` and ``gradual`` settings are used as they are).
        example: a batch with the shape, dtype, device and memory format of the inputs to come;
            its values only warm up the kernels.
        mode: 'cuda_graph' (CUDA inputs), 'eager' (any device), or 'auto': the graph on CUDA,
            eager elsewhere.
        warmup: explanations run before capture (kernel selection, Triton compilation).

    Calling it with ``x`` of another shape, dtype or device raises ``ValueError``: build one
    ``StaticExplainer`` per input shape. ``target`` may be None (top-1), an int, or one int per
    sample, where a list may hold None for the samples to explain at their top-1 class (a server
    batching requests that name a class with requests that do not); a callable target cannot be
    captured. ``self.input`` is the static input buffer:
    filling it in place and calling with ``x=self.input`` saves one copy.

    In 'cuda_graph' mode the returned tensors are copies, unless ``copy=False``: then they are
    the graph's own output buffers, overwritten by the next call (from any thread).

    A StaticExplainer owns buffers that every call overwrites (the input, the targets, the
    graph's outputs), so calls on one instance run one at a time: threads may share it, each
    getting its own explanation, and wait for each other. For calls that overlap, build one per
    thread. Filling ``self.input`` in place is for one thread only.
    """

    def __init__(
        self, explainer: Explainer, example: torch.Tensor, *, mode: str = "auto", warmup: int = 3
    ):
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be a gradex.Explainer, got {type(explainer).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1, got {warmup!r}")
        refuse_inference_mode()
        example = explainer._check_input(example)
        if mode == "auto":
            mode = "cuda_graph" if example.device.type == "cuda" else "eager"
        if mode == "cuda_graph" and example.device.type != "cuda":
            raise ValueError(
                f"mode 'cuda_graph' needs example on a CUDA device, not {example.device}"
            )
        self.explainer = explainer
        self.mode = mode
        # empty_like keeps the example's memory format (channels_last stays channels_last).
        self.input = torch.empty_like(example).copy_(example)
        self.layers = explainer.layers_for(example)
        self._backend = resolve_backend(explainer.backend, example.device)
        batch = example.shape[0]
        self._given_ids = torch.zeros(batch, dtype=torch.long, device=example.device)
        # Per sample: the given class id, or the top-1 where False.
        self._use_given = torch.zeros(batch, dtype=torch.bool, device=example.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._outputs: Explanation | None = None
        # Held from loading a call's input and targets until its results are copied out: the
        # buffers are shared by every call, by design.
        self._lock = threading.Lock()
        # On a GPU the lock orders only the launches: a thread on another stream must also wait
        # until the previous call's work on the shared buffers has run.
        self._done = torch.cuda.Event() if example.device.type == "cuda" else None
        if mode == "cuda_graph":
            self._capture(warmup)
            self.classes = self._outputs.logits.shape[1]
        else:
            for _ in range(warmup):
                warm = self._explain()
            self.classes = warm.logits.shape[1]

    def _choose_targets(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top1 = logits.detach().argmax(dim=1)
        ids = torch.where(self._use_given, self._given_ids, top1)
        return ids, logits.gather(1, ids.unsqueeze(1)).squeeze(1)

    def _explain(self) -> Explanation:
        return self.explainer._explain_tensors(
            self.input, self.layers, self._backend, self._choose_targets, check=False
        )

    def _capture(self, warmup: int) -> None:
        self._graph, self._outputs = capture_cuda_graph(self._explain, self.input.device, warmup)

    def _load_input(self, x) -> None:
        x = check_image_batch(x)
        for what, got, built in (
            ("shape", tuple(x.shape), tuple(self.input.shape)),
            ("dtype", x.dtype, self.input.dtype),
            ("device", x.device, self.input.device),
        ):
            if got != built:
                raise ValueError(
                    f"x has {what} {got} but this StaticExplainer was built for {built}; "
                    "build one per input shape (explainer.static(x))"
                )
        if self.explainer.check:
            check_finite(x, "x")
        if x is not self.input:
            self.input.copy_(x)

    def _load_targets(self, target) -> None:
        if target is None:
            self._use_given.fill_(False)
            return
        if callable(target):
            raise TypeError(
                "target: a StaticExplainer takes None, an int or one int per sample; "
                "a callable target cannot be captured"
            )
        batch = self.input.shape[0]
        given = None
        if isinstance(target, (list, tuple)) and any(t is None for t in target):
            if len(target) != batch:
                raise ValueError(
                    f"target must hold one class id per sample ({batch}), got {len(target)}"
                )
            given = torch.tensor([t is not None for t in target], dtype=torch.bool)
            target = [0 if t is None else t for t in target]  # checked below, then masked
        ids = check_target_ids(target, batch, self.classes, self.input.device)
        self._given_ids.copy_(ids)
        if given is None:
            self._use_given.fill_(True)
        else:
            self._use_given.copy_(given)

    def __call__(self, x: torch.Tensor, target=None, *, copy: bool = True) -> Explanation:
        if self._graph is None:  # a graph's replay records nothing, so only the eager path asks
            refuse_inference_mode()
        with self._lock:
            if self._done is not None:
                torch.cuda.current_stream(self.input.device).wait_event(self._done)
            self._load_input(x)
            self._load_targets(target)
            if self._graph is None:
                out = self._explain()
            else:
                with torch.cuda.device(self.input.device):  # replays on that device's stream
                    self._graph.replay()
                out = self._outputs
                if copy:
                    out = dataclasses.replace(
                        out,
                        **{f.name: getattr(out, f.name).clone() for f in dataclasses.fields(out)},
                    )
            if self._done is not None:
                self._done.record(torch.cuda.current_stream(self.input.device))
            if self.explainer.check:
                check_finite(out.cam, f"the CAM at {self.layers.target.ref}")
        return out
