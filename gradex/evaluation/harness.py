"""The ``gradex evaluate`` command: run the testbeds, measure GE's cost, write the report.

gradex evaluate --quick --out /tmp/eval          # CI: one seed, small samples, 2 methods
gradex evaluate --out docs/evaluation            # the committed report (all shipped seeds)

Testbed B (synthetic shapes, exact masks) runs for every shipped seed; testbed A (photo grids for
the embedded EfficientNet-Lite0) runs where scikit-image's sample photos are installed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from pathlib import Path

import torch

from ..benchmark import measure
from ..cams import METHOD_CHOICES, get_method
from ..cli_paths import prepare_out_file, write_atomically
from ..explainer import Explainer
from ..synthetic import available_seeds, load_model, make_images
from . import report
from .photo_testbed import evaluate_photos
from .photos import photo_paths
from .synthetic_testbed import evaluate_seed

# HiResCAM and XGrad-CAM equal Grad-CAM exactly on a global-average-pool + linear head (both
# testbeds' models; the report checks it), so they are not run by default.
DEFAULT_METHODS = ["gradcam", "gradcam++", "layercam", "excitation", "contrastive-excitation"]
FULL = {
    "images": 1000,
    "grids": 250,
    "faithfulness_images": 32,
    "sanity_images": 16,
    "photo_grids": 24,
    "photo_crops": 16,
    "photo_faithfulness": 5,
    "photo_singles": 48,
}
QUICK = {
    "images": 100,
    "grids": 25,
    "faithfulness_images": 4,
    "sanity_images": 8,
    "photo_grids": 2,
    "photo_crops": 4,
    "photo_faithfulness": 0,
    "photo_singles": 8,
}
QUICK_METHODS = ["gradcam", "contrastive-excitation"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="one seed, small samples (for CI)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: every shipped seed")
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_CHOICES, help=f"default: {DEFAULT_METHODS}"
    )
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
    parser.add_argument("--photo-grids", type=int, help=f"testbed A grids ({FULL['photo_grids']})")
    parser.add_argument(
        "--photo-crops", type=int, help=f"kept crops per photo ({FULL['photo_crops']})"
    )
    parser.add_argument(
        "--photo-faithfulness",
        type=int,
        help=f"crops for deletion/insertion on testbed A ({FULL['photo_faithfulness']}; 0: none)",
    )
    parser.add_argument(
        "--photo-singles",
        type=int,
        help=f"crops for Average Drop and edges on testbed A ({FULL['photo_singles']})",
    )
    parser.add_argument("--no-photos", action="store_true", help="skip testbed A")
    parser.add_argument("--out", type=Path, default=Path("gradex_evaluation"))
    parser.add_argument(
        "--raw",
        type=Path,
        help="also save every per-image value (torch.save), to re-render the report from: "
        "gradex.evaluation.report.write(torch.load(RAW, weights_only=False), OUT)",
    )


def _settings(args: argparse.Namespace) -> dict:
    settings = dict(QUICK if args.quick else FULL)
    for key in settings:
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key == "photo_faithfulness" else 1):
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
    methods = args.methods or (QUICK_METHODS if args.quick else DEFAULT_METHODS)
    settings["methods"] = [get_method(name)[0] for name in methods]
    settings["photos"] = not args.no_photos
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


def _runs_photos(settings: dict) -> bool:
    """Whether testbed A runs (asked for, and its photos installed)."""
    return settings["photos"] and bool(photo_paths())


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
    results["photos"] = None
    if _runs_photos(settings):
        results["photos"] = evaluate_photos(
            settings["photo_grids"],
            settings["photo_crops"],
            settings["photo_faithfulness"],
            settings["photo_singles"],
            tuple(settings["methods"]),
            progress,
        )
    elif settings["photos"]:
        progress("testbed A skipped: scikit-image's sample photos are not installed")
    results["equivalences"] = equivalences(settings["seeds"][0])
    results["cost"] = measure_cost(settings["seeds"][0])
    return results


def equivalences(seed: int) -> dict:
    """Largest difference between coarse maps that a global-average-pool + linear head (the
    synthetic CNN's, as EfficientNet-Lite0's) makes the same, each scaled to a maximum of 1:
    HiResCAM and XGrad-CAM against Grad-CAM (the gradient is the same at every position), and
    excitation backprop against LayerCAM (both weigh each channel by its positive classifier
    weight; excitation divides by one number per image)."""
    model = load_model(seed)
    x = make_images(16, 50_000).images

    pairs = {"hirescam": "gradcam", "xgradcam": "gradcam", "excitation": "layercam"}
    coarse = {}
    for method in {*pairs, *pairs.values()}:
        cam = Explainer(model, method, gradual=False)(x).cam
        coarse[method] = cam / cam.amax(dim=(1, 2, 3), keepdim=True)
    return {
        f"{method} vs {other}": float((coarse[method] - coarse[other]).abs().max())
        for method, other in pairs.items()
    }


def _is_raw_file(path: Path) -> bool:
    """Whether ``path`` is a regular file that torch.save wrote (an earlier ``--raw``)."""
    if os.path.islink(path) or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _check_raw(raw: Path, report_files: list[Path]) -> None:
    prepare_out_file(raw, "--raw")
    if raw.resolve() in {path.resolve() for path in report_files}:
        raise ValueError(f"--raw {raw}: is one of the report's files in --out; give another name")
    if os.path.lexists(raw) and not _is_raw_file(raw):
        raise ValueError(
            f"--raw {raw}: holds a file that torch.save did not write (not an earlier --raw); "
            "gradex will not replace it"
        )


def run_from_args(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # Now, not after the whole run: the report's files and --raw can all be written.
    folder = report.output_folder(args.out, photos=_runs_photos(settings))
    if args.raw is not None:
        _check_raw(args.raw, list(folder.paths.values()))
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    results = run(settings)
    results["command"] = command
    if args.raw is not None:
        buffer = io.BytesIO()
        torch.save(results, buffer)
        write_atomically(args.raw, buffer.getvalue())
    paths = report.write(results, args.out)
    print(f"gradex evaluate: wrote {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradex evaluate", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
