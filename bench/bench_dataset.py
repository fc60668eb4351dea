"""Throughput and memory of `gradex explain-dataset`, against the explainer alone and a peer.

    python bench/bench_dataset.py            # the full run (~20 min on 2 busy cores)
    python bench/bench_dataset.py --quick    # smoke run (~3 min), results to a temp folder

Images: crops of the demo photos and synthetic images (gradex.dataset.samples, JPEG/PNG/WebP),
written once to a temp folder. Rows, each measured in this one run on this machine:

1. **Hiding decoding.** The explainer alone (``BatchExplainer``, the engines' own step, maps
   encoded) on tensors decoded beforehand, against the local engine on the same files. Each is
   run --reps times, alternating, each run in a fresh process, so a drift in the machine's speed
   falls on both; the ratio is of the medians. Steady-state rates (after the first batch:
   model load and warm-up excluded) and whole-job rates (load included) are both given.
2. **Ray's overhead.** The Ray engine on a local Ray cluster (started before the timing) against
   the local engine, same files, same batch size, each in a fresh process.
3. **Memory.** The local engine over --images images as a subprocess (shards of 250), its
   process tree's PSS sampled every 0.5 s with the images committed so far; the growth from
   image 1,000 to the last along the line fitted through the samples.
4. **The anchor.** pytorch-grad-cam's documented per-image loop (``GradCAM(model,
   target_layers)`` once, then per image: open, preprocess, ``cam(input_tensor=x[None])``, a
   numpy map out) over the first --peer-images of the same images at the same target layer, its
   PSS sampled the same way.

Writes bench/results/dataset_<machine>.{json,md} (--quick: a temp folder unless --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from processes import process_tree

RESULTS = Path(__file__).parent / "results"
GOALS = {
    "local_vs_explainer": 0.9,  # local engine >= 0.9x the explainer alone on decoded tensors
    "memory_growth_pct": 5.0,  # from image 1,000 to the last
    "ray_vs_local": 0.7,  # Ray engine >= 0.7x the local engine on this machine
}
MEMORY_SHARD = 250


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


# ---------------------------------------------------------------------------------------------
# process memory, from /proc (the job's decoding workers are its children)


def pss_mib(pid: int) -> float | None:
    """Proportional set size of the process tree, MiB: a page shared by n processes counts 1/n
    in each, so a forked decoding worker's copy-on-write pages are not counted twice (summed RSS
    would count them twice, and a job with workers would look almost twice its real size)."""
    total, found = 0, False
    for current in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    found = True
    return total / 1024 if found else None


def sample_memory(process: subprocess.Popen, done_count, every: float = 0.5) -> list[dict]:
    """[{"t", "images", "pss_mib"}] until the process ends; ``done_count()`` says how many
    images it has finished."""
    samples, start = [], time.perf_counter()
    while process.poll() is None:
        pss = pss_mib(process.pid)
        if pss is not None:
            samples.append(
                {
                    "t": round(time.perf_counter() - start, 2),
                    "images": done_count(),
                    "pss_mib": round(pss, 1),
                }
            )
        time.sleep(every)
    return samples


def growth(samples: list[dict], start: int) -> dict:
    """Memory from image ``start`` to the last image, along the least-squares line through the
    samples taken while the job ran: samples oscillate by tens of MiB with the prefetched batches
    and the shard being assembled, and the line is what grows. Samples after the last image are
    left out (the job is exiting, its workers gone)."""
    total = max(s["images"] for s in samples)
    running = [s for s in samples if start <= s["images"] < total]
    if len(running) < 2:
        return {"from_images": start, "pct": None}
    x = np.array([s["images"] for s in running], dtype=float)
    y = np.array([s["pss_mib"] for s in running])
    slope, intercept = np.polyfit(x, y, 1)
    at_start, at_end = slope * start + intercept, slope * total + intercept
    return {
        "from_images": start,
        "to_images": total,
        "samples": len(running),
        "from_mib": round(float(at_start), 1),
        "to_mib": round(float(at_end), 1),
        "min_mib": float(y.min()),
        "max_mib": float(y.max()),
        "pct": round(float(100 * (at_end - at_start) / at_start), 2),
    }


# ---------------------------------------------------------------------------------------------
# the rows


def explainer_alone(paths: list[str], batch: int) -> dict:
    """The engines' explanation step on tensors decoded before the clock starts."""
    from gradex.dataset.decoding import decode
    from gradex.dataset.explaining import BatchExplainer, ExplainOptions
    from gradex.models import preprocess_for

    options = ExplainOptions("efficientnet_lite0", None, "gradcam", True, False, None, "uint8", 5)
    preprocess = preprocess_for(options.model)
    images = [decode(p, preprocess)[0] for p in paths]
    explainer = BatchExplainer(options, torch.device("cpu"))
    batches = [torch.stack(images[i : i + batch]) for i in range(0, len(images), batch)]
    explainer(batches[0], [None] * len(batches[0]))  # warm-up, as the engine's first batch
    start = time.perf_counter()
    for x in batches[1:]:
        explainer(x, [None] * len(x))
    seconds = time.perf_counter() - start
    return {
        "images": len(images) - len(batches[0]),
        "seconds": round(seconds, 3),
        "steady_img_s": round((len(images) - len(batches[0])) / seconds, 2),
    }


def engine_run(listing: Path, out: Path, batch: int, engine: str, workers=None) -> dict:
    from gradex.dataset import explain_dataset

    shutil.rmtree(out, ignore_errors=True)
    s = explain_dataset(
        listing, out, batch_size=batch, device="cpu", engine=engine, workers=workers, progress=False
    )
    shutil.rmtree(out, ignore_errors=True)
    done = s.explained + s.errors
    return {
        "images": done,
        "seconds": round(s.seconds, 3),
        "whole_job_img_s": round(done / s.seconds, 2),
        "first_batch_s": round(s.first_batch_seconds, 3),
        "steady_img_s": round(
            (done - s.first_batch_images) / (s.seconds - s.first_batch_seconds), 2
        ),
    }


def row_in_subprocess(row: str, listing: Path, work: Path, batch: int) -> dict:
    """One row in a fresh process: rows run in one process slowed each other down (the later
    ones by up to a third, whichever came first), which a user's separate runs never see."""
    command = [
        sys.executable,
        __file__,
        "--row",
        row,
        "--listing",
        str(listing),
        "--work",
        str(work),
        "--batch-size",
        str(batch),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"row {row} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_row(args) -> int:
    """--row: one measurement, its JSON on the last line of stdout."""
    paths = [p for p in args.listing.read_text().splitlines() if p]
    if args.row == "alone":
        result = explainer_alone(paths, args.batch_size)
    elif args.row == "ray":
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)  # started before the clock
        try:
            result = engine_run(args.listing, args.work / "out", args.batch_size, "ray")
        finally:
            ray.shutdown()
    else:
        result = engine_run(args.listing, args.work / "out", args.batch_size, "local")
    print(json.dumps(result))
    return 0


def memory_run(src: Path, out: Path, batch: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "gradex",
        "explain-dataset",
        str(src),
        "--out",
        str(out),
        "--shard-size",
        str(MEMORY_SHARD),
        "--batch-size",
        str(batch),
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    samples = sample_memory(process, lambda: MEMORY_SHARD * len(list(out.glob("part-*.parquet"))))
    output = process.stdout.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"the memory run failed: {output[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return {"command": " ".join(command[1:]), "samples": samples, "summary": output.strip()}


PEER_LOOP = r"""
import sys, time, torch
from pytorch_grad_cam import GradCAM
from gradex.explainer import Explainer
from gradex.images import load_rgb
from gradex.models import load_model
paths = open(sys.argv[1]).read().split("\n")
paths = [p for p in paths if p]
bundle = load_model()
ref = Explainer(bundle.model).layers_for(torch.randn(1, 3, 224, 224)).target.ref
layer = bundle.model.get_submodule(ref.name)
start = time.perf_counter()
with GradCAM(model=bundle.model, target_layers=[layer]) as cam:
    for i, path in enumerate(paths):
        x = bundle.preprocess(load_rgb(path))
        grayscale = cam(input_tensor=x[None], targets=None)[0]
        print(i + 1, flush=True)
print("seconds", time.perf_counter() - start, flush=True)
"""


def peer_run(listing: Path) -> dict:
    """pytorch-grad-cam's loop in a process of its own, PSS sampled as the engine's."""
    process = subprocess.Popen(
        [sys.executable, "-c", PEER_LOOP, str(listing)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    done = [0]
    seconds = [None]

    def read():
        for line in process.stdout:
            if line.startswith("seconds"):
                seconds[0] = float(line.split()[1])
            else:
                done[0] = int(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = sample_memory(process, lambda: done[0])
    reader.join()
    if process.returncode != 0 or seconds[0] is None:
        raise RuntimeError("the pytorch-grad-cam loop failed")
    from importlib import metadata

    return {
        "images": done[0],
        "seconds": round(seconds[0], 2),
        "img_s": round(done[0] / seconds[0], 2),
        "samples": samples,
        "version": metadata.version("grad-cam"),
    }


# ---------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# gradex explain-dataset on {m['device']}",
        "",
        f"{m['cpu']}, {m['threads']} torch threads; torch {m['versions'].get('torch')}, "
        f"ray {report['versions'].get('ray')}, pyarrow {report['versions'].get('pyarrow')}. "
        f"EfficientNet-Lite0, Grad-CAM + GE, uint8 maps at 224², batch {report['batch']}. "
        f"Command: `{report['command']}`.",
        "",
        "| row | images | steady img/s | whole job img/s | ratio (steady) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['name']} | {row['images']} | {row['steady_img_s']} | "
            f"{row.get('whole_job_img_s', '-')} | {row.get('ratio', '-')} |"
        )
    lines += [
        "",
        "| memory: PSS of the process tree | images | MiB at the first (fitted) | MiB at the "
        "last (fitted) | range of the samples (MiB) | growth |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, g in report["memory"].items():
        lines.append(
            f"| {name} | {g.get('from_images')}–{g.get('to_images')} | {g.get('from_mib')} | "
            f"{g.get('to_mib')} | {g.get('min_mib')}–{g.get('max_mib')} | {g['pct']}% |"
        )
    lines += ["", "| goal | value | met |", "| --- | ---: | --- |"]
    for goal in report["goals"]:
        lines.append(f"| {goal['text']} | {goal['value']} | {'yes' if goal['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    parser.add_argument("--images", type=int, help="images for the memory rows (default 5000)")
    parser.add_argument("--throughput-images", type=int, help="images per throughput run")
    parser.add_argument("--reps", type=int, help="alternating runs of rows 1 (default 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--peer-images",
        type=int,
        help="images for pytorch-grad-cam's loop (default 2000; it is slow)",
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", type=Path, help="default bench/results/ (--quick: a temp folder)")
    parser.add_argument("--row", choices=("alone", "local", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--listing", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        return run_row(args)
    images = args.images or (600 if args.quick else 5000)
    throughput = args.throughput_images or (96 if args.quick else 800)
    reps = args.reps or (1 if args.quick else 2)
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.quick else RESULTS)

    from importlib import metadata

    from gradex.benchmark.measure import machine
    from gradex.dataset.samples import write_sample_images

    work = Path(tempfile.mkdtemp(prefix="gradex-bench-dataset-"))
    try:
        src = work / "images"
        print(f"writing {images} sample images to {src}", flush=True)
        paths = [str(p) for p in write_sample_images(src, images, seed=1)]
        listing = work / "throughput.txt"
        listing.write_text("\n".join(paths[:throughput]) + "\n")
        peer_images = min(images, args.peer_images or (images if args.quick else 2000))
        peer_listing = work / "peer.txt"
        peer_listing.write_text("\n".join(paths[:peer_images]) + "\n")

        alone, local = [], []
        for rep in range(reps):
            print(f"rep {rep + 1}/{reps}: explainer alone, then the local engine", flush=True)
            alone.append(row_in_subprocess("alone", listing, work, args.batch_size))
            local.append(row_in_subprocess("local", listing, work, args.batch_size))
        alone_rate = round(statistics.median(r["steady_img_s"] for r in alone), 2)
        local_rate = round(statistics.median(r["steady_img_s"] for r in local), 2)
        rows = [
            {
                "name": "explainer alone, decoded tensors",
                "images": alone[0]["images"],
                "steady_img_s": alone_rate,
                "runs": alone,
            },
            {
                "name": "local engine (files)",
                "images": local[0]["images"],
                "steady_img_s": local_rate,
                "whole_job_img_s": round(statistics.median(r["whole_job_img_s"] for r in local), 2),
                "ratio": round(local_rate / alone_rate, 3),
                "runs": local,
            },
        ]
        if not args.skip_ray:
            print("the Ray engine (local cluster), then the local engine again", flush=True)
            distributed = row_in_subprocess("ray", listing, work, args.batch_size)
            local_again = row_in_subprocess("local", listing, work, args.batch_size)
            reference = statistics.median([local_rate, local_again["steady_img_s"]])
            rows.append(
                {
                    "name": "Ray engine, local cluster",
                    **distributed,
                    "ratio": round(distributed["steady_img_s"] / reference, 3),
                    "whole_job_ratio": round(
                        distributed["whole_job_img_s"] / local_again["whole_job_img_s"], 3
                    ),
                    "local_rerun": local_again,
                }
            )

        print(f"memory: the local engine over {images} images", flush=True)
        run = memory_run(src, work / "out", args.batch_size)
        from_image = min(1000, images // 5)  # --quick runs have fewer than 1,000
        memory = {"gradex explain-dataset (local)": growth(run["samples"], from_image)}
        peer = None
        if not args.skip_peer:
            print(f"memory: pytorch-grad-cam's loop over {peer_images} images", flush=True)
            peer = peer_run(peer_listing)
            memory[f"pytorch-grad-cam {peer['version']} loop"] = growth(peer["samples"], from_image)
            rows.append(
                {
                    "name": f"pytorch-grad-cam {peer['version']} per-image loop",
                    "images": peer["images"],
                    "steady_img_s": peer["img_s"],
                    "ratio": round(peer["img_s"] / local_rate, 3),
                }
            )

        local_growth = memory["gradex explain-dataset (local)"]["pct"]
        goals = [
            {
                "text": "local engine >= 0.9x the explainer alone (steady)",
                "value": rows[1]["ratio"],
                "met": rows[1]["ratio"] >= GOALS["local_vs_explainer"],
            },
            {
                "text": f"memory growth < 5% from image {from_image:,} to the last",
                "value": local_growth,
                "met": local_growth is not None and local_growth < GOALS["memory_growth_pct"],
            },
        ]
        if not args.skip_ray:
            ray_row = rows[2]
            goals.append(
                {
                    "text": "Ray engine >= 0.7x the local engine (steady)",
                    "value": ray_row["ratio"],
                    "met": ray_row["ratio"] >= GOALS["ray_vs_local"],
                }
            )
        report = {
            "command": "python bench/bench_dataset.py" + (" --quick" if args.quick else ""),
            "machine": machine(torch.device("cpu")),
            "versions": {
                name: metadata.version(name) for name in ("pyarrow", "ray") if _installed(name)
            },
            "batch": args.batch_size,
            "rows": rows,
            "memory": memory,
            "goals": goals,
            "memory_samples": {
                "gradex": run["samples"],
                "pytorch-grad-cam": peer["samples"] if peer else [],
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stem = "dataset_" + slug(report["machine"]["device"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out_dir / stem}.{{json,md}}")
    return 0


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
