"""The Ray engine (``--engine ray``): the same job as a Ray Data pipeline, so that it runs on a
cluster with Ray doing the scheduling, the retries and the data movement.

    items ──map_batches (CPU tasks)──► decoded images ──map_batches (actor pool)──► rows ──► driver
           read + preprocess                             explain: one GPU per actor,
                                                         CUDA-graph static mode

The driver streams the explained rows out of the pipeline and commits each shard, atomically,
once all its images are in: the same ``ShardAssembler`` and files as the local engine, so the
outputs are equal, a rerun resumes the same way, and an actor Ray restarts after a crash only
makes Ray run its batch again. Rows are deduplicated by image index on the driver, so a batch
that Ray re-executes after a failure cannot land twice.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import preprocess_for
from .choices import default_batch_size
from .decoding import decode
from .explaining import BatchExplainer, BatchResult, ExplainOptions
from .job import Plan, ShardAssembler


def decode_batch(batch: dict, model: str) -> dict:
    """Read and preprocess a batch of paths (a stateless Ray task on a CPU)."""
    preprocess = preprocess_for(model)
    images, errors = [], []
    for path in batch["path"]:
        image, reason = decode(str(path), preprocess)
        images.append(image)
        errors.append(reason or "")
    shape = next((tuple(i.shape) for i in images if i is not None), (3, 1, 1))
    placeholder = torch.zeros(shape)  # rows that failed carry no image and are never explained
    stacked = torch.stack([placeholder if i is None else i for i in images]).numpy()
    return {
        "index": batch["index"],
        "target": batch["target"],
        "image": stacked,
        "error": np.array(errors, dtype=object),
    }


class Explain:
    """One explainer per actor, on the actor's GPU when it has one."""

    def __init__(self, options: dict, device: str, overlays: bool, threads: int):
        torch_device = torch.device(device)
        if torch_device.type == "cuda":
            torch_device = torch.device("cuda", torch.cuda.current_device())  # Ray's CUDA_VISIBLE
        self.threads = threads
        self.explainer = BatchExplainer(ExplainOptions(**options), torch_device, overlays=overlays)

    def __call__(self, batch: dict) -> dict:
        """One output row per input row; a row that failed to decode keeps its reason in
        ``error`` and zeros elsewhere (the driver files it under errors)."""
        # Ray sets OMP_NUM_THREADS to the whole CPUs an actor asked for, rounded down, and
        # OpenMP keeps the thread count per calling thread: Ray Data calls this from a thread
        # other than the constructor's, so the count is set here, where the work runs.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        ok = np.flatnonzero(batch["error"] == "")
        out = {"index": batch["index"], "error": batch["error"]}
        if len(ok) == 0:
            return out
        images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
        result = self.explainer(images, [None if t < 0 else int(t) for t in batch["target"][ok]])
        for name, value in vars(result).items():
            if name == "overlays":
                if value is not None:
                    column = np.full(len(batch["index"]), b"", dtype=object)
                    column[ok] = value
                    out[name] = column
                continue
            column = np.zeros((len(batch["index"]), *value.shape[1:]), dtype=value.dtype)
            column[ok] = value
            out[name] = column
        return out


def run_ray(
    plan: Plan,
    assembler: ShardAssembler,
    *,
    device: str,
    batch_size: int | None,
    address: str | None,
    actors: int | None,
) -> None:
    try:
        import ray
    except ImportError as error:
        raise RuntimeError(
            f"--engine ray needs the ray extra: pip install 'gradex[ray]' ({error})"
        ) from error
    items = plan.pending_items()
    if not items:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # gradex's own bar counts explained images
        resources = ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0))
        if device == "auto":
            device = "cuda" if cluster_gpus else "cpu"
        if device == "cuda" and not cluster_gpus:
            raise ValueError("--device cuda: the Ray cluster has no GPUs")
        gpus = cluster_gpus if device == "cuda" else 0
        batch_size = batch_size or default_batch_size(device)
        pool = actors or max(1, gpus)
        # On a GPU an actor needs a CPU to feed its GPU. On CPUs the actors explain with the
        # cluster's cores, half a core each left for decoding.
        cpus = 1 if gpus else max(1.0, float(resources.get("CPU", 2)) / pool - 0.5)
        rows = [
            {
                "index": item.index,
                "path": item.path,
                "target": -1 if item.target is None else item.target,
            }
            for item in items
        ]
        blocks = max(1, min(len(rows) // batch_size, 200))
        explained = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                decode_batch,
                fn_kwargs={"model": plan.options.model},
                batch_size=batch_size,
                batch_format="numpy",
                # Ray Data fuses consecutive stages whose resource requests are equal, which
                # would decode inside the explainer actors, in turn with explaining. Half a
                # CPU per decoding task keeps decoding a stage of CPU tasks of its own that
                # overlaps with explanation, as the GPU request does on a GPU cluster.
                num_cpus=0.5,
            )
            .map_batches(
                Explain,
                fn_constructor_kwargs={
                    "options": vars(plan.options),
                    "device": device,
                    "overlays": plan.overlays is not None,
                    "threads": max(1, round(cpus)),
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_gpus=1 if device == "cuda" else 0,
                num_cpus=cpus,
                # Ray Data restarts a crashed actor and reruns its batches (max_restarts and
                # max_task_retries default to -1 for actor pools); the tests kill one to check.
            )
        )
        for batch in explained.iter_batches(batch_size=None, batch_format="numpy"):
            # A batch that Ray re-executed after a crash lands once: rows already in are dropped.
            fresh = [
                p for p, i in enumerate(batch["index"].tolist()) if not assembler.has(plan.items[i])
            ]
            good = [p for p in fresh if batch["error"][p] == ""]
            failed = [
                (plan.items[int(batch["index"][p])], str(batch["error"][p]))
                for p in fresh
                if batch["error"][p] != ""
            ]
            result = None
            if good:
                fields = {
                    name: batch[name][good]
                    for name in BatchResult.__dataclass_fields__
                    if name in batch
                }
                if "overlays" in fields:
                    fields["overlays"] = list(fields["overlays"])
                result = BatchResult(**fields)
            assembler.add([plan.items[int(batch["index"][p])] for p in good], result, failed)
    finally:
        if started_here:
            ray.shutdown()
