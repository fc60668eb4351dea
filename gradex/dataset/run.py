"""``explain_dataset``: the whole job, from SRC to DST, on the engine asked for."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from ..cams import METHOD_CHOICES
from ..devices import parse_device
from ..models import EMBEDDED_MODEL, check_model_name
from .choices import (
    DEFAULT_SHARD_SIZE,
    ENGINES,
    MAP_DTYPES,
    RAY_DEVICES,
    default_batch_size,
    default_workers,
)
from .explaining import ExplainOptions
from .job import ShardAssembler, Summary, plan_job


def _check_count(name: str, value, minimum: int = 1, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def explain_dataset(
    src: str | Path,
    out: str | Path,
    *,
    model: str = EMBEDDED_MODEL,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    method: str = "gradcam",
    gradual: bool = True,
    paper: bool = False,
    map_size: int | None = None,
    map_dtype: str = "uint8",
    top_k: int = 5,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    overlays: str | Path | None = None,
    engine: str = "local",
    address: str | None = None,
    actors: int | None = None,
    progress: bool = True,
) -> Summary:
    """Explain every image of SRC into the Parquet dataset DST (see ``gradex explain-dataset``).

    Resumable: rerun with the same arguments after a kill and only the unfinished shards are
    done; every image ends up exactly once in DST's rows or in its ``_errors`` table.
    """
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if method not in METHOD_CHOICES:
        raise ValueError(f"--method must be one of {', '.join(METHOD_CHOICES)}, got {method!r}")
    if map_dtype not in MAP_DTYPES:
        raise ValueError(f"--map-dtype must be one of {', '.join(MAP_DTYPES)}, got {map_dtype!r}")
    for name, value in (("--top-k", top_k), ("--shard-size", shard_size)):
        _check_count(name, value)
    for name, value in (
        ("--map-size", map_size),
        ("--batch-size", batch_size),
        ("--actors", actors),
    ):
        _check_count(name, value, optional=True)
    _check_count("--workers", workers, 0, optional=True)
    if engine == "local" and (address is not None or actors is not None):
        raise ValueError("--address and --actors are for --engine ray")
    check_model_name(model)
    if engine == "ray":
        # The device of the cluster's actors, not of this machine (a CPU-only head may drive
        # GPU workers): checked against the cluster once it is joined.
        if device not in RAY_DEVICES:
            raise ValueError(f"--device {device}: the Ray engine takes {', '.join(RAY_DEVICES)}")
    else:
        torch_device = parse_device(device)
    options = ExplainOptions(
        model,
        None if weights is None else str(weights),
        method,
        gradual,
        paper,
        map_size,
        map_dtype,
        top_k,
        None if labels is None else str(labels),
    )
    started = time.perf_counter()
    plan = plan_job(
        src,
        out,
        options,
        shard_size=shard_size,
        overlays=None if overlays is None else Path(overlays),
    )
    done_before = len(plan.items) - len(plan.pending_items())
    bar = tqdm(
        total=len(plan.items), initial=done_before, unit="img", disable=not progress, smoothing=0.1
    )
    assembler = ShardAssembler(plan, bar, started)
    try:
        if engine == "local":
            from .local_engine import run_local

            run_local(
                plan,
                assembler,
                device=torch_device,
                batch_size=batch_size or default_batch_size(torch_device.type),
                workers=default_workers(torch_device) if workers is None else workers,
            )
        else:
            from .ray_engine import run_ray

            run_ray(
                plan,
                assembler,
                device=device,
                batch_size=batch_size,
                address=address,
                actors=actors,
            )
    finally:
        bar.close()
        plan.output.close()
    unfinished = assembler.unfinished()
    if unfinished:  # an engine that lost images without saying so: never report success
        raise RuntimeError(f"shards {unfinished} were not completed; rerun to finish them")
    assembler.summary.seconds = time.perf_counter() - started
    return assembler.summary
