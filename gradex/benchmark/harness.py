"""Running the benchmark: the command line, one (model, batch) configuration at a time.

gradex bench                                  # the defaults for the device found
gradex bench --device cpu --models efficientnet_lite0 --batches 1 --reps 30
gradex bench --quick --out /tmp/b             # tiny model, 2 repetitions: a smoke test
python bench/bench_e2e.py ...                 # the same, writing to bench/results/
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from ..explainer import Explainer
from . import measure, report
from .peers import PEER_VARIANTS, agreement, peer_status
from .variants import CHANNELS_LAST, FLOOR_AND_GRADEX, OWN_COPY, Setup, VariantSpec
from .zoo import ZOO, build_model

VARIANTS: dict[str, VariantSpec] = {v.key: v for v in FLOOR_AND_GRADEX + PEER_VARIANTS}
DEFAULTS = {
    "cuda": {
        "models": ["resnet50", "vgg16", "efficientnet_lite0"],
        "batches": [1, 64],
        "reps": 50,
        "budget_s": 3.0,
        "warmup": 3,
    },
    "cpu": {
        "models": ["efficientnet_lite0", "resnet50", "vgg16"],
        "batches": [1],
        "reps": 20,
        "budget_s": 20.0,
        "warmup": 2,
    },
}
QUICK = {"models": ["tiny"], "batches": [1], "reps": 2, "budget_s": 5.0, "warmup": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--models", nargs="+", choices=list(ZOO), help="default: per device")
    parser.add_argument("--batches", nargs="+", type=int, help="default: 1 64 (cuda), 1 (cpu)")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="default: all that can run here"
    )
    parser.add_argument("--reps", type=int, help="timed calls per variant (default per device)")
    parser.add_argument(
        "--budget-s", type=float, help="stop timing a variant after this many seconds (min 2)"
    )
    parser.add_argument("--warmup", type=int, help="untimed calls per variant first")
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 1, 2 repetitions")
    parser.add_argument("--out", type=Path, default=Path("gradex_bench"), help="folder for results")
    parser.add_argument("--tag", default="", help="added to the file names")


def _settings(args: argparse.Namespace, device: torch.device) -> dict:
    settings = dict(QUICK if args.quick else DEFAULTS[device.type])
    for key in ("models", "batches", "reps", "budget_s", "warmup"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if settings["reps"] < 2:
        raise ValueError("--reps must be at least 2 (a p50 and a p99 of one call say nothing)")
    if any(b < 1 for b in settings["batches"]):
        raise ValueError("--batches must be at least 1")
    if settings["warmup"] < 0:
        raise ValueError("--warmup must be at least 0")
    settings["variants"] = args.variants or list(VARIANTS)
    settings["smoke_test"] = bool(args.quick)
    return settings


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type not in DEFAULTS:
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here")
    return device


def _skip_reason(spec: VariantSpec, device: torch.device, peers: dict) -> str | None:
    if device.type not in spec.devices:
        return f"runs on {', '.join(spec.devices)} only"
    for peer in spec.needs:
        importable, why = peers[peer]
        if not importable:
            return why
    return None


def run_config(name: str, batch: int, device: torch.device, settings: dict, peers: dict) -> dict:
    """Build, check and time every variant on one model and batch size."""
    bench_model = ZOO[name]
    size = bench_model.input_size
    base = build_model(name).to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    with torch.no_grad():
        top1 = base(x).argmax(dim=1)
    channels_last: tuple | None = None

    result = {
        "model": name,
        "batch": batch,
        "input_size": size,
        "target_layer": bench_model.target_layer,
        "agreement": {},
        "rows": [],
        "skipped": {},
        "failed": {},
        "smoke_test": settings.get("smoke_test", False),
    }
    built = {}
    for key in settings["variants"]:
        spec = VARIANTS[key]
        reason = _skip_reason(spec, device, peers)
        if reason:
            result["skipped"][key] = reason
            continue
        if spec.model_copy == CHANNELS_LAST:
            if channels_last is None:
                model_cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
                channels_last = (model_cl, x.contiguous(memory_format=torch.channels_last))
            setup = Setup(bench_model, *channels_last, top1)
        elif spec.model_copy == OWN_COPY:
            setup = Setup(bench_model, copy.deepcopy(base), x, top1)
        else:
            setup = Setup(bench_model, base, x, top1)
        try:
            held_before = measure.held_mib(device)
            variant = spec.build(setup)
            variant.call()  # the first call: one-off work (layer discovery) happens here
            held_after = measure.held_mib(device)
            call_peak = measure.peak_memory_mib(device, variant.call)
        except Exception as error:  # reported, and the run goes on with the other variants
            result["failed"][key] = f"{type(error).__name__}: {error}"
            print(f"gradex bench: {name} b{batch} {key} failed: {error}", file=sys.stderr)
            continue
        peak = None
        if None not in (held_before, held_after, call_peak):
            peak = max(held_after - held_before, 0.0) + call_peak
        built[key] = (variant, peak)

    ours = Explainer(base, target_layer=bench_model.target_layer, gradual=False)(x).cam
    for key, (variant, _) in built.items():
        if variant.coarse is not None:
            result["agreement"][key] = agreement(ours, variant.coarse())

    samples = measure.time_round_robin(
        {key: variant.call for key, (variant, _) in built.items()},
        device,
        settings["reps"],
        settings["budget_s"],
        settings["warmup"],
    )
    for key, (variant, peak) in built.items():
        spec = VARIANTS[key]
        row = {"key": key, "label": spec.label, "group": spec.group}
        row.update(measure.summarise(samples[key], batch))
        row["peak_mib"] = None if peak is None else round(peak, 1)
        result["rows"].append(row)
        variant.close()
    floor = next((r for r in result["rows"] if r["key"] == "inference"), None)
    for row in result["rows"]:
        row["x_inference"] = round(row["p50_ms"] / floor["p50_ms"], 3) if floor else None
    del built, base, channels_last
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run(
    settings: dict, device: torch.device, command: str = "", out: Path | None = None, tag: str = ""
) -> dict:
    """Every configuration in turn; with ``out``, the files are rewritten after each one, so a
    run that dies (out of memory: the peers' full-graph backward at batch 64) keeps the rest."""
    peers = peer_status()
    for peer, (importable, why) in peers.items():
        if not importable:
            print(f"gradex bench: {peer} is not available, its rows are skipped: {why}")
    results = {
        "machine": measure.machine(device),
        "settings": dict(settings),
        "peers": {peer: why for peer, (_, why) in peers.items()},
        "command": command,
        "configs": [],
    }
    if settings.get("smoke_test"):
        results["note"] = report.SMOKE_TEST_NOTE
    for name in settings["models"]:
        for batch in settings["batches"]:
            print(f"gradex bench: {name}, batch {batch}, on {results['machine']['device']}")
            config = run_config(name, batch, device, settings, peers)
            print(report.config_table(config))
            results["configs"].append(config)
            results["goals"] = report.goals(results)
            if out is not None:
                report.write(results, out, tag)
    return results


def main(argv: list[str] | None = None, default_out: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradex bench", description=__doc__)
    add_arguments(parser)
    if default_out is not None:
        parser.set_defaults(out=default_out)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    device = _device(args.device)
    settings = _settings(args, device)
    # Now, not after the whole run: the folder is writable and holds no foreign file at a name.
    report.output_folder(args.out, measure.device_name(device), args.tag)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    results = run(settings, device, command, args.out, args.tag)
    paths = report.write(results, args.out, args.tag)
    print(f"gradex bench: wrote {', '.join(str(p) for p in paths)}")
    if settings["smoke_test"]:
        print(f"gradex bench: {report.SMOKE_TEST_NOTE}")
    trouble = [
        f"{c['model']} b{c['batch']} {key}"
        for c in results["configs"]
        for key in [*c["failed"], *(k for k, a in c["agreement"].items() if not a["agrees"])]
    ]
    if trouble:
        print(f"gradex bench: failed or disagreeing: {', '.join(trouble)}", file=sys.stderr)
        return 1
    return 0
