"""Peak memory of an explanation: what reducing each stage inside its hook saves.

    python bench/bench_memory.py                      # CPU, EfficientNet-Lite0, batch 8
    python bench/bench_memory.py --device cuda --model resnet50 --batch 64

Three runs of the same model on the same random batch:
  - no-grad inference (the floor);
  - a Grad-CAM + GE explanation, each stage reduced to (S, M) in its forward hook (gradex);
  - the same explanation through a backend that keeps every stage activation until the end
    (what a GE that reduces after the forward would hold).
CUDA: peak of torch.cuda.max_memory_allocated above the memory in use before the call.
CPU: each run in its own process, peak resident memory (VmHWM) above the resident memory before
the call, with glibc told to return large blocks to the system (MALLOC_MMAP_THRESHOLD_).
Writes bench/results/memory_<device>_<model>_b<batch>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from timing import cpu_name

import gradex
from gradex import models, ops, reference
from gradex.benchmark.measure import peak_memory_mib

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "inference": "no-grad inference",
    "explain": "Grad-CAM + GE, stages reduced in their hooks (gradex)",
    "explain_keep_stages": "Grad-CAM + GE, every stage activation kept to the end",
}


def build(model_name: str, batch: int, device: torch.device):
    torch.manual_seed(0)
    if model_name == "efficientnet_lite0":
        model = models.load_lite0()
    else:
        model = torchvision.models.get_model(model_name, weights=None).eval()
    return model.to(device), torch.rand(batch, 3, 224, 224, device=device)


def keep_stages_backend(kept: list) -> str:
    """A backend that reduces like the reference but holds each full stage activation."""

    def reduce_and_keep(activation, transform):
        kept.append(activation)
        return reference.reduce_stage(activation, transform)

    name = "bench_keep_stages"
    ops.register_backend(
        ops.Backend(
            name=name,
            reduce_stage=reduce_and_keep,
            chain=reference.chain,
            availability=lambda device=None: (True, "benchmark only"),
            devices=("*",),
        )
    )
    return name


def make_variant(variant: str, model):
    """The call that ``variant`` measures, as a function of the batch."""
    if variant == "inference":

        def infer(x):
            with torch.no_grad():
                model(x)

        return infer
    if variant == "explain":
        return gradex.Explainer(model, backend="auto")
    kept: list = []
    explainer = gradex.Explainer(model, backend=keep_stages_backend(kept))

    def explain_keeping_stages(x):
        explainer(x)
        kept.clear()

    return explain_keeping_stages


def child(args) -> None:
    """One variant in a fresh process: prints the peak MiB of a second call above the memory in
    use before it (the first call does the one-time work: layer discovery, loading kernels)."""
    device = torch.device(args.device)
    model, x = build(args.model, args.batch, device)
    run = make_variant(args.child, model)
    run(x)
    peak = peak_memory_mib(device, lambda: run(x))
    if peak is None:
        raise RuntimeError("this system reports no peak resident size (/proc/self/status)")
    print(json.dumps({"peak_MiB": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = {}
    for variant, label in VARIANTS.items():
        command = [sys.executable, __file__, "--child", variant, "--device", args.device,
                   "--model", args.model, "--batch", str(args.batch)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        rows[variant] = {"what": label, **json.loads(result.stdout.strip().splitlines()[-1])}
    floor = rows["inference"]["peak_MiB"]
    for row in rows.values():
        row["x_inference"] = row["peak_MiB"] / floor
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name()
    report = {
        "what": f"{args.model}, 224x224, batch {args.batch}, fp32, {args.device}",
        "device": device_name,
        "measure": "CUDA allocator peak" if args.device.startswith("cuda") else "peak RSS (VmHWM)",
        "versions": {
            "torch": torch.__version__,
            "gradex": gradex.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"memory_{args.device.split(':')[0]}_{args.model}_b{args.batch}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Peak memory: {report['what']}",
        "",
        f"{device_name}; torch {torch.__version__}; {report['measure']} above the memory in use "
        "before the call, each run in its own process.",
        "",
        "| run | peak MiB | × inference |",
        "| --- | --- | --- |",
    ]
    for row in rows.values():
        lines.append(f"| {row['what']} | {row['peak_MiB']:.0f} | {row['x_inference']:.2f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
