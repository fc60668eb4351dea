"""Whole GE through the public API on EfficientNet-Lite0's stage shapes at batch 8: one line per
run, the median ms of each option set. The API is the same across gradex's releases, so the same
script times an older build against this one (run it with that build first on PYTHONPATH, in
alternation with this one: on a shared machine only runs side by side compare).

    python bench/whole_ge_timing.py [nchw|channels_last] [--backend cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gradex

SHAPES = [(96, 112, 112), (144, 56, 56), (240, 28, 28), (672, 14, 14), (1280, 7, 7)]
OPTIONS = {"defaults": {}, "paper": {"stage_weighting": "global", "normalize": "standardize"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layout", nargs="?", default="nchw", choices=["nchw", "channels_last"])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    memory_format = (
        torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    )
    acts = [torch.rand(args.batch, *s).contiguous(memory_format=memory_format) for s in SHAPES]
    heatmap = torch.rand(args.batch, 1, 7, 7)
    medians = {}
    for name, options in OPTIONS.items():

        def run(options=options):
            gradex.extrapolate(
                heatmap, acts, (224, 224), backend=args.backend, check=False, **options
            )

        for _ in range(5):
            run()
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            run()
            times.append(1000 * (time.perf_counter() - start))
        medians[name] = statistics.median(times)
    cells = " ".join(f"{name}={ms:.3f}ms" for name, ms in medians.items())
    print(f"gradex at {gradex.__file__}: {args.layout} b{args.batch} {args.backend}: {cells}")


if __name__ == "__main__":
    main()
