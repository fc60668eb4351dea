"""How a GPU reduction splits one stage into blocks (CUDA) or programs (Triton).

``reduce_stage`` returns partials, one per block: a block covers a chunk of a sample's positions
and a split of its channels, and writes its partial channel sums and its partial maximum where no
other block writes. So a stage is one launch with no zeroed buffers and no atomics, and S comes
out the same on every run. The chain then adds the partial sums as it reads S, which is why their
number is kept small: a stage is split only until the GPU is busy (a few blocks per SM, each
streaming a worthwhile share of the activation), position chunks first (they cost nothing
later), channel splits only where the plane is too small to chunk (7×7 and 14×14 stages at small
batch), and never into more partial values than a 128×128 map.

The numbers are starting points chosen by reasoning, not yet tuned on a GPU (owed: see
bench/gpu_check.sh).
"""

from __future__ import annotations

# Blocks in flight per streaming multiprocessor that the split aims for.
BLOCKS_PER_MULTIPROCESSOR = 4
# Activation values a block should stream at least: fewer, and its fixed costs dominate.
MIN_VALUES_PER_BLOCK = 8192
# Positions per chunk at least (one tile of the NCHW kernel), channels per split at least.
MIN_POSITIONS_PER_CHUNK = 256
MIN_CHANNELS_PER_SPLIT = 16
# Partial channel sums per sample at most, summed over the splits.
MAX_PARTIAL_VALUES = 16384


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def reduction_partition(
    batch: int, channels: int, positions: int, multiprocessors: int
) -> tuple[int, int]:
    """(splits, chunks) per sample for a (batch, channels, positions) stage."""
    if batch <= 0:
        return 1, 1
    values = batch * channels * positions
    blocks = min(BLOCKS_PER_MULTIPROCESSOR * multiprocessors, values // MIN_VALUES_PER_BLOCK)
    per_sample = _cdiv(max(1, blocks), batch)
    if per_sample <= 1:
        return 1, 1
    chunks = min(per_sample, max(1, positions // MIN_POSITIONS_PER_CHUNK))
    splits = min(
        _cdiv(per_sample, chunks),
        max(1, channels // MIN_CHANNELS_PER_SPLIT),
        max(1, MAX_PARTIAL_VALUES // positions),
    )
    return splits, chunks
