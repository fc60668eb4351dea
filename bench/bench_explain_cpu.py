"""One explanation against one prediction, on the CPU, in one process.

    python bench/bench_explain_cpu.py [--reps 30] [--batch 1] [--threads N]

Times no-grad inference of the embedded EfficientNet-Lite0 at 224x224 (the floor) beside a
Grad-CAM explanation with and without Gradual Extrapolation, on the demo photos, and writes
bench/results/explain_cpu.{json,md} with the CPU model and library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torchvision
from timing import cpu_name, time_interleaved

import gradex
from gradex import images, models

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bundle = models.load_model()
    photos = images.demo_photos()
    x = torch.stack(
        [bundle.preprocess(images.load_rgb(photos[i % len(photos)])) for i in range(args.batch)]
    )
    ge = gradex.Explainer(bundle.model)
    plain = gradex.Explainer(bundle.model, gradual=False)

    def inference():
        with torch.no_grad():
            bundle.model(x)

    rows = time_interleaved(
        {
            "no-grad inference": inference,
            "Grad-CAM (upsampled)": lambda: plain(x),
            "Grad-CAM + GE": lambda: ge(x),
        },
        args.reps,
    )
    floor = rows["no-grad inference"]["median_ms"]
    for row in rows.values():
        row["x_inference"] = round(row["median_ms"] / floor, 2)
    report = {
        "what": f"EfficientNet-Lite0, 224x224, batch {args.batch}, fp32, CPU",
        "cpu": cpu_name(),
        "threads": args.threads,
        "reps": args.reps,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "gradex": gradex.__version__,
            "python": platform.python_version(),
        },
        "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"explain_cpu_b{args.batch}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {report['what']}",
        "",
        f"{report['cpu']}, {args.threads} threads, torch {torch.__version__}, "
        f"median of {args.reps} interleaved runs after 3 warm-up runs each",
        "",
        "| | median ms | p90 ms | × inference |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | {row['x_inference']} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
