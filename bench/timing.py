"""Timing helpers shared by the benchmarks in bench/ (they run as scripts, so this is a sibling
module rather than part of the package)."""

from __future__ import annotations

import statistics
import time

from gradex.benchmark.measure import cpu_name  # noqa: F401  (re-exported for the bench scripts)


def time_interleaved(fns: dict, reps: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median and p90 in ms of each function, run round-robin so that a drift in the machine's
    speed (a shared VM) falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(1000 * (time.perf_counter() - start))
    rows = {}
    for name, values in samples.items():
        values.sort()
        rows[name] = {
            "median_ms": statistics.median(values),
            "p90_ms": values[int(0.9 * (len(values) - 1))],
        }
    return rows
