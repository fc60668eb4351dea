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
import statistics
import time
from pathlib import Path

import torch
import torchvision

import gradex
from gradex import images, models

RESULTS = Path(__file__).parent / "results"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_interleaved(fns: dict, reps: int) -> dict[str, dict[str, float]]:
    """Median and p90 in ms of each function, run round-robin so that a drift in the machine's
    speed (a shared VM) falls on all of them alike."""
    for fn in fns.values():
        for _ in range(3):
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
            "median_ms": round(statistics.median(values), 2),
            "p90_ms": round(values[int(0.9 * (len(values) - 1))], 2),
        }
    return rows


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

    rows = _time_interleaved(
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
        "cpu": _cpu_name(),
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
        lines.append(f"| {name} | {row['median_ms']} | {row['p90_ms']} | {row['x_inference']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
