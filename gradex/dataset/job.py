"""A dataset job, whichever engine runs it: SRC read and checked, DST claimed, the shards still
to do, and the assembly of explained batches into committed shards.

Everything a row depends on is settled here, before any image is explained: targets given by
class name are resolved, out-of-range ones refused by row, the layers found, and DST checked
writable and matched against the job it already holds.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from .. import __version__
from ..cli_paths import write_atomically
from ..models import ModelBundle, load_model
from .explaining import BatchResult, ExplainOptions
from .shards import Output, OutputError, fingerprint
from .sources import Item, read_source
from .table import error_schema, errors_table, row_schema, rows_table

_SAFE_ID = re.compile(r"^[\w.-]+(/[\w.-]+)*$")


def resolve_targets(items: list[Item], class_names: list[str], src) -> list[Item]:
    """Items with every target a class id in range (names looked up), or ValueError by id."""
    by_name = {name: i for i, name in enumerate(class_names)}
    resolved = []
    for item in items:
        target = item.target
        if isinstance(target, str):
            if target not in by_name:
                raise ValueError(
                    f"SRC {src}: {item.id}: target {target!r} is not one of the model's class names"
                )
            target = by_name[target]
        if target is not None and not 0 <= target < len(class_names):
            raise ValueError(
                f"SRC {src}: {item.id}: target {target} is out of range for "
                f"{len(class_names)} classes"
            )
        resolved.append(dataclasses.replace(item, target=target))
    return resolved


def layer_names(bundle: ModelBundle, options: ExplainOptions) -> dict:
    """The target layer and GE stages the job's explainer uses, found on a random input."""
    explainer = options.explainer_for(bundle)
    side = bundle.input_size
    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    layers = explainer.layers_for(example.to(next(bundle.model.parameters()).device))
    return {
        "target_layer": str(layers.target.ref),
        "stages": [str(stage.ref) for stage in layers.stages] if options.gradual else [],
        "stage_weighting": explainer.stage_weighting,
        "normalize": explainer.normalize,
    }


@dataclass
class Plan:
    """A job ready to run: its items, the shards left, where and how rows are written."""

    items: list[Item]
    options: ExplainOptions
    shard_size: int
    output: Output
    bundle: ModelBundle
    metadata: dict
    overlays: Path | None = None
    pending: list[int] = field(default_factory=list)

    @property
    def shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, shard: int) -> list[Item]:
        return self.items[shard * self.shard_size : (shard + 1) * self.shard_size]

    def pending_items(self) -> list[Item]:
        return [item for shard in self.pending for item in self.shard_items(shard)]


def plan_job(
    src, dst, options: ExplainOptions, *, shard_size: int, overlays: Path | None = None
) -> Plan:
    items = read_source(src)
    bundle = load_model(options.model, options.weights, options.labels)
    items = resolve_targets(items, bundle.class_names, src)
    map_size = options.map_size or bundle.input_size
    metadata = {
        "gradex_version": __version__,
        "model": bundle.name,
        "labels": options.labels,
        "method": options.method,
        "gradual": options.gradual,
        "paper": options.paper,
        **layer_names(bundle, options),
        "map_dtype": options.map_dtype,
        "map_shape": [map_size, map_size],
        "maps": "saliency: the GE map; cam: the coarse map, bilinear-upsampled and min-max "
        "scaled per image; both (map_shape) C-order bytes of map_dtype, uint8 as 0..255 for [0, 1]",
        "top_k": options.top_k,
    }
    if overlays is not None:
        try:
            overlays.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"--overlays {overlays}: {error.strerror}") from None
    output = Output(dst, fingerprint(items, options, shard_size))
    plan = Plan(items, options, shard_size, output, bundle, metadata, overlays)
    plan.pending = [shard for shard in range(plan.shards) if not output.done(shard)]
    return plan


def overlay_path(folder: Path, item: Item) -> Path:
    """``folder/<id>.png`` for ids that are plain relative paths, else by the item's index."""
    if _SAFE_ID.match(item.id) and ".." not in item.id.split("/"):
        return folder / f"{item.id}.png"
    return folder / f"{item.index:09d}.png"


@dataclass
class Summary:
    explained: int = 0
    errors: int = 0
    shards_written: int = 0
    shards_skipped: int = 0  # done by an earlier run
    seconds: float = 0.0  # the whole job: model loading and warm-up included
    first_batch_seconds: float | None = None  # from the start until the first batch landed
    first_batch_images: int = 0


class ShardAssembler:
    """Collects a shard's rows and failures as batches arrive (in any order) and commits the
    shard, atomically, the moment all its images are accounted for."""

    def __init__(self, plan: Plan, progress: tqdm, started: float):
        self.plan = plan
        self.progress = progress
        self.rows_schema = row_schema(plan.metadata)
        self.errors_schema = error_schema(plan.metadata)
        self.summary = Summary(shards_skipped=plan.shards - len(plan.pending))
        self._rows: dict[int, list] = {}
        self._failures: dict[int, list] = {}
        self._seen: dict[int, set[int]] = {}
        self._committed: set[int] = set()
        self.started = started  # perf_counter() when the job began

    def shard_of(self, item: Item) -> int:
        return item.index // self.plan.shard_size

    def has(self, item: Item) -> bool:
        """Whether ``item`` is already accounted for (explained or failed) in this run."""
        shard = self.shard_of(item)
        return shard in self._committed or item.index in self._seen.get(shard, ())

    def add(
        self,
        items: list[Item],
        result: BatchResult | None,
        failures: list[tuple[Item, str]],
    ) -> None:
        """``items[i]`` was explained as ``result``'s i-th entry; ``failures`` could not be."""
        by_shard: dict[int, list[int]] = {}
        for position, item in enumerate(items):
            by_shard.setdefault(self.shard_of(item), []).append(position)
        for shard, positions in by_shard.items():
            part = result.take(positions) if len(positions) != len(items) else result
            chosen = [items[p] for p in positions]
            self._rows.setdefault(shard, []).append(
                (
                    [item.index for item in chosen],
                    rows_table(chosen, part, self.plan.bundle.class_names, self.rows_schema),
                )
            )
            self._seen.setdefault(shard, set()).update(item.index for item in chosen)
        if result is not None and result.overlays is not None:
            for item, png in zip(items, result.overlays, strict=True):
                path = overlay_path(self.plan.overlays, item)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, png)
        for item, reason in failures:
            shard = self.shard_of(item)
            self._failures.setdefault(shard, []).append((item, reason))
            self._seen.setdefault(shard, set()).add(item.index)
            tqdm.write(f"gradex: skipped {reason}", file=sys.stderr)
        if self.summary.first_batch_seconds is None:
            self.summary.first_batch_seconds = time.perf_counter() - self.started
            self.summary.first_batch_images = len(items) + len(failures)
        self.summary.explained += len(items)
        self.summary.errors += len(failures)
        self.progress.update(len(items) + len(failures))
        for shard in by_shard.keys() | {self.shard_of(item) for item, _ in failures}:
            if len(self._seen[shard]) == len(self.plan.shard_items(shard)):
                self._commit(shard)

    def _commit(self, shard: int) -> None:
        failures = self._failures.pop(shard, [])
        # Rows in job order within the shard, whatever order the batches came in.
        rows = self._rows.pop(shard, [])
        if rows:
            table = pa.concat_tables([table for _, table in rows])
            order = pc.sort_indices(pa.array([i for indices, _ in rows for i in indices]))
            rows = [table.take(order)]
        self.plan.output.commit(
            shard,
            rows,
            errors_table(sorted(failures, key=lambda f: f[0].index), self.errors_schema),
            self.rows_schema,
        )
        self._seen.pop(shard, None)
        self._committed.add(shard)
        self.summary.shards_written += 1

    def unfinished(self) -> list[int]:
        """The shards this run had to do and did not commit (none after a complete run)."""
        return [shard for shard in self.plan.pending if shard not in self._committed]
