"""Research (issue 15, part 2): a class-sensitive GE stage weighting that passes the cascading
randomisation sanity check.

GE carries the coarse map g back through the stages with S_k = Σ_c A_k,c, a non-negative,
class-agnostic weighting: a randomly initialised CNN's activations still outline the object, so
GE maps keep a Spearman correlation of 0.30-0.37 with the trained model's after every layer is
re-initialised (Grad-CAM: 0.16-0.19). Each variant below replaces S_k by a map that depends on
the class (and so on the trained weights), and keeps the rest of GE: the local stage weighting
(``reference.local_weighting``), the chain step (``reference.upsample_multiply``) and min-max.

Variants (``VARIANTS``), each a map function (model, images, targets) -> (B,1,H,W) in [0, 1]:

- ``gradcam``, ``ge``: the references (``Explainer`` with gradual off / on, its defaults).
- ``agree``: S_k = relu(Σ_c w_c A_c), w_c = Pearson correlation over positions of A_c with the
  CAM upsampled to stage k. Signed weights let a stage cancel where its channels do not follow
  the class map; on a random model the weights follow that model's (random) CAM, not the object.
  Needs the full stage activations kept until the CAM exists (after the backward).
- ``agree-chain``: the same, correlating with the running chain map (deepest first), so each
  stage agrees with what the deeper stages made of the CAM.
- ``stage-gradcam``: Grad-CAM at every stage (w_c = spatial mean of d score / d A_c). Needs the
  backward to reach the shallowest stage, so the forward records the whole graph.
- ``stage-layercam``: LayerCAM at every stage (Σ_c relu(G_c) A_c), same cost as stage-gradcam.
- ``stage-hirescam``: HiResCAM at every stage (relu(Σ_c G_c A_c)), same cost: signed per
  position, so a stage cancels where the layers above do not use it.
- ``ge-agree-gate``, ``ge-gradcam-gate``, ``ge-hirescam-gate``: GE's S_k times one of the maps
  above scaled to [0, 1] (a class-sensitive gate on GE's class-agnostic sharpening).
- ``ge-sign-gate``, ``ge-sign-gate-sq``: GE's S_k times the share of the stage's contributions
  G_c A_c that push the score up (``sign_agreement``), to the power 1 or 2: the gate carries
  the sign pattern of the model's gradient but none of the activations' magnitude.

Scored beside each other on the same images: sanity Spearman after full randomisation (testbed B,
per seed, the evaluation's SANITY_LAYERS), energy in mask, B grid localisation, B deletion /
insertion (paired intervals against GE), A grid localisation (EfficientNet-Lite0 photo grids),
and the cost on B's CNN (ms per batch of 64, what each must keep alive).

python bench/sanity_weighting.py [--seeds 0 1 2] [--images 256] [--grids 64] [--faithfulness 32]
    [--sanity-images 16] [--sanity-more 64] [--randomisation-seed 0] [--photo-grids 8]
    [--variants ...] [--quick] [--out PATH] [--rerender]

The results in bench/results/sanity_weighting.md: --images 1000 --grids 250 --photo-grids 8 (the
evaluation's counts on B; about 13 minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gradex import Explainer, cams, metrics
from gradex.benchmark.measure import machine
from gradex.evaluation.stats import format_difference, paired_difference
from gradex.evaluation.synthetic_testbed import GRIDS_SEED, IMAGES_SEED, SANITY_LAYERS
from gradex.reference import local_weighting, local_windows, minmax_maps, upsample_multiply
from gradex.synthetic import load_model, make_grids, make_images

RESULTS = Path(__file__).parent / "results"
BATCH = 64  # images per explained batch on testbed B, and the batch the cost is timed on
SIGN_FLOOR = 1e-3  # of a stage's largest contribution magnitude (``sign_agreement``)
PHOTO_BATCH = 4  # 448 px grids through EfficientNet-Lite0, with the whole graph for some variants
CROPS_PER_PHOTO = 16


# -- one forward (+ backward) ----------------------------------------------------------------


@dataclass
class Forward:
    activations: list[torch.Tensor]  # the GE stages, shallow to deep, (B,C,h,w) float32
    grads: list[torch.Tensor] | None  # d score / d A_k per stage, when asked for
    cam: torch.Tensor  # Grad-CAM at the target layer, (B,1,h,w)
    saved_bytes: int  # what the forward recorded for the backward (autograd's saved tensors)


_layer_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layers(model, images):
    """The Explainer's own choice of target layer and stages, found once per model and size
    (the randomisation check makes a new model every step: a weak cache lets them go)."""
    per_size = _layer_cache.setdefault(model, {})
    size = tuple(images.shape[-2:])
    if size not in per_size:
        per_size[size] = Explainer(model).layers_for(images)
    return per_size[size]


def forward(model, images, targets, stage_grads: bool) -> Forward:
    """Stage activations, the Grad-CAM and (``stage_grads``) every stage's gradient, from one
    forward and one backward.

    Without stage gradients the forward records a graph only from the target layer on, as the
    Explainer does; with them it records the whole forward, since the backward has to reach the
    shallowest stage."""
    layers = _layers(model, images)
    stage_out: list = [None] * len(layers.stages)
    target_out: list = []
    # name -> [(call, role, stage index)]: a module may run several times a forward (Lite0's
    # '_swish'), and the target may be a stage's module too ('stages' on B's CNN).
    wanted: dict[str, list] = {}
    for k, stage in enumerate(layers.stages):
        wanted.setdefault(stage.ref.name, []).append((stage.ref.call, "stage", k))
    wanted.setdefault(layers.target.ref.name, []).append((layers.target.ref.call, "target", -1))

    def keep(output, role, k):
        """Keep what the backward needs; the returned copy runs on, so that later in-place ops
        (ReLU6 in EfficientNet) never touch a kept tensor."""
        if role == "stage":
            stage_out[k] = output if stage_grads else output.detach().clone()
            return output.clone() if stage_grads else output
        if not stage_grads:
            # As the Explainer: the graph starts at the target layer.
            output = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        target_out.append(output)
        return output.clone()

    def make_hook(actions):
        calls = [0]

        def hook(module, inputs, output):
            call, calls[0] = calls[0], calls[0] + 1
            # Stages first: they must see the output as the module produced it.
            for _, role, k in sorted((a for a in actions if a[0] == call), key=lambda a: a[1]):
                output = keep(output, role, k)
            return output

        return hook

    handles = [
        model.get_submodule(name).register_forward_hook(make_hook(actions))
        for name, actions in wanted.items()
    ]
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        # A detached alias: the tensor itself would let an output saved by its own grad_fn
        # hold that grad_fn, a cycle that keeps every graph alive (25 MB a batch on B).
        return tensor.detach()

    try:
        grad_mode = torch.enable_grad() if stage_grads else torch.no_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), grad_mode:
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    with torch.enable_grad():
        score = logits.gather(1, targets.view(-1, 1)).sum()
        wrt = [*stage_out, target_out[0]] if stage_grads else [target_out[0]]
        grads = torch.autograd.grad(score, wrt)
    target = target_out[0].detach().float()
    cam = cams.gradcam(target, grads[-1].float())
    activations = [a.detach().float() for a in stage_out]
    stage_grads_out = [g.float() for g in grads[:-1]] if stage_grads else None
    return Forward(activations, stage_grads_out, cam, saved[0])


# -- the chain with a replaceable stage map ---------------------------------------------------


def carry(fwd: Forward, stage_map, size, guide: str = "cam") -> torch.Tensor:
    """GE with S_k = ``stage_map(A_k, G_k, guide_k)``: the local weighting, the chain step and
    min-max as gradex's defaults. ``guide``: the CAM or the running chain map ('chain'), upsampled
    to the stage, for the maps that weigh channels by their agreement with it."""
    g = fwd.cam
    windows = local_windows(g.shape[-2:])
    for k in reversed(range(len(fwd.activations))):
        activation = fwd.activations[k]
        source = g if guide == "chain" else fwd.cam
        guide_map = F.interpolate(
            source, size=tuple(activation.shape[-2:]), mode="bilinear", align_corners=False
        )
        grad = fwd.grads[k] if fwd.grads is not None else None
        s = stage_map(activation, grad, guide_map)
        s, weight = local_weighting(s, s.amax(dim=(1, 2, 3)).clamp_min(0), windows)
        g = upsample_multiply(g, s, weight)
    g = F.interpolate(g, size=tuple(size), mode="bilinear", align_corners=False)
    return minmax_maps(g)


def channel_sum(activation, grad, guide):
    """GE's own S_k (to check ``carry`` against the Explainer)."""
    return activation.sum(dim=1, keepdim=True)


def agreement_weights(activation, guide):
    """(B,C,1,1) Pearson correlation over positions of each channel with the guide map: signed,
    and blind to a channel's scale, so a channel votes by where it fires, not by how strongly."""
    a = activation - activation.mean(dim=(2, 3), keepdim=True)
    u = guide - guide.mean(dim=(2, 3), keepdim=True)
    covariance = (a * u).sum(dim=(2, 3), keepdim=True)
    norms = (
        a.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        * u.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    )
    return torch.where(norms > 0, covariance / norms.clamp_min(1e-30), 0.0)


def agreement(activation, grad, guide):
    return (agreement_weights(activation, guide) * activation).sum(dim=1, keepdim=True).relu()


def stage_gradcam(activation, grad, guide):
    return cams.gradcam(activation, grad)


def stage_layercam(activation, grad, guide):
    return cams.layercam(activation, grad)


def stage_hirescam(activation, grad, guide):
    """HiResCAM at the stage: Σ_c G_c A_c, each position's first-order share of the score. Signed
    per position (not per channel), so a stage cancels exactly where the layers above it do not
    use what it fired; on a random model the gradient, and so the map, is random."""
    return cams.hirescam(activation, grad)


def sign_agreement(activation, grad, guide):
    """relu(Σ_c G_c A_c) / Σ_c |G_c A_c|: the share of the stage's contributions to the score at
    each position that push it up (1: all agree, 0: they cancel or oppose). Free of the
    activations' magnitude, the object outline that a random CNN shares with the trained one;
    what is left is the sign pattern of the model's own gradient."""
    contribution = grad * activation
    magnitude = contribution.abs().sum(dim=1, keepdim=True)
    # A floor relative to the stage's largest magnitude: where nothing contributes, the share
    # is 0, not the ratio of two rounding errors.
    floor = (SIGN_FLOOR * magnitude.amax(dim=(2, 3), keepdim=True)).clamp_min(1e-30)
    return contribution.sum(dim=1, keepdim=True).relu() / (magnitude + floor)


def gate(stage_map):
    """GE's S_k times ``stage_map`` scaled to [0, 1]: GE's sharpening where the class-sensitive
    map says the model uses the stage, none elsewhere."""

    def gated(activation, grad, guide):
        weight = minmax_maps(stage_map(activation, grad, guide))
        return activation.sum(dim=1, keepdim=True) * weight

    return gated


def sign_gate(power):
    """GE's S_k times the sign agreement (already in [0, 1], kept as it is: min-max would
    stretch a stage where nothing agrees) to ``power``: a higher power lets the gradient's sign
    pattern outweigh the activations' shape."""

    def gated(activation, grad, guide):
        return (
            activation.sum(dim=1, keepdim=True) * sign_agreement(activation, grad, guide) ** power
        )

    return gated


def _carried(stage_map, guide="cam", stage_grads=False):
    def make(model, images, targets):
        fwd = forward(model, images, targets, stage_grads)
        return carry(fwd, stage_map, images.shape[-2:], guide)

    return make


def _explainer_map(gradual: bool):
    def make(model, images, targets):
        return Explainer(model, gradual=gradual)(images, target=targets).saliency

    return make


# name -> (map function, whether it needs every stage's gradient)
VARIANTS = {
    "gradcam": (_explainer_map(False), False),
    "ge": (_explainer_map(True), False),
    "agree": (_carried(agreement), False),
    "agree-chain": (_carried(agreement, guide="chain"), False),
    "stage-gradcam": (_carried(stage_gradcam, stage_grads=True), True),
    "stage-layercam": (_carried(stage_layercam, stage_grads=True), True),
    "stage-hirescam": (_carried(stage_hirescam, stage_grads=True), True),
    "ge-agree-gate": (_carried(gate(agreement)), False),
    "ge-gradcam-gate": (_carried(gate(stage_gradcam), stage_grads=True), True),
    "ge-hirescam-gate": (_carried(gate(stage_hirescam), stage_grads=True), True),
    "ge-sign-gate": (_carried(sign_gate(1), stage_grads=True), True),
    "ge-sign-gate-sq": (_carried(sign_gate(2), stage_grads=True), True),
}


def in_batches(make, model, images, targets, batch):
    return torch.cat(
        [
            make(model, images[i : i + batch], targets[i : i + batch])
            for i in range(0, images.shape[0], batch)
        ]
    )


# -- testbed B --------------------------------------------------------------------------------


def evaluate_b(seed, names, data, grids, args, log) -> dict:
    """Per variant: per-image scores on testbed B for the CNN trained with ``seed``."""
    model = load_model(seed)
    step = max(1, data.images.shape[-1] * data.images.shape[-2] // 224)  # RISE's 224 steps
    few = slice(0, args.faithfulness)
    # The protocol's randomisation images are the first of the larger robustness set: per-image
    # Spearman values do not depend on the batch, so one run gives both.
    sane = slice(0, max(args.sanity_images, args.sanity_more))
    everything = slice(0, args.images)
    out = {}
    for name in names:
        make = VARIANTS[name][0]
        log(f"B seed {seed}: {name}")
        maps = in_batches(make, model, data.images[everything], data.labels[everything], BATCH)
        cells = [in_batches(make, model, grids.images, grids.labels[:, c], BATCH) for c in range(4)]
        localisation = torch.cat(
            [
                metrics.grid_localisation(m, torch.full((m.shape[0],), c))
                for c, m in enumerate(cells)
            ]
        )
        faith = {
            mode: metrics.deletion_insertion(
                model, data.images[few], maps[few], data.labels[few], mode, step
            )[0]
            for mode in ("deletion", "insertion")
        }
        labels = data.labels[sane]

        def explain(m, x, make=make, labels=labels):
            return make(m, x, labels)

        steps = metrics.cascading_randomisation(
            model, explain, data.images[sane], SANITY_LAYERS, args.randomisation_seed
        )
        out[name] = {
            "energy_in_mask": metrics.energy_in_mask(maps, data.masks[everything]),
            "grid_localisation": localisation,
            "deletion_auc": faith["deletion"],
            "insertion_auc": faith["insertion"],
            "sanity_spearman": steps[-1]["spearman"][: args.sanity_images],
            "sanity_spearman_more": steps[-1]["spearman"],
            "sanity_steps": {s["randomised"]: float(s["spearman"].mean()) for s in steps},
        }
    return out


# -- testbed A --------------------------------------------------------------------------------


def evaluate_a(names, args, log) -> dict:
    """Per variant: grid localisation of every cell's class on EfficientNet-Lite0 photo grids."""
    from gradex.evaluation.photo_testbed import CROPS_SEED
    from gradex.evaluation.photo_testbed import GRIDS_SEED as PHOTO_GRIDS_SEED
    from gradex.evaluation.photos import make_crops
    from gradex.evaluation.photos import make_grids as make_photo_grids
    from gradex.models import load_lite0

    model = load_lite0()
    crops = make_crops(model, args.crops_per_photo, CROPS_SEED)
    grids = make_photo_grids(crops, args.photo_grids, PHOTO_GRIDS_SEED)
    out = {}
    for name in names:
        log(f"A photos: {name}")
        make = VARIANTS[name][0]
        scores = [
            metrics.grid_localisation(
                in_batches(make, model, grids.images, grids.labels[:, c], PHOTO_BATCH),
                torch.full((grids.images.shape[0],), c),
            )
            for c in range(4)
        ]
        out[name] = {"grid_localisation": torch.cat(scores)}
    return out


# -- cost -------------------------------------------------------------------------------------


def cost(names, reps) -> dict:
    """ms per batch of 64 on B's CNN (median, interleaved), and the bytes each variant holds
    beyond the stage channel sums GE keeps: full stage activations (until the CAM exists) and
    the tensors the forward saved for the backward."""
    from timing import time_interleaved

    model = load_model(0)
    data = make_images(BATCH, IMAGES_SEED)
    x, y = data.images, data.labels
    times = time_interleaved({n: (lambda n=n: VARIANTS[n][0](model, x, y)) for n in names}, reps)
    out = {}
    for name in names:
        stage_grads = VARIANTS[name][1]
        fwd = forward(model, x, y, stage_grads)
        full = sum(a.numel() * 4 for a in fwd.activations)
        sums = sum(a[:, :1].numel() * 4 for a in fwd.activations)
        keeps_full = name not in ("gradcam", "ge")
        out[name] = {
            **times[name],
            "kept_activation_bytes": full if keeps_full else (sums if name == "ge" else 0),
            "saved_for_backward_bytes": forward(model, x, y, stage_grads).saved_bytes,
        }
    return out


# -- report -----------------------------------------------------------------------------------


def mean(t) -> float:
    return float(torch.as_tensor(t).double().mean())


def median(t) -> float:
    return float(torch.as_tensor(t).double().median())


def goals(b_seed: dict, name: str) -> dict:
    """The issue's goals for one variant on one seed of testbed B."""
    ref, ge, row = b_seed["gradcam"], b_seed["ge"], b_seed[name]
    gain_ge = mean(ge["energy_in_mask"]) - mean(ref["energy_in_mask"])
    gain = mean(row["energy_in_mask"]) - mean(ref["energy_in_mask"])
    deletion = paired_difference(row["deletion_auc"], ge["deletion_auc"])
    insertion = paired_difference(row["insertion_auc"], ge["insertion_auc"])
    return {
        "sanity": mean(row["sanity_spearman"]) <= mean(ref["sanity_spearman"]) + 0.05,
        "sanity_more": mean(row["sanity_spearman_more"])
        <= mean(ref["sanity_spearman_more"]) + 0.05,
        "sanity_more_vs_gradcam": format_difference(
            paired_difference(row["sanity_spearman_more"], ref["sanity_spearman_more"])
        ),
        "energy_gain_80": gain >= 0.8 * gain_ge,
        "grid_gain_80": mean(row["grid_localisation"]) - mean(ref["grid_localisation"])
        >= 0.8 * (mean(ge["grid_localisation"]) - mean(ref["grid_localisation"])),
        # Not worse than GE beyond the interval: the paired interval of the difference must
        # reach the no-change side.
        "deletion": deletion["ci_low"] <= 0,
        "insertion": insertion["ci_high"] >= 0,
        "deletion_vs_ge": format_difference(deletion),
        "insertion_vs_ge": format_difference(insertion),
    }


def summarise(b: dict, a: dict | None, costs: dict, names) -> dict:
    table = {}
    for name in names:
        row = {
            "sanity_spearman": {s: mean(b[s][name]["sanity_spearman"]) for s in b},
            "sanity_spearman_more": {s: mean(b[s][name]["sanity_spearman_more"]) for s in b},
            "energy_in_mask": mean(torch.cat([b[s][name]["energy_in_mask"] for s in b])),
            "grid_B_mean": mean(torch.cat([b[s][name]["grid_localisation"] for s in b])),
            "grid_B_median": median(torch.cat([b[s][name]["grid_localisation"] for s in b])),
            "deletion_auc": mean(torch.cat([b[s][name]["deletion_auc"] for s in b])),
            "insertion_auc": mean(torch.cat([b[s][name]["insertion_auc"] for s in b])),
            "goals": {s: goals(b[s], name) for s in b},
            "sanity_steps": {s: b[s][name]["sanity_steps"] for s in b},
            **({"cost": costs[name]} if name in costs else {}),
        }
        if a:
            row["grid_A_mean"] = mean(a[name]["grid_localisation"])
            row["grid_A_median"] = median(a[name]["grid_localisation"])
        table[name] = row
    return table


def markdown(table: dict, command: str, host: dict, args) -> str:
    seeds = list(next(iter(table.values()))["sanity_spearman"])
    head = (
        ["variant"]
        + [f"sanity ρ s{s}" for s in seeds]
        + [f"ρ ({args.sanity_more}) s{s}" for s in seeds]
        + ["energy in mask", "grid B mean", "deletion", "insertion"]
        + ["grid A mean / median", "ms / 64 (× GE)", "kept MB"]
    )
    ge_ms = table.get("ge", {}).get("cost", {}).get("median_ms")
    lines = [
        "# Class-sensitive GE stage weighting: sanity and localisation",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {host['cpu']}, {host['threads']} thread(s), torch "
        f"{host['versions'].get('torch')}. Testbed B: {args.images} images, {args.grids} grids, "
        f"deletion/insertion on {args.faithfulness}, randomisation on {args.sanity_images} (the "
        f"protocol) and {args.sanity_more} (the first {args.sanity_more}) per "
        f"seed (the first of {args.pool} generated); testbed A: {args.photo_grids} photo grids "
        f"({args.crops_per_photo} crops per photo at "
        "most). Sanity ρ: Spearman between the trained and the fully randomised model's maps "
        f"(re-initialisation seed {args.randomisation_seed}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for name, row in table.items():
        cost_row = row.get("cost")
        ms = "–"
        kept = "–"
        if cost_row:
            ratio = f" ({cost_row['median_ms'] / ge_ms:.1f}×)" if ge_ms else ""
            ms = f"{cost_row['median_ms']:.1f}{ratio}"
            total = cost_row["kept_activation_bytes"] + cost_row["saved_for_backward_bytes"]
            kept = f"{total / 2**20:.1f}"
        grid_a = (
            f"{row['grid_A_mean']:.3f} / {row['grid_A_median']:.3f}"
            if "grid_A_mean" in row
            else "–"
        )
        cells = (
            [name]
            + [f"{row['sanity_spearman'][s]:.3f}" for s in seeds]
            + [f"{row['sanity_spearman_more'][s]:.3f}" for s in seeds]
            + [
                f"{row['energy_in_mask']:.3f}",
                f"{row['grid_B_mean']:.3f}",
                f"{row['deletion_auc']:.3f}",
                f"{row['insertion_auc']:.3f}",
                grid_a,
                ms,
                kept,
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Kept MB: full stage activations held until the CAM exists, or GE's channel sums, plus "
        "the tensors the forward saved for the backward (64 images of B).",
        "",
        "## Goals per seed (testbed B)",
        "",
        "Sanity: ρ ≤ Grad-CAM's + 0.05. Energy / grid: ≥ 80 % of GE's gain over Grad-CAM. "
        "Deletion / insertion: the paired 95 % interval of (variant − GE) reaches no change.",
        "",
        f"| variant | seed | sanity (16) | sanity ({args.sanity_more}): ρ − Grad-CAM's | "
        "energy ≥ 80 % | grid B ≥ 80 % | deletion vs GE | insertion vs GE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    yes = {True: "yes", False: "**no**"}
    for name, row in table.items():
        if name in ("gradcam", "ge"):
            continue
        for s, g in row["goals"].items():
            lines.append(
                f"| {name} | {s} | {yes[g['sanity']]} | "
                f"{g['sanity_more_vs_gradcam']} {yes[g['sanity_more']]} | "
                f"{yes[g['energy_gain_80']]} | "
                f"{yes[g['grid_gain_80']]} | {g['deletion_vs_ge']} {yes[g['deletion']]} | "
                f"{g['insertion_vs_ge']} {yes[g['insertion']]} |"
            )
    return "\n".join(lines + goals_a(table)) + "\n"


def goals_a(table: dict) -> list[str]:
    """Testbed A's goal: grid localisation keeps >= 80 % of GE's gain over Grad-CAM."""
    if "grid_A_mean" not in table.get("ge", {}) or "grid_A_mean" not in table.get("gradcam", {}):
        return []
    base = table["gradcam"]["grid_A_mean"]
    needed = base + 0.8 * (table["ge"]["grid_A_mean"] - base)
    lines = [
        "",
        "## Goal on testbed A (photo grids)",
        "",
        f"Grid localisation mean ≥ Grad-CAM's + 80 % of GE's gain = {needed:.3f}.",
        "",
        "| variant | grid A mean | met |",
        "| --- | --- | --- |",
    ]
    for name, row in table.items():
        if name not in ("gradcam", "ge"):
            met = "yes" if row["grid_A_mean"] >= needed else "**no**"
            lines.append(f"| {name} | {row['grid_A_mean']:.3f} | {met} |")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=256, help="scored for energy in mask")
    parser.add_argument(
        "--pool",
        type=int,
        default=1000,
        help="images generated (the evaluation's 1000, so that the first ones are its images)",
    )
    parser.add_argument("--grids", type=int, default=64)
    parser.add_argument("--faithfulness", type=int, default=32)
    parser.add_argument("--sanity-images", type=int, default=16)
    parser.add_argument(
        "--sanity-more",
        type=int,
        default=64,
        help="the randomisation check again on this many images (16 are noisy)",
    )
    parser.add_argument(
        "--randomisation-seed",
        type=int,
        default=0,
        help="the re-initialisation's seed (0: the evaluation's)",
    )
    parser.add_argument("--photo-grids", type=int, default=8, help="0 skips testbed A")
    parser.add_argument("--crops-per-photo", type=int, default=CROPS_PER_PHOTO)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cost-reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "sanity_weighting")
    parser.add_argument(
        "--rerender", action="store_true", help="only rewrite --out's .md from its .json"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seed 0, 64 images, 8 grids, 4 for deletion/insertion, 8 and 16 for randomisation, "
        "1 photo grid of 4 crops per photo (about a minute)",
    )
    args = parser.parse_args(argv)
    if args.quick:  # not the evaluation's images: make_images(64) orders its classes otherwise
        args.seeds, args.images, args.pool, args.grids = [0], 64, 64, 8
        args.faithfulness, args.sanity_images, args.sanity_more = 4, 8, 16
        args.photo_grids, args.crops_per_photo, args.cost_reps = 1, 4, 1
    if args.pool < max(args.images, args.faithfulness, args.sanity_images, args.sanity_more):
        parser.error("--pool must be at least --images, --faithfulness and the sanity counts")
    # The references first: every goal is measured against them.
    args.variants = ["gradcam", "ge"] + [v for v in args.variants if v not in ("gradcam", "ge")]
    return args


def rerender(path: Path) -> None:
    """The .md again from a results .json (after a change of the report's layout)."""
    payload = json.loads(path.read_text())
    args = argparse.Namespace(**payload["args"])
    report = markdown(payload["variants"], payload["command"], payload["machine"], args)
    path.with_suffix(".md").write_text(report)
    print(report)


def main(argv=None):
    args = parse_args(argv)
    if args.rerender:
        rerender(args.out.with_suffix(".json"))
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(text):
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)

    log(f"making {args.pool} images and {args.grids} grids")
    # make_images draws the class order from the count: the evaluation's 1000 make its first
    # 16 (randomisation) and 32 (deletion/insertion) images; --images takes the first of them.
    data = make_images(args.pool, IMAGES_SEED)
    grids = make_grids(args.grids, GRIDS_SEED)
    b = {seed: evaluate_b(seed, args.variants, data, grids, args, log) for seed in args.seeds}
    a = evaluate_a(args.variants, args, log) if args.photo_grids else None
    log("cost")
    costs = cost(args.variants, args.cost_reps)
    table = summarise(b, a, costs, args.variants)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python bench/sanity_weighting.py", *map(shlex.quote, given)])
    host = machine(torch.device("cpu"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": host, "args": vars(args) | {"out": str(args.out)}}
    args.out.with_suffix(".json").write_text(json.dumps(payload | {"variants": table}, indent=1))
    report = markdown(table, command, host, args)
    args.out.with_suffix(".md").write_text(report)
    print(report)
    log("done")


if __name__ == "__main__":
    main()
