"""The embedded engine: nothing to start. DataLoader worker processes read and preprocess the
next batches while the main process explains the current one and streams finished shards to DST.

Memory is bounded by the loader's prefetch (workers x prefetch_factor batches) and the rows of
the one shard being assembled; nothing grows with the number of images.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from .decoding import DecodedImages, collate, quiet_worker
from .explaining import BatchExplainer
from .job import Plan, ShardAssembler


class ShardBatches(Sampler):
    """Batches of positions in the pending items that never cross a shard: a shard is complete
    (and committed) as soon as its last batch is explained."""

    def __init__(self, shard_lengths: list[int], batch_size: int):
        self.batches = []
        start = 0
        for length in shard_lengths:
            for first in range(start, start + length, batch_size):
                self.batches.append(list(range(first, min(first + batch_size, start + length))))
            start += length

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def run_local(
    plan: Plan,
    assembler: ShardAssembler,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
) -> None:
    items = plan.pending_items()
    if not items:
        return
    explainer = BatchExplainer(
        plan.options, device, bundle=plan.bundle, overlays=plan.overlays is not None
    )
    loader = DataLoader(
        DecodedImages(items, plan.bundle.preprocess),
        batch_sampler=ShardBatches([len(plan.shard_items(s)) for s in plan.pending], batch_size),
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=quiet_worker if workers else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    for positions, images, failed in loader:
        result = None
        if images is not None:
            result = explainer(images, [items[p].target for p in positions])
        assembler.add(
            [items[p] for p in positions], result, [(items[p], reason) for p, reason in failed]
        )
