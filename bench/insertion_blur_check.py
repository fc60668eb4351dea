"""Is GE's lower insertion AUC on the photo crops (testbed A) real, and is it only the sharpness of
its reveal order?

Deletion and insertion (RISE protocol, as ``gradex evaluate``) of Grad-CAM, Grad-CAM + GE
(gradex's defaults), GE with the paper's formula, and GE blurred (Gaussian σ 8 px) on the first
``--crops`` confident crops of testbed A, taken every photo's first crop first (``gradex
evaluate`` uses the first 5). Prints a markdown report (means with 95 % bootstrap intervals, each
row's paired difference from Grad-CAM, the per-photo means) and writes it to ``--out``.

python bench/insertion_blur_check.py [--crops 5] [--out bench/results/insertion_photos.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from gradex import Explainer, metrics
from gradex.benchmark.measure import machine
from gradex.evaluation.photo_testbed import CROPS_SEED, crops_in_photo_order
from gradex.evaluation.photos import make_crops
from gradex.evaluation.stats import (
    format_difference,
    format_mean,
    paired_difference,
    summary,
)
from gradex.models import load_lite0
from gradex.reference import PAPER_FORMULA

BLUR_SIGMA = 8.0
MODES = ("deletion", "insertion")


def explain_crops(model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    ge = Explainer(model)(x, target=y).saliency
    blur = int(2 * round(4 * BLUR_SIGMA) + 1)
    return {
        "Grad-CAM": Explainer(model, gradual=False)(x, target=y).saliency,
        "Grad-CAM + GE": ge,
        "GE, paper's formula": Explainer(model, **PAPER_FORMULA)(x, target=y).saliency,
        f"GE blurred, σ {BLUR_SIGMA:g} px": metrics.min_max(
            TF.gaussian_blur(ge, [blur, blur], [BLUR_SIGMA, BLUR_SIGMA])[:, 0]
        ),
    }


def report(aucs: dict, photos: torch.Tensor, names: list[str], header: list[str]) -> str:
    lines = header + [
        "",
        "| map | deletion AUC | insertion AUC | deletion − Grad-CAM | insertion − Grad-CAM |",
        "| --- | --- | --- | --- | --- |",
    ]
    base = aucs["Grad-CAM"]
    for name, auc in aucs.items():
        cells = [format_mean(summary(auc[mode])) for mode in MODES]
        if auc is base:
            cells += ["–"] * len(MODES)
        else:
            cells += [format_difference(paired_difference(auc[m], base[m])) for m in MODES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Insertion AUC per photo (mean over its crops):",
        "",
        "| photo | crops | " + " | ".join(aucs) + " |",
        "| --- | --- | " + " | ".join("---" for _ in aucs) + " |",
    ]
    for index in photos.unique().tolist():
        chosen = photos == index
        values = " | ".join(f"{auc['insertion'][chosen].mean():.3f}" for auc in aucs.values())
        lines.append(f"| {names[index]} | {int(chosen.sum())} | {values} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crops", type=int, default=5)
    parser.add_argument("--per-photo", type=int, default=16, help="as gradex evaluate")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    if args.crops < 2:
        parser.error(f"--crops must be at least 2 (intervals need pairs), got {args.crops}")
    started = time.perf_counter()
    model = load_lite0()
    crops = make_crops(model, args.per_photo, CROPS_SEED)
    order = crops_in_photo_order(crops)[: args.crops]
    x, y = crops.images[order], crops.labels[order]
    aucs = {}
    for name, saliency in explain_crops(model, x, y).items():
        aucs[name] = {
            mode: metrics.deletion_insertion(model, x, saliency, y, mode, x.shape[-1])[0]
            for mode in MODES
        }
    info = machine(torch.device("cpu"))
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    header = [
        "# Deletion and insertion on testbed A's photo crops",
        "",
        f"- command: `python bench/insertion_blur_check.py --crops {args.crops}"
        + (f" --out {args.out}`" if args.out else "`"),
        f"- machine: {info['cpu']}, {info['threads']} threads; {versions}; "
        f"{time.perf_counter() - started:.0f} s",
        f"- {len(order)} crops (224 px, top-1 ≥ 0.5) of {len(crops.photos[order].unique())} "
        "photos, every photo's first crop first; RISE as `gradex evaluate` (224 steps, deletion "
        "to 0, insertion from a Gaussian blur, kernel 11, σ 5); values: mean [95 % bootstrap "
        "interval]; differences paired by crop",
    ]
    text = report(aucs, crops.photos[order], crops.names, header)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
