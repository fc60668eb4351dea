"""The fused GE kernels against the reference ops, on each model's real stage shapes.

    python bench/bench_kernels.py                   # the device's full matrix
    python bench/bench_kernels.py --device cpu      # CPU: batch 1 and 8, providers reference/cpu
    python bench/bench_kernels.py --quick           # one model, batch 1, fp32 (a smoke run)

For ResNet-50, VGG16 and EfficientNet-Lite0 (stage shapes as gradex.Explainer picks them at
224×224), batch 1 and 64 on a GPU (1 and 8 on the CPU), fp32 and bf16, NCHW and channels_last,
for gradex's default options (local stage weighting, min-max) and the paper's (global, standardise):
  - whole GE: every stage reduced, then the chain (weighting, steps, resize to 224×224,
    normalisation): time and speed-up over the reference ops, for both options;
  - the chain alone, on stages already reduced: what the options cost beyond the reductions;
  - each stage's reduction (one read of the activation): time, GB/s on the activation's bytes,
    and % of the read roofline measured in the same run (a large x.sum());
  - on a GPU, the kernel launches (and memsets, copies) of one whole GE, from the profiler.
GPU times are medians of triton.testing.do_bench; CPU times are medians of interleaved runs.
Writes bench/results/kernels_<device>.{json,md} with the device name and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

import torch
import torchvision
from timing import cpu_name, time_interleaved

import gradex
from gradex import models, ops, reference

RESULTS = Path(__file__).parent / "results"
MODELS = ["resnet50", "vgg16", "efficientnet_lite0"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = ["nchw", "channels_last"]
OPTIONS = {"defaults": {}, "paper": dict(reference.PAPER_FORMULA)}
OUTPUT_SIZE = (224, 224)


def stage_shapes(model_name: str) -> list[tuple[int, int, int]]:
    """(C, H, W) of each GE stage the Explainer picks for ``model_name`` at 224×224."""
    if model_name == "efficientnet_lite0":
        model = models.load_lite0()
    else:
        model = torchvision.models.get_model(model_name, weights=None).eval()
    explainer = gradex.Explainer(model)
    captured = explainer.capture(torch.rand(1, 3, 224, 224))
    return [tuple(a.shape[1:]) for a in captured.activations]


def make_timer(device: torch.device, reps: int):
    """fns -> {name: median ms}, measured the device's way."""
    if device.type == "cuda":
        from triton.testing import do_bench

        def timer(fns):
            return {
                name: do_bench(fn, warmup=10, rep=40, return_mode="median")
                for name, fn in fns.items()
            }

        return timer

    def timer(fns):
        return {name: row["median_ms"] for name, row in time_interleaved(fns, reps, 1).items()}

    return timer


def read_roofline_gbs(device: torch.device, timer) -> float:
    """GB/s of a plain x.sum() over a buffer far larger than the caches."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 26)  # 1 GiB / 256 MiB of fp32
    x = torch.rand(numel, device=device)
    ms = timer({"sum": lambda: x.sum()})["sum"]
    return x.numel() * x.element_size() / (ms * 1e-3) / 1e9


def whole_function(backend, heatmap, activations, options):
    def run():
        stages = [backend.reduce_stage(a, None) for a in activations]
        return ops.extrapolate_reduced(heatmap, stages, OUTPUT_SIZE, backend, **options)

    return run


def chain_function(backend, heatmap, stages, options):
    def run():
        return ops.extrapolate_reduced(heatmap, stages, OUTPUT_SIZE, backend, **options)

    return run


def gpu_launches(fn) -> dict[str, int]:
    """Kernels, memsets and copies one call of ``fn`` puts on the GPU (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name.lower() for e in prof.events() if e.device_type.name == "CUDA"]
    memsets = sum("memset" in n for n in names)
    copies = sum("memcpy" in n for n in names)
    return {"kernels": len(names) - memsets - copies, "memsets": memsets, "copies": copies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=LAYOUTS, choices=LAYOUTS)
    parser.add_argument("--reps", type=int, default=15, help="CPU: timed runs per measurement")
    parser.add_argument("--quick", action="store_true", help="resnet50, batch 1, fp32, NCHW")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="appended to the result files' names")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        args.models, args.batches, args.dtypes, args.layouts = ["resnet50"], [1], ["fp32"], ["nchw"]
    batches = args.batches or ([1, 64] if device.type == "cuda" else [1, 8])
    provider_names = (
        ["reference", "triton", "cuda"] if device.type == "cuda" else ["reference", "cpu"]
    )
    providers = {}
    skipped = {}
    for name in provider_names:
        try:
            providers[name] = ops.resolve_backend(name, device)
        except (RuntimeError, ValueError) as error:
            skipped[name] = str(error)
    timer = make_timer(device, args.reps)
    roofline = read_roofline_gbs(device, timer)
    print(f"read roofline: {roofline:.1f} GB/s; providers: {', '.join(providers)}")

    reductions, wholes, launches = [], [], []
    for model_name in args.models:
        shapes = stage_shapes(model_name)
        for batch in batches:
            for dtype_name in args.dtypes:
                for layout in args.layouts:
                    memory_format = (
                        torch.channels_last
                        if layout == "channels_last"
                        else torch.contiguous_format
                    )
                    acts = [
                        torch.rand(batch, *shape, device=device)
                        .to(DTYPES[dtype_name])
                        .contiguous(memory_format=memory_format)
                        for shape in shapes
                    ]
                    config = {
                        "model": model_name,
                        "batch": batch,
                        "dtype": dtype_name,
                        "layout": layout,
                    }
                    for a in acts:
                        reductions.append(reduction_row(config, a, providers, timer, roofline))
                        print(_reduction_line(reductions[-1], providers))
                    heatmap = torch.rand(batch, 1, *shapes[-1][1:], device=device)
                    row = {**config}
                    reduced = {
                        name: [backend.reduce_stage(a, None) for a in acts]
                        for name, backend in providers.items()
                    }
                    for option, settings in OPTIONS.items():
                        fns = {}
                        for name, backend in providers.items():
                            fns[f"{name}/whole"] = whole_function(backend, heatmap, acts, settings)
                            fns[f"{name}/chain"] = chain_function(
                                backend, heatmap, reduced[name], settings
                            )
                        times = timer(fns)
                        for name in providers:
                            whole = times[f"{name}/whole"]
                            row[f"{option}/{name}"] = {
                                "whole_ms": whole,
                                "chain_ms": times[f"{name}/chain"],
                                "x_reference": times["reference/whole"] / whole,
                            }
                        if device.type == "cuda" and batch == 1 and dtype_name == "fp32":
                            for name, backend in providers.items():
                                whole = whole_function(backend, heatmap, acts, settings)
                                launches.append(
                                    {**config, "option": option, "provider": name,
                                     "stages": len(acts), **gpu_launches(whole)}
                                )  # fmt: skip
                    wholes.append(row)
                    print(_whole_line(row, providers))
                    del acts

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "read_roofline_GBps": roofline,
        "versions": {
            "torch": torch.__version__,
            "triton": _version("triton"),
            "cuda": torch.version.cuda,
            "gradex": gradex.__version__,
            "python": platform.python_version(),
        },
        "providers": list(providers),
        "unavailable": skipped,
        "output_size": list(OUTPUT_SIZE),
        "timing": "median of triton.testing.do_bench"
        if device.type == "cuda"
        else f"median of {args.reps} interleaved runs",
        "wholes": wholes,
        "reductions": reductions,
        "launches": launches,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^a-z0-9]+", "_", report["device"].lower()).strip("_")
    suffix = ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    stem = args.out / f"kernels_{device.type}_{tag}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report) + "\n")
    print(f"wrote {stem}.json and .md")


def reduction_row(config, activation, providers, timer, roofline) -> dict:
    gbytes = activation.numel() * activation.element_size() / 1e9
    times = timer(
        {n: (lambda b=b, a=activation: b.reduce_stage(a, None)) for n, b in providers.items()}
    )
    row = {**config, "shape": list(activation.shape), "MB": round(gbytes * 1e3, 2)}
    for name, ms in times.items():
        row[name] = {
            "ms": ms,
            "GB/s": gbytes / (ms * 1e-3),
            "roofline_%": 100 * gbytes / (ms * 1e-3) / roofline,
        }
    return row


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _reduction_line(row, providers) -> str:
    cells = "  ".join(
        f"{n} {row[n]['ms'] * 1e3:8.1f} us {row[n]['GB/s']:7.1f} GB/s {row[n]['roofline_%']:5.1f}%"
        for n in providers
    )
    return f"{_config_label(row)} {str(row['shape']):<22} {cells}"


def _whole_line(row, providers) -> str:
    cells = "  ".join(
        f"{option} {n} {row[f'{option}/{n}']['whole_ms']:.3f} ms "
        f"({row[f'{option}/{n}']['x_reference']:.2f}x)"
        for option in OPTIONS
        for n in providers
    )
    return f"{_config_label(row)} whole GE: {cells}"


def _config_label(row) -> str:
    return f"{row['model']:<18} b{row['batch']:<3} {row['dtype']} {row['layout']:<13}"


def markdown(report: dict) -> str:
    providers = report["providers"]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    size = "×".join(map(str, report["output_size"]))
    lines = [
        f"# GE kernels on {report['device']}",
        "",
        f"{versions}; {report['threads']} CPU threads; {report['timing']}; read roofline "
        f"(x.sum() over a large buffer, same run): {report['read_roofline_GBps']:.1f} GB/s.",
        "",
        "Options: **defaults** = local stage weighting + min-max (gradex's defaults); **paper** = "
        "global weighting + standardise-and-clip (the paper's formula).",
    ]
    if report["unavailable"]:
        lines.append("")
        lines.append(
            "Not run: " + "; ".join(f"{k} ({v})" for k, v in report["unavailable"].items())
        )
    lines += [
        "",
        f"## Whole GE: every stage reduced, then the chain to {size} (ms, × the reference)",
        "",
    ]
    columns = [(option, p) for option in OPTIONS for p in providers]
    lines += _options_table(
        report,
        columns,
        lambda row, o, p: (
            f"{row[f'{o}/{p}']['whole_ms']:.3f} ({row[f'{o}/{p}']['x_reference']:.2f}×)"
        ),
    )
    lines += ["", "## The chain alone, on reduced stages (ms)", ""]
    lines += _options_table(report, columns, lambda row, o, p: f"{row[f'{o}/{p}']['chain_ms']:.3f}")
    if report["launches"]:
        lines += ["", "## GPU activity of one whole GE (batch 1, fp32; profiler)", ""]
        lines.append("| model | layout | option | provider | stages | kernels | memsets | copies |")
        lines.append("| --- " * 8 + "|")
        for row in report["launches"]:
            lines.append(
                f"| {row['model']} | {row['layout']} | {row['option']} | {row['provider']} | "
                f"{row['stages']} | {row['kernels']} | {row['memsets']} | {row['copies']} |"
            )
    lines += [
        "",
        "## Stage reduction (S and M from one read of the activation)",
        "",
        "Each row times one stage again and again: a stage that fits in the caches is read from "
        "them, hence figures above 100 % of the memory roofline; the whole-GE rows above stream "
        "every stage from memory.",
        "",
    ]
    lines.append(
        "| model | batch | dtype | layout | stage (B,C,H,W) | MB | "
        + " | ".join(f"{p} µs · GB/s · % roof" for p in providers)
        + " |"
    )
    lines.append("| --- " * (6 + len(providers)) + "|")
    for row in report["reductions"]:
        cells = " | ".join(
            f"{row[p]['ms'] * 1e3:.1f} · {row[p]['GB/s']:.1f} · {row[p]['roofline_%']:.0f}%"
            for p in providers
        )
        shape = "×".join(map(str, row["shape"]))
        lines.append(f"| {_config_cells(row)} | {shape} | {row['MB']} | {cells} |")
    return "\n".join(lines)


def _options_table(report: dict, columns, cell) -> list[str]:
    """One row per configuration, one column per (option, provider): ``cell(row, o, p)``."""
    lines = [
        "| model | batch | dtype | layout | "
        + " | ".join(f"{option}: {p}" for option, p in columns)
        + " |",
        "| --- " * (4 + len(columns)) + "|",
    ]
    for row in report["wholes"]:
        cells = " | ".join(cell(row, o, p) for o, p in columns)
        lines.append(f"| {_config_cells(row)} | {cells} |")
    return lines


def _config_cells(row) -> str:
    return f"{row['model']} | {row['batch']} | {row['dtype']} | {row['layout']}"


if __name__ == "__main__":
    main()
