"""The evaluation report: JSON (summaries), markdown (tables, goals) and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .stats import paired_difference, summary

METRICS = {  # key -> (column title, higher is better)
    "energy_in_mask": ("energy in mask", True),
    "pointing_game": ("pointing game", True),
    "grid_localisation": ("grid localisation", True),
    "deletion_auc": ("deletion AUC", False),
    "insertion_auc": ("insertion AUC", True),
    "edge_correlation": ("r with edges", None),
    "cross_cell_correlation": ("r across cells", False),
}


def _pooled(results: dict, row: str, metric: str) -> torch.Tensor:
    return torch.cat([seed["rows"][row][metric].double().cpu() for seed in results["seeds"]])


def summaries(results: dict) -> dict:
    rows = results["seeds"][0]["rows"]
    return {row: {m: summary(_pooled(results, row, m)) for m in METRICS} for row in rows}


def _goal(text, value, met, detail=""):
    return {"goal": text, "measured": value, "met": bool(met), "detail": detail}


def goals(results: dict) -> list[dict]:
    """The issue's goals for Grad-CAM, per seed (testbed B)."""
    out = []
    for seed in results["seeds"]:
        rows, name = seed["rows"], f"seed {seed['seed']}"
        coarse, ge = rows["gradcam"], rows["gradcam + GE"]
        energy = paired_difference(ge["energy_in_mask"], coarse["energy_in_mask"])
        out.append(
            _goal(
                f"{name}: energy in mask, GE − Grad-CAM ≥ +0.05, interval excludes 0",
                f"{energy['mean']:+.3f} [{energy['ci_low']:+.3f}, {energy['ci_high']:+.3f}]",
                energy["mean"] >= 0.05 and energy["ci_low"] > 0,
            )
        )
        g, c = ge["grid_localisation"].double(), coarse["grid_localisation"].double()
        out.append(
            _goal(
                f"{name}: grid localisation mean and median not below Grad-CAM's",
                f"mean {g.mean():.3f} vs {c.mean():.3f}, median {g.median():.3f} vs "
                f"{c.median():.3f}",
                g.mean() >= c.mean() and g.median() >= c.median(),
            )
        )
        deletion = paired_difference(ge["deletion_auc"], coarse["deletion_auc"])
        out.append(
            _goal(
                f"{name}: deletion AUC not worse by more than 0.01",
                f"{deletion['mean']:+.4f} [{deletion['ci_low']:+.4f}, {deletion['ci_high']:+.4f}]",
                deletion["mean"] <= 0.01,
            )
        )
        insertion = paired_difference(ge["insertion_auc"], coarse["insertion_auc"])
        out.append(
            _goal(
                f"{name}: insertion AUC not lower by more than 0.01",
                f"{insertion['mean']:+.4f} [{insertion['ci_low']:+.4f}, "
                f"{insertion['ci_high']:+.4f}]",
                insertion["mean"] >= -0.01,
            )
        )
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
        constant = rows["GE on a constant map (control)"]["grid_localisation"].double()
        gap = paired_difference(g, constant)
        out.append(
            _goal(
                f"{name}: GE on a constant map clearly worse (grid localisation)",
                f"GE {g.mean():.3f} vs constant {constant.mean():.3f} "
                f"(Δ {gap['mean']:+.3f} [{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}])",
                gap["ci_low"] > 0.1,
            )
        )
    return out


def _cell(s: dict) -> str:
    return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def markdown(results: dict, table: dict, goal_rows: list[dict]) -> str:
    settings, machine = results["settings"], results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines = [
        "# gradex evaluation: Gradual Extrapolation on the synthetic testbed (B)",
        "",
        f"- command: `{results.get('command', '')}`",
        f"- machine: {machine['cpu']}, {machine['threads']} threads; {versions}",
        f"- per seed: {settings['images']} test images, {settings['grids']} 2×2 grids "
        f"(4 cells each), deletion/insertion on {settings['faithfulness_images']} images "
        f"(RISE: 224 steps, deletion baseline 0 = mean colour, insertion from a Gaussian blur "
        f"k 11, σ 5), randomisation on {settings['sanity_images']}; seeds {settings['seeds']}",
        "- values: mean [95 % bootstrap interval of the mean] over every image of every seed; "
        "maps in [0, 1] at input resolution; targets: the true class",
        "",
        "## Does the model use the object? (occlusion check, per seed)",
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
    header = " | ".join(title for title, _ in METRICS.values())
    lines += ["", "## Main table", "", f"| map | {header} |", "|" + " --- |" * (len(METRICS) + 1)]
    for row, cells in table.items():
        values = []
        for metric in METRICS:
            s = cells[metric]
            text = _cell(s)
            if metric == "grid_localisation":
                text += f"; median {s['median']:.3f}"
            values.append(text)
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    lines += [
        "",
        "Higher is better for energy, pointing, grid localisation and insertion; lower for "
        "deletion and for the correlation of the maps of two different cells' classes (class "
        "sensitivity). 'r with edges' is the correlation with a Sobel edge map of the image.",
        "",
        "## GE minus the coarse map, paired over the same images",
        "",
        "| method | Δ energy in mask | Δ grid localisation | Δ deletion AUC | Δ insertion AUC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in results["settings"]["methods"]:
        cells = []
        for metric in ("energy_in_mask", "grid_localisation", "deletion_auc", "insertion_auc"):
            d = paired_difference(
                _pooled(results, f"{method} + GE", metric), _pooled(results, method, metric)
            )
            cells.append(f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Goals (Grad-CAM)", "", "| goal | measured | met |", "| --- | --- | --- |"]
    for goal in goal_rows:
        lines.append(
            f"| {goal['goal']} | {goal['measured']} | {'yes' if goal['met'] else '**no**'} |"
        )
    lines += [
        "",
        "## Sanity: cascading randomisation (Grad-CAM), mean Spearman / SSIM with the trained "
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
    cost = results["cost"]
    coarse, ge = cost["timing"]["coarse"], cost["timing"]["ge"]
    lines += [
        "## Cost of GE (seed-0 model, batch "
        f"{cost['batch']}, {cost['cpu']}, p50 of interleaved calls)",
        "",
        "| | p50 ms | peak MiB |",
        "| --- | --- | --- |",
        f"| Grad-CAM (coarse, upsampled) | {coarse['p50_ms']:.2f} | "
        f"{_mib(cost['peak_mib']['coarse'])} |",
        f"| Grad-CAM + GE | {ge['p50_ms']:.2f} | {_mib(cost['peak_mib']['ge'])} |",
        f"| added by GE | {ge['p50_ms'] - coarse['p50_ms']:+.2f} | |",
        "",
        "![examples](examples.png)",
        "",
        "![metrics](metrics.png)",
    ]
    return "\n".join(lines) + "\n"


def _mib(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _figures(results: dict, table: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = results["seeds"][0]["examples"]
    names = list(examples["maps"])
    count = examples["images"].shape[0]
    figure, axes = plt.subplots(
        count, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.7 * count)
    )
    for i in range(count):
        image = (examples["images"][i] * 0.25 + 0.5).clamp(0, 1).permute(1, 2, 0)
        axes[i, 0].imshow(image.numpy())
        axes[i, 0].contour(examples["masks"][i].float().numpy(), levels=[0.5], colors="yellow")
        for j, name in enumerate(names):
            shown = examples["maps"][name][i, 0].cpu().numpy()
            axes[i, j + 1].imshow(shown, cmap="jet", vmin=0, vmax=1)
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    figure.tight_layout()
    examples_path = out / "examples.png"
    figure.savefig(examples_path, dpi=90)
    plt.close(figure)

    shown = ["energy_in_mask", "grid_localisation", "insertion_auc", "deletion_auc"]
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 0.35 * len(table) + 1.2))
    labels = list(table)
    for ax, metric in zip(axes, shown, strict=True):
        means = [table[row][metric]["mean"] for row in labels]
        low = [table[row][metric]["mean"] - table[row][metric]["ci_low"] for row in labels]
        high = [table[row][metric]["ci_high"] - table[row][metric]["mean"] for row in labels]
        colours = ["#1f77b4" if "GE" in row else "#7f7f7f" for row in labels]
        ax.barh(labels[::-1], means[::-1], xerr=[low[::-1], high[::-1]], color=colours[::-1])
        ax.set_title(METRICS[metric][0], fontsize=9)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    metrics_path = out / "metrics.png"
    figure.savefig(metrics_path, dpi=90)
    plt.close(figure)
    return [examples_path, metrics_path]


def write(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = summaries(results)
    goal_rows = goals(results)
    record = {
        "command": results.get("command"),
        "settings": results["settings"],
        "machine": results["machine"],
        "occlusion_checks": {s["seed"]: s["occlusion_check"] for s in results["seeds"]},
        "summaries": table,
        "goals": goal_rows,
        "sanity": {s["seed"]: s["sanity"] for s in results["seeds"]},
        "cost": results["cost"],
    }
    paths = [out / "evaluation.json", out / "README.md"]
    paths[0].write_text(json.dumps(record, indent=2) + "\n")
    paths[1].write_text(markdown(results, table, goal_rows))
    return paths + _figures(results, table, out)
