"""The evaluation report: JSON (summaries), markdown (tables, goals) and PNG figures."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..cli_paths import ReportFolder, mark_png, report_folder
from .rows import ABLATIONS, PAPER_ROW
from .stats import format_difference, format_mean, paired_difference, summary

METRICS = {  # key -> (column title, higher is better)
    "energy_in_mask": ("energy in mask", True),
    "pointing_game": ("pointing game", True),
    "grid_localisation": ("grid localisation", True),
    "deletion_auc": ("deletion AUC", False),
    "insertion_auc": ("insertion AUC", True),
    "average_drop": ("Average Drop %", False),
    "increase_in_confidence": ("Increase in Conf. %", True),
    "edge_correlation": ("r with edges", None),
    "cross_cell_correlation": ("r across cells", False),
}
PHOTO_METRICS = [m for m in METRICS if m not in ("energy_in_mask", "pointing_game")]
CONSTANT = "GE on a constant map (control)"
GLOBAL = "gradcam + GE, global stage weighting"

# The files of a report, and how an earlier report's are told from someone else's files.
JSON_NAME, MARKDOWN_NAME = "evaluation.json", "README.md"
EXAMPLES, PHOTO_EXAMPLES, METRICS_FIGURE = "examples.png", "examples_photos.png", "metrics.png"
TITLE = "# gradex evaluation: "  # how the markdown starts
_JSON_KEYS = {"settings", "machine", "summaries", "goals", "cost"}


# -- numbers ----------------------------------------------------------------------------------


def _pooled(results: dict, row: str, metric: str) -> torch.Tensor:
    return torch.cat([seed["rows"][row][metric].double().cpu() for seed in results["seeds"]])


def summaries(results: dict) -> dict:
    """Testbed B: every row and metric, pooled over the seeds."""
    rows = results["seeds"][0]["rows"]
    return {row: {m: summary(_pooled(results, row, m)) for m in METRICS} for row in rows}


def photo_summaries(photos: dict) -> dict:
    """Testbed A: every row and metric, and the share of cells with under half their evidence."""
    table = {}
    for row, values in photos["rows"].items():
        table[row] = {m: summary(values[m]) for m in PHOTO_METRICS if m in values}
        table[row]["below_half"] = float((values["grid_localisation"] < 0.5).double().mean())
    return table


def _goal(text, value, met, detail=""):
    return {"goal": text, "measured": value, "met": bool(met), "detail": detail}


def _faithfulness_goals(name: str, ge: dict, coarse: dict) -> list[dict]:
    out = []
    if "deletion_auc" not in ge:
        return out
    deletion = paired_difference(ge["deletion_auc"], coarse["deletion_auc"])
    out.append(
        _goal(
            f"{name}: deletion AUC not worse by more than 0.01",
            format_difference(deletion, 4),
            deletion["mean"] <= 0.01,
        )
    )
    insertion = paired_difference(ge["insertion_auc"], coarse["insertion_auc"])
    out.append(
        _goal(
            f"{name}: insertion AUC not lower by more than 0.01",
            format_difference(insertion, 4),
            insertion["mean"] >= -0.01,
        )
    )
    return out


def _grid_goal(name: str, ge: torch.Tensor, coarse: torch.Tensor) -> dict:
    g, c = ge.double(), coarse.double()
    return _goal(
        f"{name}: grid localisation mean and median not below Grad-CAM's",
        f"mean {g.mean():.3f} vs {c.mean():.3f}, median {g.median():.3f} vs {c.median():.3f}",
        g.mean() >= c.mean() and g.median() >= c.median(),
    )


def _constant_goal(name: str, ge: torch.Tensor, constant: torch.Tensor) -> dict:
    gap = paired_difference(ge, constant)
    return _goal(
        f"{name}: GE on a constant map clearly worse (grid localisation, Δ interval above 0.1)",
        f"GE {ge.double().mean():.3f} vs constant {constant.double().mean():.3f} "
        f"(Δ {format_difference(gap)})",
        gap["ci_low"] > 0.1,
    )


def goals(results: dict) -> list[dict]:
    """The issue's goals for Grad-CAM: per seed on testbed B, and on testbed A."""
    out = []
    for seed in results["seeds"]:
        rows, name = seed["rows"], f"B, seed {seed['seed']}"
        coarse, ge = rows["gradcam"], rows["gradcam + GE"]
        energy = paired_difference(ge["energy_in_mask"], coarse["energy_in_mask"])
        out.append(
            _goal(
                f"{name}: energy in mask, GE − Grad-CAM ≥ +0.05, interval excludes 0",
                format_difference(energy),
                energy["mean"] >= 0.05 and energy["ci_low"] > 0,
            )
        )
        out.append(_grid_goal(name, ge["grid_localisation"], coarse["grid_localisation"]))
        out += _faithfulness_goals(name, ge, coarse)
        sanity = seed["sanity"]
        last_ge, last_coarse = sanity["gradcam + GE"][-1], sanity["gradcam"][-1]
        out.append(
            _goal(
                f"{name}: GE maps decorrelate under randomisation about as much as Grad-CAM's "
                "(Spearman with every layer random, within 0.1)",
                f"GE {last_ge['spearman']:.3f}, Grad-CAM {last_coarse['spearman']:.3f}",
                last_ge["spearman"] <= last_coarse["spearman"] + 0.1,
            )
        )
        out.append(
            _constant_goal(name, ge["grid_localisation"], rows[CONSTANT]["grid_localisation"])
        )
    photos = results.get("photos")
    if photos:
        rows = photos["rows"]
        coarse, ge = rows["gradcam"], rows["gradcam + GE"]
        out.append(_grid_goal("A (photos)", ge["grid_localisation"], coarse["grid_localisation"]))
        out += _faithfulness_goals("A (photos)", ge, coarse)
        out.append(
            _constant_goal(
                "A (photos)", ge["grid_localisation"], rows[CONSTANT]["grid_localisation"]
            )
        )
    return out


def failing_cells(photos: dict) -> dict:
    """Why cells fail: per photo, grid localisation of Grad-CAM and of GE with each weighting,
    the share of cells below 0.5, and the cell's share of activation strength; and over all
    cells, the correlation of that share with what GE changed."""
    rows = photos["rows"]
    share = photos["energy_share"].double()
    coarse = rows["gradcam"]["grid_localisation"].double()
    variants = {
        "GE (defaults)": "gradcam + GE",
        "GE, global weighting": GLOBAL,
        "GE, paper": PAPER_ROW,
    }
    per_photo = []
    for index, name in enumerate(photos["names"]):
        cells = photos["cell_photos"] == index
        if not bool(cells.any()):
            continue
        entry = {
            "photo": name,
            "cells": int(cells.sum()),
            "log_energy_share": float(share[cells].mean()),
            "gradcam": float(coarse[cells].mean()),
        }
        for title, row in variants.items():
            values = rows[row]["grid_localisation"].double()[cells]
            entry[title] = float(values.mean())
            entry[f"{title} < 0.5"] = float((values < 0.5).double().mean())
        per_photo.append(entry)
    correlation = {}
    for title, row in variants.items():
        change = rows[row]["grid_localisation"].double() - coarse
        correlation[title] = float(torch.corrcoef(torch.stack([share, change]))[0, 1])
    below = {
        title: float((rows[row]["grid_localisation"] < 0.5).double().mean())
        for title, row in {"Grad-CAM": "gradcam", **variants}.items()
    }
    return {"per_photo": per_photo, "correlation": correlation, "share_below_half": below}


# -- markdown ---------------------------------------------------------------------------------


def _table(table: dict, metrics: list[str]) -> list[str]:
    header = " | ".join(METRICS[m][0] for m in metrics)
    lines = [f"| map | {header} |", "|" + " --- |" * (len(metrics) + 1)]
    for row, cells in table.items():
        values = []
        for metric in metrics:
            if metric not in cells:
                values.append("–")
                continue
            s = cells[metric]
            text = format_mean(s)
            if metric == "grid_localisation":
                text += f"; median {s['median']:.3f}"
            values.append(text)
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    return lines


def _paired_table(get, methods: list[str], metrics: list[str]) -> list[str]:
    """GE minus the coarse map for each method, paired over the same images."""
    lines = [
        "| method | " + " | ".join(f"Δ {METRICS[m][0]}" for m in metrics) + " |",
        "|" + " --- |" * (len(metrics) + 1),
    ]
    for method in methods:
        cells = []
        for metric in metrics:
            ge, coarse = get(f"{method} + GE", metric), get(method, metric)
            cells.append("–" if ge is None else format_difference(paired_difference(ge, coarse)))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _headline(results: dict, table: dict, photo_table: dict | None) -> list[str]:
    """The main table: each coarse method and its GE map on both testbeds, with the peer and
    the control."""
    names = []
    for method in results["settings"]["methods"]:
        names += [method, f"{method} + GE"]
    names += [PAPER_ROW, next(r for r in table if r.startswith("LayerCAM fusion")), CONSTANT]
    columns = [
        ("B energy in mask", table, "energy_in_mask", False),
        ("B grid loc. (median)", table, "grid_localisation", True),
        ("B deletion / insertion", table, ("deletion_auc", "insertion_auc"), False),
    ]
    if photo_table:
        columns += [
            ("A grid loc. (median)", photo_table, "grid_localisation", True),
            ("A deletion / insertion", photo_table, ("deletion_auc", "insertion_auc"), False),
        ]
    lines = [
        "| map | " + " | ".join(title for title, *_ in columns) + " |",
        "|" + " --- |" * (len(columns) + 1),
    ]
    for name in names:
        cells = []
        for _, source, metric, with_median in columns:
            row = source.get(name, {})
            if isinstance(metric, tuple):
                parts = [row.get(m) for m in metric]
                cells.append(
                    "–" if None in parts else " / ".join(f"{p['mean']:.3f}" for p in parts)
                )
            elif metric not in row:
                cells.append("–")
            else:
                s = row[metric]
                cells.append(f"{s['mean']:.3f}" + (f" ({s['median']:.3f})" if with_median else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(
    results: dict,
    table: dict,
    goal_rows: list[dict],
    photo_table: dict | None,
    failures: dict | None,
) -> str:
    settings, machine = results["settings"], results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    methods = settings["methods"]
    lines = [
        TITLE + "does Gradual Extrapolation sharpen without lying?",
        "",
        f"- command: `{results.get('command', '')}`",
        f"- machine: {machine['cpu']}, {machine['threads']} threads; {versions}",
        f"- testbed B (synthetic shapes, exact masks), per seed: {settings['images']} test "
        f"images, {settings['grids']} 2×2 grids (4 cells each), deletion/insertion on "
        f"{settings['faithfulness_images']} images, randomisation on "
        f"{settings['sanity_images']}; seeds {settings['seeds']}",
        "- testbed A (the embedded EfficientNet-Lite0, photos shipped with scikit-image and "
        f"matplotlib): {settings['photo_grids']} 2×2 grids of 224 px crops (448 px), up to "
        f"{settings['photo_crops']} confident crops (top-1 ≥ 0.5) per photo; Average Drop and "
        f"edges on {settings['photo_singles']} crops, deletion/insertion on "
        f"{settings['photo_faithfulness']} crops, for the methods and the paper only "
        "(450 forward passes a crop)",
        "- RISE: 224 steps, deletion baseline 0 (the mean colour), insertion from a Gaussian "
        "blur (kernel 11, σ 5). Values: mean [95 % bootstrap interval of the mean]; maps in "
        "[0, 1] at input resolution; targets: the true class (B) or the predicted class (A)",
        "- GE: gradex's defaults (local stage weighting, min-max normalisation) unless the row "
        "says otherwise; 'paper's formula' is the paper's computation on gradex's layers, "
        "'the paper's layers and formula' the original code's whole (its layers: "
        "`gradex.paper_layers`), per image",
        "",
        "## Main table",
        "",
        *_headline(results, table, photo_table),
        "",
        "B: mean over every image of every seed; A: mean over grid cells / crops. Lower deletion, "
        "higher insertion is better. Full tables with intervals follow.",
        "",
        "## Goals (Grad-CAM)",
        "",
        "| goal | measured | met |",
        "| --- | --- | --- |",
    ]
    for goal in goal_rows:
        lines.append(
            f"| {goal['goal']} | {goal['measured']} | {'yes' if goal['met'] else '**no**'} |"
        )
    lines += _misses(results, table, goal_rows)
    equivalent = results.get("equivalences", {})
    lines += [
        "",
        "A global-average-pool + linear head (both testbeds' models) makes some methods the "
        "same map: HiResCAM and XGrad-CAM are Grad-CAM's (the gradient is the same at every "
        "position; they are not run by default), and excitation backprop at the last feature "
        "map is LayerCAM's up to one number per image (both weigh each channel by its positive "
        "classifier weight), so their rows are equal. Largest difference measured, maps scaled "
        "to a maximum of 1: "
        + ", ".join(f"{pair} {value:.1e}" for pair, value in equivalent.items())
        + ". Contrastive excitation differs: it subtracts the negated class's map.",
        "",
        "## Testbed B: synthetic shapes with exact masks",
        "",
        "### Does the model use the object? (occlusion check, per seed)",
        "",
        "| seed | accuracy | object removed | only the object | chance | passes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for seed in results["seeds"]:
        c = seed["occlusion_check"]
        lines.append(
            f"| {seed['seed']} | {c['accuracy']:.3f} | {c['object_removed']:.3f} | "
            f"{c['background_removed']:.3f} | {c['chance']:.2f} | "
            f"{'yes' if c['uses_the_object'] else '**no**'} |"
        )
    lines += ["", "### Every row", "", *_table(table, list(METRICS))]
    lines += [
        "",
        "Higher is better for energy, pointing, grid localisation, insertion and Increase in "
        "Confidence; lower for deletion, Average Drop and the correlation of the maps of two "
        "different cells' classes (class sensitivity). Average Drop / Increase are secondary: a "
        "map of all ones scores best on them. 'r with edges' is the correlation with a Sobel "
        "edge map of the image.",
        "",
        "### GE minus the coarse map, paired over the same images",
        "",
        *_paired_table(
            lambda row, metric: _pooled(results, row, metric),
            methods,
            ["energy_in_mask", "grid_localisation", "deletion_auc", "insertion_auc"],
        ),
        "",
        "### Sanity: cascading randomisation (Grad-CAM), mean Spearman / SSIM with the trained "
        "model's maps",
        "",
    ]
    for seed in results["seeds"]:
        sanity = seed["sanity"]
        layers = [s["randomised"] for s in sanity["gradcam"]]
        lines += [
            f"seed {seed['seed']}, layers randomised cumulatively from the output: "
            + " → ".join(layers),
            "",
            "| map | " + " | ".join(f"+{layer}" for layer in layers) + " |",
            "|" + " --- |" * (len(layers) + 1),
        ]
        for name, steps in sanity.items():
            lines.append(
                f"| {name} | "
                + " | ".join(f"{s['spearman']:.2f} / {s['ssim']:.2f}" for s in steps)
                + " |"
            )
        lines.append("")
    photos = results.get("photos")
    if photos:
        kept = ", ".join(
            f"{name} {count}"
            for name, count in zip(photos["names"], photos["crops_per_photo"], strict=True)
        )
        lines += [
            "## Testbed A: EfficientNet-Lite0 on photo grids",
            "",
            f"Confident crops kept per photo: {kept}. Few distinct photos: corroboration, "
            "reported per photo below.",
            "",
            *_table(photo_table, PHOTO_METRICS),
            "",
            "### GE minus the coarse map, paired over the same cells / crops",
            "",
            *_paired_table(
                lambda row, metric: photos["rows"][row].get(metric),
                methods,
                ["grid_localisation", "deletion_auc", "insertion_auc"],
            ),
            "",
        ]
        lines += _failures_section(failures)
    lines += _ablation_section(table, photo_table)
    cost = results["cost"]
    coarse, ge = cost["timing"]["coarse"], cost["timing"]["ge"]
    lines += [
        "## Cost of GE (testbed B's CNN, batch "
        f"{cost['batch']}, {cost['cpu']}, p50 of interleaved calls)",
        "",
        "| | p50 ms | peak MiB |",
        "| --- | --- | --- |",
        f"| Grad-CAM (coarse, upsampled) | {coarse['p50_ms']:.2f} | "
        f"{_mib(cost['peak_mib']['coarse'])} |",
        f"| Grad-CAM + GE | {ge['p50_ms']:.2f} | {_mib(cost['peak_mib']['ge'])} |",
        f"| added by GE | {ge['p50_ms'] - coarse['p50_ms']:+.2f} | |",
        "",
        f"![examples, testbed B]({EXAMPLES})",
        "",
    ]
    if photos:
        lines += [f"![examples, testbed A]({PHOTO_EXAMPLES})", ""]
    lines += [f"![metrics]({METRICS_FIGURE})"]
    return "\n".join(lines) + "\n"


def _misses(results: dict, table: dict, goal_rows: list[dict]) -> list[str]:
    """Why each kind of missed goal was missed, with the numbers that show it."""
    missed = [g["goal"] for g in goal_rows if not g["met"]]
    lines = []
    if any("randomisation" in goal for goal in missed):
        ge, coarse = [], []
        for seed in results["seeds"]:
            ge.append(seed["sanity"]["gradcam + GE"][-1]["spearman"])
            coarse.append(seed["sanity"]["gradcam"][-1]["spearman"])
        energy = table["gradcam + GE"]["energy_in_mask"]["mean"]
        constant = table[CONSTANT]
        constant_energy = constant["energy_in_mask"]["mean"]
        lines += [
            "",
            f"**Missed: the sanity check.** With every layer re-initialised, GE maps keep a "
            f"Spearman correlation of {min(ge):.2f}–{max(ge):.2f} with the trained model's maps, "
            f"against {min(coarse):.2f}–{max(coarse):.2f} for Grad-CAM. GE multiplies by the "
            "activations, and a random CNN's activations still outline the object: part of a "
            "GE map is the image's structure, not the model's decision. The constant-map "
            f"control shows it on single images (energy in mask {constant_energy:.3f} against "
            f"{energy:.3f} for GE on Grad-CAM). The class comes from the coarse map: "
            f"on grids GE on a constant map is at chance "
            f"({constant['grid_localisation']['mean']:.3f}), GE on Grad-CAM at "
            f"{table['gradcam + GE']['grid_localisation']['mean']:.3f}.",
        ]
    if any(goal.startswith("A (photos): insertion") for goal in missed):
        rows = results["photos"]["rows"]
        ge, coarse = rows["gradcam + GE"], rows["gradcam"]
        n = coarse["insertion_auc"].numel()
        insertion = paired_difference(ge["insertion_auc"], coarse["insertion_auc"])
        deletion = paired_difference(ge["deletion_auc"], coarse["deletion_auc"])
        change = ge["insertion_auc"] - coarse["insertion_auc"]
        worst = int(change.argmin())
        lines += [
            "",
            f"**Missed on the photos: insertion** over {n} crops only "
            f"({format_difference(insertion)}; deletion {format_difference(deletion)}). "
            f"The largest single change is one crop's {coarse['insertion_auc'][worst]:.2f} → "
            f"{ge['insertion_auc'][worst]:.2f} ({float(change[worst]):+.3f} of the "
            f"{float(change.sum()):+.3f} summed over the {n} crops). {n} crops are weak evidence: "
            "`python bench/insertion_blur_check.py --crops 16` repeats deletion and insertion "
            "on more crops, and with GE's map blurred before ranking (how much of a gap is the "
            "sharpness of the reveal order alone); the main README quotes its result.",
        ]
    return lines


def _failures_section(failures: dict) -> list[str]:
    below = failures["share_below_half"]
    correlation = failures["correlation"]
    lines = [
        "### Where GE fails on photos, and why",
        "",
        "Share of grid cells whose class map puts less than half of its evidence in the cell: "
        + ", ".join(f"{name} {value:.1%}" for name, value in below.items())
        + ".",
        "",
        "| photo | cells | log share of activation strength | Grad-CAM | GE (defaults) | "
        "GE, global weighting | GE, paper | cells < 0.5: defaults / global / paper |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in failures["per_photo"]:
        lines.append(
            f"| {p['photo']} | {p['cells']} | {p['log_energy_share']:.2f} | {p['gradcam']:.3f} | "
            f"{p['GE (defaults)']:.3f} | {p['GE, global weighting']:.3f} | {p['GE, paper']:.3f} | "
            f"{p['GE (defaults) < 0.5']:.0%} / {p['GE, global weighting < 0.5']:.0%} / "
            f"{p['GE, paper < 0.5']:.0%} |"
        )
    lines += [
        "",
        "The 'log share of activation strength' of a cell is the mean over GE's stages of "
        "log(the cell's mean channel sum / the four cells' total); log ¼ = −1.39 is an even "
        "share, and GE's product over five stages compounds the difference five times. "
        "Correlation "
        "over cells between that share and GE's change of grid localisation (GE − Grad-CAM): "
        + ", ".join(f"{name} r = {value:+.2f}" for name, value in correlation.items())
        + ".",
        "",
        "**Cause.** GE multiplies the map by each stage's channel sum. With the paper's global "
        "weighting that sum's magnitude counts everywhere: over five stages the product of the "
        "strengths differs between photos by orders of magnitude, so the part of a class map "
        "that Grad-CAM's upsampling spread into a neighbouring, more strongly firing photo is "
        "amplified there, and a dim photo's cell (a dark, smooth crop) loses its evidence to "
        "its neighbours. That is a property of the images, not of the class. **Fix (the "
        "default now):** 'local' stage weighting divides each stage's channel sum by its mean "
        "over windows of 2×2 coarse-map cells (the support of the bilinear kernel that spread "
        "the coarse values), so GE reshapes the map inside the neighbourhood the CAM points "
        "at and no longer moves evidence towards distant strong regions.",
        "",
    ]
    return lines


def _ablation_section(table: dict, photo_table: dict | None) -> list[str]:
    rows = ["gradcam", "gradcam + GE", *ABLATIONS]
    if photo_table:
        rows += [r for r in photo_table if "block outputs" in r]
    lines = [
        "## Choosing GE's defaults (Grad-CAM)",
        "",
        "Each row undoes one default (global stage weighting: the paper's; standardise-and-clip: "
        "the paper's normalisation); 'paper's formula' undoes both, and 'the paper's layers and "
        "formula' also reads the original code's layers; 'block outputs' reads the blocks' "
        "linear-bottleneck outputs (made non-negative by 'relu' or 'abs') instead of the default "
        "post-ReLU6 maps (testbed A only: the synthetic CNN has only post-ReLU maps).",
        "",
        "| GE variant | B energy in mask | B grid loc. mean (median) | A grid loc. mean (median) "
        "| A cells < 0.5 | A deletion / insertion |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        b = table.get(row)
        a = (photo_table or {}).get(row)
        energy = f"{b['energy_in_mask']['mean']:.3f}" if b else "–"
        grid_b = (
            f"{b['grid_localisation']['mean']:.3f} ({b['grid_localisation']['median']:.3f})"
            if b
            else "–"
        )
        grid_a = (
            f"{a['grid_localisation']['mean']:.3f} ({a['grid_localisation']['median']:.3f})"
            if a
            else "–"
        )
        below = f"{a['below_half']:.1%}" if a and "below_half" in a else "–"
        faithful = (
            f"{a['deletion_auc']['mean']:.3f} / {a['insertion_auc']['mean']:.3f}"
            if a and "deletion_auc" in a
            else "–"
        )
        lines.append(f"| {row} | {energy} | {grid_b} | {grid_a} | {below} | {faithful} |")
    lines += [
        "",
        "Dividing each stage by its per-image maximum M (the paper's step) changes nothing per "
        "image: M is one number per image and stage, and any normalisation of the final map "
        "removes it. It matters only in the paper's batch-global form "
        "(`gradex.reference.extrapolate_paper`), where it makes one image's map depend on its "
        "batch-mates.",
        "",
    ]
    return lines


def _mib(value) -> str:
    return "–" if value is None else f"{value:.1f}"


# -- figures ----------------------------------------------------------------------------------


def _png(figure) -> bytes:
    """The figure as a PNG marked as gradex's, and closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return mark_png(buffer.getvalue(), "evaluate figure")


def _panels(images, overlays, names, display, contours=None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = images.shape[0]
    figure, axes = plt.subplots(
        count, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.7 * count), squeeze=False
    )
    for i in range(count):
        axes[i, 0].imshow(display(images[i]).permute(1, 2, 0).numpy())
        if contours is not None:
            axes[i, 0].contour(contours[i].float().numpy(), levels=[0.5], colors="yellow")
        for j, name in enumerate(names):
            axes[i, j + 1].imshow(overlays[name][i, 0].cpu().numpy(), cmap="jet", vmin=0, vmax=1)
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    figure.tight_layout()
    return _png(figure)


def _figures(results: dict, table: dict) -> dict[str, bytes]:
    """Each figure's name and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = results["seeds"][0]["examples"]
    figures = {
        EXAMPLES: _panels(
            examples["images"],
            examples["maps"],
            list(examples["maps"]),
            lambda x: (x * 0.25 + 0.5).clamp(0, 1),
            examples["masks"],
        )
    }
    photos = results.get("photos")
    if photos:
        shown = photos["examples"]
        figures[PHOTO_EXAMPLES] = _panels(
            shown["images"],
            shown["maps"],
            list(shown["maps"]),
            lambda x: (x * 128 / 255 + 127 / 255).clamp(0, 1),
        )

    shown_metrics = ["energy_in_mask", "grid_localisation", "insertion_auc", "deletion_auc"]
    figure, axes = plt.subplots(
        1, len(shown_metrics), figsize=(4 * len(shown_metrics), 0.35 * len(table) + 1.2)
    )
    labels = list(table)
    for ax, metric in zip(axes, shown_metrics, strict=True):
        means = [table[row][metric]["mean"] for row in labels]
        low = [table[row][metric]["mean"] - table[row][metric]["ci_low"] for row in labels]
        high = [table[row][metric]["ci_high"] - table[row][metric]["mean"] for row in labels]
        colours = ["#1f77b4" if "GE" in row else "#7f7f7f" for row in labels]
        ax.barh(labels[::-1], means[::-1], xerr=[low[::-1], high[::-1]], color=colours[::-1])
        ax.set_title(f"B: {METRICS[metric][0]}", fontsize=9)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    figures[METRICS_FIGURE] = _png(figure)
    return figures


def output_folder(out: Path, photos: bool = True) -> ReportFolder:
    """``out`` checked for a report (with testbed A's figure when ``photos``): created, writable,
    and each of the report's names free or holding an earlier gradex report's file. A figure
    from before gradex marked its PNGs counts as gradex's when matplotlib saved it and the
    ``evaluation.json`` beside it is a gradex report. Raises ValueError naming ``--out``."""
    return report_folder(
        out,
        json_name=JSON_NAME,
        json_keys=_JSON_KEYS,
        markdown_name=MARKDOWN_NAME,
        title=TITLE,
        figures=[EXAMPLES, *([PHOTO_EXAMPLES] if photos else []), METRICS_FIGURE],
    )


def write(results: dict, out: Path) -> list[Path]:
    """Write the report into ``out`` (checked first: see :func:`output_folder`); the paths
    written."""
    photos = results.get("photos")
    folder = output_folder(out, photos=bool(photos))
    table = summaries(results)
    goal_rows = goals(results)
    photo_table = photo_summaries(photos) if photos else None
    failures = failing_cells(photos) if photos else None
    record = {
        "command": results.get("command"),
        "settings": results["settings"],
        "machine": results["machine"],
        "occlusion_checks": {s["seed"]: s["occlusion_check"] for s in results["seeds"]},
        "summaries": table,
        "photo_summaries": photo_table,
        "failing_cells": failures,
        "goals": goal_rows,
        "sanity": {s["seed"]: s["sanity"] for s in results["seeds"]},
        "equivalences": results.get("equivalences"),
        "cost": results["cost"],
    }
    files = {
        JSON_NAME: json.dumps(record, indent=2) + "\n",
        MARKDOWN_NAME: markdown(results, table, goal_rows, photo_table, failures),
    }
    files = {name: text.encode() for name, text in files.items()}
    files.update(_figures(results, table))
    return [folder.write(name, data) for name, data in files.items()]
