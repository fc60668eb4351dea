"""Clocks, memory and the machine: what every row of the benchmark is measured with.

Latency: wall time of one call, from a synchronised device to a synchronised device, so that a
row is what a caller waits for. Rows are timed round-robin (one call of each in turn) so that a
drift in the machine's speed (a shared VM, a GPU's clocks) falls on all of them alike.

Peak memory of a variant = what it holds between calls (a CUDA graph's private memory pool, a
static input buffer) + the peak one warm call adds. CUDA: held = the allocator's reserved memory
after minus before building (cache emptied both times, which a graph's pool survives); the call's
peak from the allocator's peak counter. CPU: the process's resident size (VmRSS) and its peak
(VmHWM, reset through /proc; Linux only), after glibc has handed its free pages back. Memory the C
allocator keeps can still be reused without the resident size growing, so CPU peaks are lower
bounds; bench/bench_memory.py measures each variant in its own process. One-off costs of a first
call (finding the layers for a new input size) are not counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..ops import resolve_backend


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    calls: dict[str, Callable[[], object]],
    device: torch.device,
    reps: int,
    budget_s: float,
    warmup: int,
) -> dict[str, list[float]]:
    """Milliseconds per call of each function: ``reps`` samples each, or fewer (at least two)
    for a function whose samples have used up ``budget_s`` seconds."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)
    for rep in range(reps):
        for name, fn in calls.items():
            if rep >= 2 and spent[name] > budget_s:
                continue
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            spent[name] += elapsed
            samples[name].append(1000 * elapsed)
    return samples


def summarise(samples_ms: list[float], batch: int) -> dict[str, float]:
    values = np.asarray(samples_ms)
    p50 = float(np.percentile(values, 50))
    return {
        "p50_ms": round(p50, 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
        "n": len(values),
        "img_per_s": round(1000 * batch / p50, 2),
    }


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_cpu_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc), so that the next variant's
    allocations show in the resident size instead of reusing pages an earlier one left."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux 4.0+)."""
    _release_free_cpu_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def held_mib(device: torch.device) -> float | None:
    """Memory this process holds now, in MiB, with every cache it can empty emptied."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        return torch.cuda.memory_reserved(device) / 2**20
    _release_free_cpu_memory()
    rss = _proc_status_kib("VmRSS")
    return None if rss is None else rss / 1024


def peak_memory_mib(device: torch.device, work: Callable[[], object]) -> float | None:
    """Peak memory that ``work()`` added, in MiB; None where it cannot be read."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        work()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not _reset_cpu_peak():
        return None
    base = _proc_status_kib("VmRSS")
    work()
    peak = _proc_status_kib("VmHWM")
    if base is None or peak is None:
        return None
    return max(peak - base, 0) / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine(device: torch.device) -> dict:
    """The device, the host and the versions a result was measured with."""
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("torch", "torchvision", "triton", "gradex", "numpy")
            if _version(name)
        },
    }
    # The fused backend gradex's rows ran ('auto' on this device).
    info["gradex_backend"] = resolve_backend("auto", device).name
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info
