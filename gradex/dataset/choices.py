"""The values the dataset job's options take and their defaults, in a module with no heavy
imports: the command line's parser reads them for every gradex command, and pyarrow and Ray are
optional."""

import os

ENGINES = ("local", "ray")
RAY_DEVICES = ("auto", "cpu", "cuda")  # the Ray actors' device, checked against the cluster
MAP_DTYPES = ("uint8", "float16")
DEFAULT_SHARD_SIZE = 512
ERRORS_DIR = "_errors"  # DST's errors table


def default_batch_size(device_type: str) -> int:
    return 64 if device_type == "cuda" else 8


def default_workers(device) -> int:
    """Decoding processes: on a GPU as many as there are cores (up to 8); on the CPU the explainer
    needs the cores itself, so one fewer than there are (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cores) if device.type == "cuda" else max(1, (cores or 2) - 1)
