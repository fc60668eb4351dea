"""``gradex explain-dataset SRC --out DST``: the command line of the dataset job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cams import METHOD_CHOICES
from ..models import EMBEDDED_MODEL
from .choices import DEFAULT_SHARD_SIZE, ENGINES, ERRORS_DIR, MAP_DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        help="a folder of images (any depth; ImageFolder's class folders become the label "
        "column), a text file of paths, or a Parquet/CSV table with a path column (and optional "
        "id, target, label)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the Parquet dataset to write")
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"{EMBEDDED_MODEL} (embedded), a torchvision name, or timm:NAME",
    )
    parser.add_argument("--weights", help="local weights file for a torchvision or timm model")
    parser.add_argument(
        "--labels",
        help="class names, one a line (or a JSON list or {id: name}): target_name and targets",
    )
    parser.add_argument("--method", default="gradcam", choices=METHOD_CHOICES)
    parser.add_argument("--no-gradual", action="store_true", help="plain upsampled CAM, no GE")
    parser.add_argument(
        "--paper",
        action="store_true",
        help="GE as the original code computes it, per image: its layers (every max pool and "
        "strided conv, Grad-CAM at the last conv), global stage weighting, standardise-and-clip",
    )
    parser.add_argument(
        "--map-size",
        type=int,
        help="side of the stored maps in pixels (default: the model's input)",
    )
    parser.add_argument("--map-dtype", default="uint8", choices=MAP_DTYPES)
    parser.add_argument("--top-k", type=int, default=5, help="classes kept per image")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="images per Parquet file: the unit a rerun resumes from",
    )
    parser.add_argument("--batch-size", type=int, help="default: 64 on a GPU, 8 on the CPU")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--workers", type=int, help="decoding processes of the local engine (default: by device)"
    )
    parser.add_argument(
        "--overlays",
        type=Path,
        help="also write a PNG of each GE map over its image into this folder",
    )
    parser.add_argument(
        "--engine",
        default="local",
        choices=ENGINES,
        help="local: embedded, nothing to start; ray: a Ray Data pipeline",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join (e.g. ray://head:10001, auto); default: a "
        "local one started for the job",
    )
    parser.add_argument(
        "--actors", type=int, help="Ray explainer actors (default: one per GPU, or one)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        import pyarrow  # noqa: F401 - only to say what to install when it is missing
    except ImportError as error:
        raise RuntimeError(
            f"gradex explain-dataset needs the dataset extra: pip install 'gradex[dataset]' "
            f"({error})"
        ) from error
    from .run import explain_dataset

    summary = explain_dataset(
        args.src,
        args.out,
        model=args.model,
        weights=args.weights,
        labels=args.labels,
        method=args.method,
        gradual=not args.no_gradual,
        paper=args.paper,
        map_size=args.map_size,
        map_dtype=args.map_dtype,
        top_k=args.top_k,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        overlays=args.overlays,
        engine=args.engine,
        address=args.address,
        actors=args.actors,
        progress=sys.stderr.isatty(),  # a bar on a terminal, not in logs
    )
    rate = summary.explained / summary.seconds if summary.seconds else 0.0
    done = (
        f"{summary.shards_skipped} shard(s) were already done; " if summary.shards_skipped else ""
    )
    print(
        f"gradex: {done}explained {summary.explained} image(s) into {args.out}/ "
        f"in {summary.seconds:.1f} s ({rate:.1f} img/s)"
    )
    if summary.errors:
        print(
            f"gradex: {summary.errors} file(s) could not be explained: {args.out}/{ERRORS_DIR}/",
            file=sys.stderr,
        )
    return 0
