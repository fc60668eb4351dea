"""gradex as a KServe model: V1 ``:predict`` and ``:explain``, V2 ``/infer``, one batcher each.

Every request is read, decoded and checked off the event loop before it is queued, so a bad
payload is answered alone (400, 413) and never fails the batch it would have joined; only good
images reach the model thread.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import kserve
import numpy as np
import torch
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ..models import ModelBundle
from ..overlays import as_uint8
from .batching import Batched, DynamicBatcher
from .encoding import array_map, overlay_png, top_k
from .options import AMP_CHOICES, ServeOptions
from .payloads import (
    BadRequest,
    response_options,
    v1_instances,
    v2_instances,
)
from .runner import Runner

V2_PREDICT_OUTPUTS = ("probabilities",)
V2_EXPLAIN_OUTPUTS = ("target", "score", "saliency", "cam")
V2_DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int64): "INT64",
}


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


class GradexModel(kserve.Model):
    """Not ready until ``load()`` has built and warmed an explainer for every batch size."""

    def __init__(self, options: ServeOptions, bundle: ModelBundle, device: torch.device):
        super().__init__(options.model_name)
        self.options = options
        self.bundle = bundle
        self.device = device
        self.ready = False
        self.runner: Runner | None = None
        # Decoding, preprocessing and encoding: Pillow and torch release the GIL, so two
        # threads keep the event loop answering while images are read.
        self._io_pool = ThreadPoolExecutor(2, thread_name_prefix="gradex-io")
        # One thread owns the device: batches run one at a time, predict and explain alike.
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="gradex-model")
        self._predict = self._explain = None
        self.warmup_s: float | None = None

    def load(self) -> bool:
        started = time.perf_counter()
        limit = self.options.batch_limit(self.device)
        warmup = self.options.warmup or (3 if self.device.type == "cuda" else 1)
        runner = Runner(
            self.bundle,
            self.device,
            method=self.options.method,
            amp_dtype=AMP_CHOICES[self.options.amp],
            max_batch=limit,
            warmup=warmup,
        )
        # Built on the model thread, where every later batch runs (CUDA graphs, thread-local
        # state such as autocast and grad mode all belong to it).
        self._model_pool.submit(runner.warm).result()
        # The PNG path's first call builds the colour table and loads Pillow's encoder: here.
        overlay_png(torch.rand(3, 8, 8), torch.rand(2, 2))
        batcher = dict(
            executor=self._model_pool,
            max_batch=limit,
            max_wait_ms=self.options.max_wait_ms if limit > 1 else 0.0,
            max_queue=self.options.max_queue,
        )
        self._predict = DynamicBatcher(runner.predict, name="predict", **batcher)
        self._explain = DynamicBatcher(runner.explain, name="explain", **batcher)
        self.runner = runner
        self.warmup_s = time.perf_counter() - started
        self.ready = True
        return True

    def stop(self) -> None:
        # KServe calls this on unload; whatever is still queued runs to its answer.
        self._io_pool.shutdown(wait=False)

    # -- V1 ------------------------------------------------------------------------------

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, fn, *args)

    def _read_v1(self, payload):
        return v1_instances(
            payload,
            preprocess=self.bundle.preprocess,
            class_names=self.bundle.class_names,
            max_pixels=self.options.max_image_pixels,
            max_instances=self.options.max_queue,
        )

    @staticmethod
    def _json_body(payload):
        """KServe parses JSON only when the Content-Type says so; curl -d sends a form type."""
        if isinstance(payload, bytes | bytearray | str):
            try:
                return json.loads(payload)
            except (ValueError, UnicodeDecodeError) as error:
                raise BadRequest(f"body: not JSON ({error})") from None
        return payload

    def _v1_options(self, payload):
        parameters = payload.get("parameters") if isinstance(payload, dict) else None
        return response_options(
            parameters, default_top_k=self.options.top_k, classes=len(self.bundle.class_names)
        )

    async def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            return await self._infer_v2(payload)
        started = time.perf_counter()
        payload = self._json_body(payload)
        options = self._v1_options(payload)
        instances = await self._off_loop(self._read_v1, payload)
        decoded = time.perf_counter()
        results = await self._predict.submit([i.image for i in instances])
        names = self.bundle.class_names
        predictions = [
            {"top_k": top_k(r.value.probabilities, options.top_k, names)} for r in results
        ]
        return {
            "predictions": predictions,
            "timings_ms": self._timings(started, decoded, results, time.perf_counter()),
        }

    async def explain(self, payload, headers=None):
        started = time.perf_counter()
        payload = self._json_body(payload)
        options = self._v1_options(payload)
        instances = await self._off_loop(self._read_v1, payload)
        decoded = time.perf_counter()
        results = await self._explain.submit([(i.image, i.target) for i in instances])
        explained = time.perf_counter()
        explanations = await self._off_loop(self._encode_explanations, instances, results, options)
        return {
            "explanations": explanations,
            "method": self.runner.explainer.method_name,
            "layers": self.runner.layer_names,
            "timings_ms": self._timings(started, decoded, results, time.perf_counter(), explained),
        }

    def _encode_explanations(self, instances, results: list[Batched], options) -> list[dict]:
        names = self.bundle.class_names
        out = []
        for instance, result in zip(instances, results, strict=True):
            e = result.value
            answer = {
                "top_k": top_k(e.probabilities, options.top_k, names),
                "target": e.target,
                "target_name": names[e.target],
                "score": round(e.score, 6),
                "prob": round(float(e.probabilities[e.target]), 6),
            }
            if options.map_format == "png":
                display = self.bundle.to_display(instance.image)
                answer["saliency"] = overlay_png(display, e.saliency)
                answer["cam"] = overlay_png(display, e.cam)
            elif options.map_format != "none":
                answer["saliency"] = array_map(e.saliency, options.map_format)
                answer["cam"] = array_map(e.cam, options.map_format)
            out.append(answer)
        return out

    @staticmethod
    def _timings(started, decoded, results: list[Batched], finished, explained=None) -> dict:
        timings = {
            "decode": _ms(decoded - started),
            "queue": round(max(r.queue_ms for r in results), 2),
            "model": round(max(r.model_ms for r in results), 2),
            "batch_size": max(r.batch_size for r in results),
        }
        if explained is not None:  # the maps were encoded after the batch
            timings["encode"] = _ms(finished - explained)
        timings["total"] = _ms(finished - started)
        return timings

    # -- V2 ------------------------------------------------------------------------------

    async def _infer_v2(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        asked = [o.name for o in request.request_outputs or []]
        known = V2_PREDICT_OUTPUTS + V2_EXPLAIN_OUTPUTS
        for i, name in enumerate(asked):
            if name not in known:
                raise BadRequest(f"outputs[{i}].name: one of {list(known)}, got {name!r}")
        explain = not asked or any(name in V2_EXPLAIN_OUTPUTS for name in asked)
        wanted = set(asked) or set(known)
        options = response_options(
            request.parameters,
            default_top_k=self.options.top_k,
            classes=len(self.bundle.class_names),
            formats=("uint8", "float16"),
        )
        if options.map_format == "float16" and "saliency" in wanted:
            binary = request.use_binary_outputs
            for output in request.request_outputs or []:
                if output.name == "saliency" and output.binary_data is not None:
                    binary = output.binary_data
            if not binary:
                raise BadRequest(
                    "parameters.map: the V2 protocol sends FP16 only as binary data; ask for it "
                    'with "parameters": {"binary_data_output": true}, or use "uint8"'
                )
        instances = await self._off_loop(
            lambda: v2_instances(
                request,
                input_size=self.bundle.input_size,
                classes=len(self.bundle.class_names),
                max_instances=self.options.max_queue,
            )
        )
        decoded = time.perf_counter()
        if explain:
            results = await self._explain.submit([(i.image, i.target) for i in instances])
        else:
            results = await self._predict.submit([i.image for i in instances])
        values = [r.value for r in results]
        outputs = []

        def add(name, array):
            if name in wanted:
                output = InferOutput(name, list(array.shape), V2_DATATYPES[array.dtype])
                # JSON or binary as the request asks (KServe applies that when it encodes).
                output.set_data_from_numpy(array, binary_data=False)
                outputs.append(output)

        add("probabilities", torch.stack([v.probabilities for v in values]).numpy())
        if explain:
            add("target", np.array([v.target for v in values], dtype=np.int64))
            add("score", np.array([v.score for v in values], dtype=np.float32))
            saliency = torch.stack([v.saliency for v in values]).unsqueeze(1).numpy()
            saliency = (
                as_uint8(saliency) if options.map_format == "uint8" else saliency.astype(np.float16)
            )
            add("saliency", saliency)
            add("cam", torch.stack([v.cam for v in values]).unsqueeze(1).numpy())
        parameters = {"method": self.runner.explainer.method_name}
        if explain:
            parameters["target_layer"] = self.runner.layer_names["target"]
            parameters["stages"] = ",".join(self.runner.layer_names["stages"])
        timings = self._timings(started, decoded, results, time.perf_counter())
        parameters.update({f"{k}_ms" if k != "batch_size" else k: v for k, v in timings.items()})
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            parameters=parameters,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )
