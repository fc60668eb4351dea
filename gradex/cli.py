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

import torch
from tqdm import tqdm

from .cams import METHOD_CHOICES
from .cli_paths import REPORT_NAME, ExplainOutput
from .devices import parse_device
from .explainer import Explainer
from .images import ImageError, demo_photos, expand_inputs, load_rgb
from .labels import resolve_target
from .models import EMBEDDED_MODEL, check_model_name, load_model
from .reference import PAPER_FORMULA

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
        help="GE as the paper computes it (global stage weighting, standardise-and-clip)",
    )
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


def _image_record(path: Path, panel: Path, probs: torch.Tensor, exp, i: int, names) -> dict:
    top = probs.topk(min(5, probs.numel()))  # a fine-tuned model may have fewer classes
    target = int(exp.target[i])
    return {
        "file": str(path),
        "panel": panel.name,
        "target": target,
        "target_name": names[target],
        "score": float(exp.score[i]),
        "top5": [
            {"class": int(c), "name": names[int(c)], "prob": float(p)}
            for p, c in zip(top.values, top.indices, strict=True)
        ],
    }


def explain_command(args: argparse.Namespace) -> int:
    from .viz import save_panel  # matplotlib only when pictures are made

    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    files = expand_inputs(args.inputs) + (demo_photos() if args.demo else [])
    if not files:
        raise ValueError("no images: give image files or folders, or --demo")
    device = parse_device(args.device)
    check_model_name(args.model)
    output = ExplainOutput(args.out, files)  # before any work: the folder is made and writable
    started = time.perf_counter()
    bundle = load_model(args.model, args.weights, args.labels)
    target = resolve_target(args.target, bundle.class_names)
    model = bundle.model.to(device)
    load_seconds = time.perf_counter() - started
    options = PAPER_FORMULA if args.paper else {}
    explainer = Explainer(model, method=args.method, gradual=not args.no_gradual, **options)
    method_title = METHOD_TITLES[explainer.method_name]

    results, skipped = [], []
    explain_seconds, layers = 0.0, None
    progress = tqdm(total=len(files), unit="img", disable=len(files) < _PROGRESS_FROM)
    for first in range(0, len(files), args.batch_size):
        chunk = files[first : first + args.batch_size]
        paths, tensors = _read_images(chunk, bundle, skipped)
        progress.update(len(chunk))
        if not tensors:
            continue
        x = torch.stack(tensors).to(device)
        tick = time.perf_counter()
        exp = explainer(x, target=target)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        explain_seconds += time.perf_counter() - tick
        layers = explainer.layers_for(x)
        probs = exp.logits.float().softmax(dim=1).cpu()
        for i, path in enumerate(paths):
            panel = output.panel_path(path)
            record = _image_record(path, panel, probs[i], exp, i, bundle.class_names)
            target = record["target"]
            title = f"{record['target_name']} (class {target}), p = {float(probs[i, target]):.2f}"
            png = io.BytesIO()
            save_panel(
                png,
                bundle.to_display(x[i]),
                exp.cam[i],
                None if args.no_gradual else exp.saliency[i],
                title,
                method_title,
            )
            output.write_panel(panel, png.getvalue())
            tqdm.write(f"{path.name}: {title}")
            results.append(record)
    progress.close()

    report = {
        "model": bundle.name,
        "weights": str(args.weights) if args.weights else None,
        "labels": str(args.labels) if args.labels else None,
        "method": explainer.method_name,
        "gradual": not args.no_gradual,
        "device": str(device),
        "target_layer": str(layers.target.ref) if layers else None,
        "stages": [str(s.ref) for s in layers.stages] if layers and not args.no_gradual else [],
        "stage_weighting": explainer.stage_weighting,
        "normalize": explainer.normalize,
        "images": results,
        "skipped": skipped,
        "timings": {
            "load_model_s": round(load_seconds, 4),
            "explain_s": round(explain_seconds, 4),
            "ms_per_image": round(1000 * explain_seconds / max(len(results), 1), 2),
        },
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
