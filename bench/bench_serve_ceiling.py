"""What batching can win at most, from the model alone: images/s at batch 1 and at the server's
largest batch, for the no-grad prediction and the static explanation `gradex serve` runs.

    python bench/bench_serve_ceiling.py                  # batches 1, 2, 4, 8 on the CPU
    python bench/bench_serve_ceiling.py --batches 1,8,32 --device cuda

A server cannot batch its way past the ratio measured here: if a batch of 8 costs 8 batches of 1,
dynamic batching only adds queueing. Interleaved timing (bench/timing.py), so a drift in a shared
machine's speed falls on every row alike. Writes bench/results/serve_ceiling_<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_serve import slug
from timing import time_interleaved

from gradex import Explainer
from gradex.benchmark.measure import machine
from gradex.devices import parse_device
from gradex.models import load_model
from gradex.serve.runner import StaticPredictor

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches",
        type=lambda text: sorted({1, *map(int, text.split(","))}),
        default=[1, 2, 4, 8],
        help="batch sizes, comma-separated (1 is always measured: the baseline)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=12)
    args = parser.parse_args()
    device = parse_device(args.device)
    bundle = load_model()
    model = bundle.model.to(device)
    explainer = Explainer(model)
    generator = torch.Generator().manual_seed(0)
    fns, sizes = {}, args.batches
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for size in sizes:
        x = torch.randn(size, 3, 224, 224, generator=generator).to(device)
        predictor = StaticPredictor(model, x, None, warmup=2)
        static = explainer.static(x, warmup=2)
        fns[f"predict b{size}"] = lambda p=predictor, x=x: (p(x), sync())
        fns[f"explain b{size}"] = lambda s=static, x=x: (s(x), sync())
    timed = time_interleaved(fns, reps=args.reps)
    rows = []
    for verb in ("predict", "explain"):
        per_image = {s: timed[f"{verb} b{s}"]["median_ms"] / s for s in sizes}
        for s in sizes:
            rows.append(
                {
                    "verb": verb,
                    "batch": s,
                    "ms_per_image": round(per_image[s], 2),
                    "images_per_s": round(1000 / per_image[s], 1),
                    # what batching wins over batch 1 at most: b1's time per image over this one's
                    "gain_over_b1": round(per_image[1] / per_image[s], 2),
                }
            )
    info = machine(device)
    report = {"machine": info, "model": bundle.name, "rows": rows}
    lines = [
        f"# What batching can win, from the model alone: {info['device']}",
        "",
        f"`python bench/bench_serve_ceiling.py --batches {','.join(map(str, sizes))} "
        f"--device {args.device}`; "
        f"{bundle.name}, 224x224, fp32, medians of {args.reps} interleaved runs; "
        f"torch {info['versions'].get('torch')}, {info['threads']} threads.",
        "",
        "| verb | batch | ms/image | images/s | gain over batch 1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['verb']} | {r['batch']} | {r['ms_per_image']} | {r['images_per_s']} | "
            f"{r['gain_over_b1']}x |"
        )
    text = "\n".join(lines) + "\n"
    stem = RESULTS / ("serve_ceiling_" + slug(info["device"]))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
