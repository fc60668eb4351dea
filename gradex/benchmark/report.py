"""The benchmark's results as files: JSON (everything), markdown (tables, goals), PNG (a plot)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from ..cli_paths import ReportFolder, mark_png, report_folder

TITLE = "# gradex end-to-end benchmark: "  # how the markdown starts
_JSON_KEYS = {"machine", "settings", "peers", "configs"}
# `gradex bench --quick` times a tiny model twice: enough to show that every variant runs and
# agrees, far too little for its times to mean anything (0.45x inference has been read as a
# result). Said beside every table it prints and in every file it writes.
SMOKE_TEST_NOTE = (
    "SMOKE TEST (--quick: a tiny model, 2 calls per variant): it checks that every variant runs "
    "and agrees; its times and x-inference ratios are NOT measurements. Run gradex bench "
    "without --quick for numbers."
)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def config_table(config: dict) -> str:
    lines = [
        f"### {config['model']}, batch {config['batch']}, "
        f"{config['input_size']}×{config['input_size']}, target layer `{config['target_layer']}`",
        "",
    ]
    if config["agreement"]:
        checks = ", ".join(
            f"{key}: r = {a['min_r']:.4f} ({'agrees' if a['agrees'] else 'DISAGREES'})"
            for key, a in config["agreement"].items()
        )
        lines += [f"Coarse Grad-CAM vs gradex (min per-sample correlation): {checks}", ""]
    lines += [
        "| variant | p50 ms | p99 ms | img/s | peak MiB | × inference | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in config["rows"]:
        lines.append(
            f"| {row['label']} | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | "
            f"{_fmt(row['img_per_s'], 1)} | {_fmt(row['peak_mib'], 0)} | "
            f"{_fmt(row['x_inference'])} | {row['n']} |"
        )
    for key, why in {**config["skipped"], **config["failed"]}.items():
        lines.append(f"\n- {key}: {'FAILED: ' if key in config['failed'] else 'skipped: '}{why}")
    if config.get("smoke_test"):
        lines[0] += " (smoke test)"
        lines.append(f"\n**{SMOKE_TEST_NOTE}**")
    return "\n".join(lines) + "\n"


def _row(results: dict, model: str, batch: int, key: str) -> dict | None:
    for config in results["configs"]:
        if config["model"] == model and config["batch"] == batch:
            return next((r for r in config["rows"] if r["key"] == key), None)
    return None


def _goal(results, text, model, batch, ours, theirs, measure, target, better):
    """One goal: ``measure(ours_row, theirs_row)`` compared with ``target`` ('<=' or '>=')."""
    a, b = _row(results, model, batch, ours), _row(results, model, batch, theirs)
    if a is None or b is None or measure(a, b) is None:
        return {"goal": text, "measured": None, "target": f"{better} {target}", "met": None}
    value = measure(a, b)
    met = value <= target if better == "<=" else value >= target
    return {"goal": text, "measured": round(value, 3), "target": f"{better} {target}", "met": met}


def _latency_ratio(a, b):
    return a["p50_ms"] / b["p50_ms"]


def _throughput_ratio(a, b):
    return a["img_per_s"] / b["img_per_s"]


def _memory_ratio(a, b):
    if not a["peak_mib"] or not b["peak_mib"]:
        return None
    return a["peak_mib"] / b["peak_mib"]


def goals(results: dict) -> list[dict]:
    """The goals of the low-latency issue, as far as this run measured them (met: None where a
    row is missing: another device, a peer not installed)."""
    if results["machine"]["device_type"] == "cuda":
        specs = [
            ("ResNet-50 b1: graph-mode Grad-CAM+GE / graph-captured inference latency",
             "resnet50", 1, "gradex_static", "inference_graph", _latency_ratio, 1.2, "<="),
            ("ResNet-50 b1: graph-mode Grad-CAM+GE / pytorch-grad-cam GradCAM latency",
             "resnet50", 1, "gradex_static", "pgc_gradcam", _latency_ratio, 0.10, "<="),
            ("ResNet-50 b64: bf16+CL Grad-CAM+GE / bf16+CL inference throughput",
             "resnet50", 64, "gradex_bf16_cl", "inference_bf16_cl", _throughput_ratio, 0.85, ">="),
            ("ResNet-50 b64: bf16+CL Grad-CAM+GE / pytorch-grad-cam GradCAM throughput",
             "resnet50", 64, "gradex_bf16_cl", "pgc_gradcam", _throughput_ratio, 10, ">="),
            ("ResNet-50 b64: peak memory of Grad-CAM+GE (fp32) / no-grad inference",
             "resnet50", 64, "gradex", "inference", _memory_ratio, 1.3, "<="),
        ]  # fmt: skip
    else:
        specs = [
            ("EfficientNet-Lite0 b1: Grad-CAM+GE (static) / no-grad inference latency",
             "efficientnet_lite0", 1, "gradex_static", "inference", _latency_ratio, 1.15, "<="),
            ("EfficientNet-Lite0 b1: pytorch-grad-cam GradCAM / Grad-CAM+GE (static) latency",
             "efficientnet_lite0", 1, "pgc_gradcam", "gradex_static", _latency_ratio, 2.5, ">="),
        ]  # fmt: skip
    return [_goal(results, *spec) for spec in specs]


def markdown(results: dict) -> str:
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    peers = ", ".join(f"{k} {v}" for k, v in results["peers"].items())
    settings = results["settings"]
    lines = [
        TITLE + machine["device"],
        "",
        *([f"**{SMOKE_TEST_NOTE}**", ""] if settings.get("smoke_test") else []),
        f"- machine: {machine['device']}"
        + (f" (CUDA {machine['cuda']}, cuDNN {machine['cudnn']})" if "cuda" in machine else "")
        + f"; host CPU {machine['cpu']}, {machine['threads']} threads; Python {machine['python']}",
        f"- versions: {versions}; gradex backend: {machine.get('gradex_backend', 'not recorded')}",
        f"- peers: {peers}",
        f"- command: `{results['command']}`",
        f"- timing: latency of one call, synchronised before and after, variants round-robin; "
        f"up to {settings['reps']} calls each (fewer once a variant has used "
        f"{settings['budget_s']} s) after {settings['warmup']} warm-up calls; p99 of few calls is "
        "close to their maximum",
        "- peak memory: what the variant holds between calls (a CUDA graph's pool, buffers) + "
        "the peak of one warm call, above the memory in use before it was built (CUDA: the "
        "allocator; CPU: resident size, a lower bound where freed memory is reused)",
        "- gradex rows explain the same target layer as the peers; 'static' rows: check=False",
        "",
    ]
    for config in results["configs"]:
        lines.append(config_table(config))
    if results["goals"]:
        lines += ["## Goals", "", "| goal | measured | target | met |", "| --- | --- | --- | --- |"]
        for goal in results["goals"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[goal["met"]]
            lines.append(
                f"| {goal['goal']} | {_fmt(goal['measured'], 3)} | {goal['target']} | {met} |"
            )
    return "\n".join(lines) + "\n"


_COLOURS = {"floor": "#7f7f7f", "gradex": "#1f77b4", "peer": "#d62728"}


def plot(results: dict) -> bytes | None:
    """One panel per (model, batch): each variant's p50 latency as a multiple of no-grad
    inference (linear, so bar lengths compare), the absolute p50 written at the bar's end. The
    PNG, marked as gradex's; None when no configuration has rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in results["configs"] if c["rows"] and c["rows"][0]["x_inference"]]
    if not configs:
        return None
    heights = [0.8 + 0.32 * len(c["rows"]) for c in configs]
    figure, axes = plt.subplots(
        len(configs), 1, figsize=(11, sum(heights)), squeeze=False, height_ratios=heights
    )
    for ax, config in zip(axes[:, 0], configs, strict=True):
        rows = config["rows"][::-1]
        ratios = [r["x_inference"] for r in rows]
        bars = ax.barh(
            [r["label"] for r in rows], ratios, color=[_COLOURS[r["group"]] for r in rows]
        )
        for bar, row in zip(bars, rows, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {row['p50_ms']:,.1f} ms",
                va="center",
                fontsize=7,
            )
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlim(0, max(ratios) * 1.18)
        ax.set_title(
            f"{config['model']}, batch {config['batch']}: p50 latency / no-grad inference",
            fontsize=9,
        )
        ax.tick_params(labelsize=7)
    figure.suptitle(results["machine"]["device"], fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return mark_png(buffer.getvalue(), "bench plot")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def stem(device: str, tag: str = "") -> str:
    """The files' name without suffix: ``e2e_<device>[_<tag>]``."""
    return "e2e_" + _slug(device) + (f"_{_slug(tag)}" if tag else "")


def output_folder(out: Path, device: str, tag: str = "") -> ReportFolder:
    """``out`` checked for the results of a run on ``device`` (measure.device_name): created,
    writable, and ``<stem>.{json,md,png}`` free or holding an earlier gradex benchmark's files.
    A plot from before gradex marked its PNGs counts as gradex's when matplotlib saved it and
    the ``<stem>.json`` beside it is a gradex benchmark. Raises ValueError naming ``--out``."""
    name = stem(device, tag)
    return report_folder(
        out,
        json_name=f"{name}.json",
        json_keys=_JSON_KEYS,
        markdown_name=f"{name}.md",
        title=TITLE,
        figures=[f"{name}.png"],
    )


def write(results: dict, out: Path, tag: str = "") -> list[Path]:
    """Write the results into ``out`` (checked first: see :func:`output_folder`); the paths
    written (no plot when no configuration has rows)."""
    name = stem(results["machine"]["device"], tag)
    folder = output_folder(out, results["machine"]["device"], tag)
    files = {
        f"{name}.json": (json.dumps(results, indent=2) + "\n").encode(),
        f"{name}.md": markdown(results).encode(),
        f"{name}.png": plot(results),
    }
    return [folder.write(file, data) for file, data in files.items() if data is not None]
