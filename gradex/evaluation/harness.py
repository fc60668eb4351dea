"""The ``gradex evaluate`` command: run the testbeds, measure GE's cost, write the report.

gradex evaluate --quick --out /tmp/eval          # CI: one seed, small samples (~1 min)
gradex evaluate --out docs/evaluation            # the committed report (all shipped seeds)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..benchmark import measure
from ..cams import METHODS
from ..explainer import Explainer
from ..synthetic import available_seeds, load_model, make_images
from . import report
from .synthetic_testbed import evaluate_seed

FULL = {"images": 1000, "grids": 250, "faithfulness_images": 32, "sanity_images": 16}
QUICK = {"images": 100, "grids": 25, "faithfulness_images": 4, "sanity_images": 8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="one seed, small samples (for CI)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: every shipped seed")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--images", type=int, help=f"test images per seed ({FULL['images']})")
    parser.add_argument("--grids", type=int, help=f"2x2 grids per seed ({FULL['grids']})")
    parser.add_argument(
        "--faithfulness-images",
        type=int,
        help=f"images for deletion/insertion ({FULL['faithfulness_images']})",
    )
    parser.add_argument(
        "--sanity-images",
        type=int,
        help=f"images for the randomisation check ({FULL['sanity_images']})",
    )
    parser.add_argument("--out", type=Path, default=Path("gradex_evaluation"))


def _settings(args: argparse.Namespace) -> dict:
    settings = dict(QUICK if args.quick else FULL)
    for key in settings:
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be at least 1")
            settings[key] = value
    seeds = args.seeds or (available_seeds()[:1] if args.quick else available_seeds())
    missing = sorted(set(seeds) - set(available_seeds()))
    if missing or not seeds:
        raise ValueError(
            f"--seeds: no shipped weights for {missing or 'any seed'} (have {available_seeds()}); "
            "train with: python -m gradex.synthetic.train --seed N"
        )
    settings["seeds"] = seeds
    settings["methods"] = args.methods
    return settings


def measure_cost(seed: int, batch: int = 64, reps: int = 10) -> dict:
    """Added time and memory of GE over the coarse map (same method, same batch), on the CPU."""
    model = load_model(seed)
    x = make_images(batch, 50_000).images
    coarse, gradual = Explainer(model, gradual=False), Explainer(model)
    calls = {"coarse": lambda: coarse(x), "ge": lambda: gradual(x)}
    for call in calls.values():
        call()
    device = torch.device("cpu")
    samples = measure.time_round_robin(calls, device, reps, budget_s=30.0, warmup=2)
    timing = {name: measure.summarise(values, batch) for name, values in samples.items()}
    memory = {name: measure.peak_memory_mib(device, call) for name, call in calls.items()}
    return {"batch": batch, "timing": timing, "peak_mib": memory, "cpu": measure.cpu_name()}


def run(settings: dict, progress=print) -> dict:
    results = {"settings": settings, "machine": measure.machine(torch.device("cpu")), "seeds": []}
    for seed in settings["seeds"]:
        results["seeds"].append(
            evaluate_seed(
                seed,
                settings["images"],
                settings["grids"],
                settings["faithfulness_images"],
                settings["sanity_images"],
                tuple(settings["methods"]),
                progress,
            )
        )
    results["cost"] = measure_cost(settings["seeds"][0])
    return results


def run_from_args(args: argparse.Namespace) -> int:
    settings = _settings(args)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    results = run(settings)
    results["command"] = command
    paths = report.write(results, args.out)
    print(f"gradex evaluate: wrote {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradex evaluate", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
