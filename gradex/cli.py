"""The command line: ``gradex explain IMAGE_OR_DIR... --out DIR``, ``gradex explain --demo``,
``gradex explain-dataset SRC --out DST`` (a whole dataset into Parquet, resumable, locally or on
Ray), ``gradex serve`` (a model server speaking KServe's V1 and V2 protocols), ``gradex bench`` (the
end-to-end benchmark against no-grad inference and the peers) and ``gradex evaluate`` (how good
the maps are: the evaluation protocol's report)."""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .cams import METHOD_CHOICES
from .cli_paths import REPORT_NAME, ExplainOutput
from .devices import parse_device
from .explainer import PAPER_OPTIONS, Explainer
from .images import ImageError, demo_photos, find_images, load_rgb
from .labels import resolve_target
from .models import EMBEDDED_MODEL, check_model_name, load_model
from .ops import resolve_backend
from .overlays import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_DISPLAY, DISPLAY_CHOICES
from .viz import panel_png

METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "excitation": "Excitation backprop",
    "contrastive excitation": "Contrastive excitation backprop",
}
_PROGRESS_FROM = 4  # images; fewer finish before a progress bar would say anything useful


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradex", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser(
        "explain", help="explain images: a PNG panel per image and results.json"
    )
    explain.add_argument("inputs", nargs="*", help="image files or folders of images")
    explain.add_argument("--demo", action="store_true", help="explain photos shipped in packages")
    explain.add_argument(
        "--out", default=Path("gradex_out"), type=Path, help="folder for panels and JSON"
    )
    # The model and what it is asked: which network, its weights, its class names, the class.
    explain.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"{EMBEDDED_MODEL} (embedded), a torchvision name, or timm:NAME for a timm model",
    )
    explain.add_argument(
        "--weights",
        help="local weights file for a torchvision or timm model: a state dict or a training "
        "checkpoint holding one (torch.save or .safetensors); the class count is read from it",
    )
    explain.add_argument(
        "--labels",
        type=Path,
        help="class names, one a line in class-id order (or a JSON list, or {id: name})",
    )
    explain.add_argument(
        "--target", help="class to explain: an id or a name, any case (default: top-1)"
    )
    explain.add_argument("--method", default="gradcam", choices=METHOD_CHOICES)
    explain.add_argument("--batch-size", type=int, default=8)
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    explain.add_argument("--no-gradual", action="store_true", help="plain upsampled CAM, no GE")
    explain.add_argument(
        "--paper",
        action="store_true",
        help="GE as the original code computes it, per image: its layers (every max pool and "
        "strided conv, Grad-CAM at the last conv), global stage weighting, standardise-and-clip",
    )
    _add_output_arguments(explain)
    dataset = commands.add_parser(
        "explain-dataset",
        help="explain a whole dataset into Parquet (resumable; locally or on a Ray cluster)",
    )
    from .dataset.command import add_arguments as add_dataset_arguments

    add_dataset_arguments(dataset)
    bench = commands.add_parser(
        "bench", help="time explanations against no-grad inference and the peers"
    )
    from .benchmark.harness import add_arguments

    add_arguments(bench)
    serve = commands.add_parser(
        "serve",
        help="serve explanations over HTTP (KServe V1 and V2 protocols, a page at /)",
    )
    from .serve.options import add_arguments as add_serve_arguments

    add_serve_arguments(serve)
    evaluate = commands.add_parser(
        "evaluate", help="score every method with and without GE: a markdown report with figures"
    )
    from .evaluation.harness import add_arguments as add_evaluate_arguments

    add_evaluate_arguments(evaluate)
    return parser


def _add_output_arguments(explain: argparse.ArgumentParser) -> None:
    """What ``gradex explain`` reads from folders, writes per image and how its pictures look."""
    explain.add_argument(
        "--recursive",
        action="store_true",
        help="also explain the images in the folders' subfolders, at any depth",
    )
    explain.add_argument(
        "--no-panels", action="store_true", help="write no PNG panels (results.json only)"
    )
    explain.add_argument(
        "--save-maps",
        action="store_true",
        help="also write <stem>.gradex.npz per image: the float32 maps as computed "
        "(saliency at input size, cam at the target layer's)",
    )
    explain.add_argument(
        "--top-k",
        type=int,
        help="classes listed per image in results.json (default: 5, or all of a smaller model's)",
    )
    explain.add_argument(
        "--colormap", default=DEFAULT_COLORMAP, choices=COLORMAPS, help="the overlays' colours"
    )
    explain.add_argument(
        "--display",
        default=DEFAULT_DISPLAY,
        choices=DISPLAY_CHOICES,
        help="how the overlays stretch a map for the eye (the saved maps are never stretched): "
        "p99 clips at its 99th percentile, gamma takes the square root, minmax shows it as is",
    )


def _read_images(paths: list[Path], bundle, skipped: list[dict]):
    """(paths, preprocessed tensors) of the readable images; the others go to ``skipped``."""
    kept, tensors = [], []
    for path in paths:
        try:
            tensors.append(bundle.preprocess(load_rgb(path)))
            kept.append(path)
        except ImageError as error:
            tqdm.write(f"gradex: skipped {error}", file=sys.stderr)
            skipped.append({"file": str(path), "reason": str(error)})
    return kept, tensors


def _image_record(path: Path, outputs: dict, probs: torch.Tensor, exp, i: int, names, k: int):
    top = probs.topk(k)
    target = int(exp.target[i])
    return {
        "file": str(path),
        **{kind: where.name for kind, where in outputs.items()},
        "target": target,
        "target_name": names[target],
        "score": float(exp.score[i]),
        "top": [
            {"class": int(c), "name": names[int(c)], "prob": float(p)}
            for p, c in zip(top.values, top.indices, strict=True)
        ],
    }


def _maps_npz(exp, i: int) -> bytes:
    """The maps of image ``i`` as computed, float32, in an NPZ: ``saliency`` (H,W) at input
    size, ``cam`` (h,w) at the target layer's, ``target`` and ``score``."""
    buffer = io.BytesIO()
    maps = {"cam": exp.cam[i, 0].float().cpu().numpy()}
    if exp.saliency is not None:
        maps["saliency"] = exp.saliency[i, 0].float().cpu().numpy()
    np.savez(buffer, **maps, target=np.int64(exp.target[i]), score=np.float32(exp.score[i]))
    return buffer.getvalue()


def _check_output_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError("--top-k must be at least 1")


def _timings(load_s: float, batches: list[tuple[int, float]], panels_s: float, count: int):
    """The first batch (the model's and the kernels' warm-up: allocations, autotuning, lazy
    initialisation) apart from the steady state; ms_per_image is the steady state, None when
    every image was in the first batch."""
    first_n, first_s = batches[0] if batches else (0, 0.0)
    steady_n = sum(n for n, _ in batches[1:])
    steady_s = sum(seconds for _, seconds in batches[1:])
    return {
        "load_model_s": round(load_s, 4),
        "explain_s": round(first_s + steady_s, 4),
        "warmup_batch_s": round(first_s, 4),
        "warmup_batch_images": first_n,
        "ms_per_image": round(1000 * steady_s / steady_n, 2) if steady_n else None,
        "steady_images": steady_n,
        "outputs_s": round(panels_s, 4),
        "outputs_ms_per_image": round(1000 * panels_s / count, 2) if count else None,
    }


def explain_command(args: argparse.Namespace) -> int:
    _check_output_options(args)
    found = find_images(args.inputs, recursive=args.recursive)
    files = found.files + (demo_photos() if args.demo else [])
    if found.skipped_folders:
        print(
            f"gradex: {found.skipped_folders} subfolder(s) not explained: add --recursive to "
            "explain their images too",
            file=sys.stderr,
        )
    if not files:
        raise ValueError("no images: give image files or folders, or --demo")
    device = parse_device(args.device)
    check_model_name(args.model)
    output = ExplainOutput(args.out, files)  # before any work: the folder is made and writable
    kinds = ("panel",) * (not args.no_panels) + ("maps",) * args.save_maps
    started = time.perf_counter()
    bundle = load_model(args.model, args.weights, args.labels)
    target = resolve_target(args.target, bundle.class_names)
    model = bundle.model.to(device)
    load_seconds = time.perf_counter() - started
    classes = len(bundle.class_names)
    if args.top_k is not None and args.top_k > classes:
        raise ValueError(f"--top-k {args.top_k}: the model has only {classes} classes")
    top_k = min(5, classes) if args.top_k is None else args.top_k
    options = PAPER_OPTIONS if args.paper else {}
    explainer = Explainer(model, method=args.method, gradual=not args.no_gradual, **options)
    method_title = METHOD_TITLES[explainer.method_name]
    picture = {"colormap": args.colormap, "display": args.display}

    results, skipped = [], []
    batches: list[tuple[int, float]] = []  # (images, seconds) per explained batch
    outputs_seconds, layers = 0.0, None
    progress = tqdm(total=len(files), unit="img", disable=len(files) < _PROGRESS_FROM)
    for first in range(0, len(files), args.batch_size):
        chunk = files[first : first + args.batch_size]
        paths, tensors = _read_images(chunk, bundle, skipped)
        if not tensors:
            progress.update(len(chunk))
            continue
        x = torch.stack(tensors).to(device)
        tick = time.perf_counter()
        exp = explainer(x, target=target)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        batches.append((len(paths), time.perf_counter() - tick))
        layers = explainer.layers_for(x)
        probs = exp.logits.float().softmax(dim=1).cpu()
        tick = time.perf_counter()
        for i, path in enumerate(paths):
            outputs = output.paths_for(path, kinds)
            record = _image_record(path, outputs, probs[i], exp, i, bundle.class_names, top_k)
            explained = record["target"]  # not `target`: that is --target, for every batch
            title = (
                f"{record['target_name']} (class {explained}), p = {float(probs[i, explained]):.2f}"
            )
            if "panel" in outputs:
                png = panel_png(
                    bundle.to_display(x[i]),
                    exp.cam[i],
                    None if args.no_gradual else exp.saliency[i],
                    title,
                    method_title,
                    **picture,
                )
                output.write_panel(outputs["panel"], png)
            if "maps" in outputs:
                output.write_maps(outputs["maps"], _maps_npz(exp, i))
            tqdm.write(f"{path.name}: {title}")
            results.append(record)
        outputs_seconds += time.perf_counter() - tick
        progress.update(len(chunk))  # after the batch is explained and written
    progress.close()

    removed = output.remove_stale()
    if removed:
        print(
            f"gradex: removed {len(removed)} panel or maps file(s) of the previous run in "
            f"{args.out}/ that this run did not write again",
            file=sys.stderr,
        )
    report = {
        "model": bundle.name,
        "weights": str(args.weights) if args.weights else None,
        "labels": str(args.labels) if args.labels else None,
        "method": explainer.method_name,
        "gradual": not args.no_gradual,
        "device": str(device),
        "backend": resolve_backend(explainer.backend, device).name,
        "dtype": str(explainer.amp_dtype or next(model.parameters()).dtype).replace("torch.", ""),
        "target_layer": str(layers.target.ref) if layers else None,
        "stages": [str(s.ref) for s in layers.stages] if layers and not args.no_gradual else [],
        "stage_weighting": explainer.stage_weighting,
        "normalize": explainer.normalize,
        "top_k": top_k,
        "display": {"colormap": args.colormap, "scaling": args.display},
        "images": results,
        "skipped": skipped,
        "timings": _timings(load_seconds, batches, outputs_seconds, len(results)),
    }
    output.write_report(report)
    print(f"gradex: explained {len(results)} image(s) into {args.out}/ ({REPORT_NAME})")
    if skipped:
        print(f"gradex: {len(skipped)} file(s) skipped", file=sys.stderr)
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    """The message on one line: the first of a multi-line one (torch's often run on for pages)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":
            from .benchmark.harness import run_from_args

            return run_from_args(args)
        if args.command == "serve":
            from .serve import run_from_args as serve_from_args

            return serve_from_args(args)
        if args.command == "explain-dataset":
            from .dataset.command import run_from_args as dataset_from_args

            return dataset_from_args(args)
        if args.command == "evaluate":
            from .evaluation.harness import run_from_args as evaluate_from_args

            return evaluate_from_args(args)
        return explain_command(args)
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"gradex: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
