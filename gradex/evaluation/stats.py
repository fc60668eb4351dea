"""Summaries with uncertainty: mean, median, quartiles and seeded bootstrap intervals."""

from __future__ import annotations

import torch

RESAMPLES = 2000


def _bootstrap_means(values: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = values.shape[0]
    index = torch.randint(0, n, (RESAMPLES, n), generator=generator)
    return values.double()[index].mean(dim=1)


def summary(values, seed: int = 0) -> dict:
    """Mean (with its 95 % percentile-bootstrap interval), median and quartiles of ``values``."""
    values = torch.as_tensor(values).double().flatten().cpu()
    if values.numel() == 0:
        raise ValueError("values is empty")
    means = _bootstrap_means(values, seed)
    q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {
        "n": values.numel(),
        "mean": float(values.mean()),
        "ci_low": float(torch.quantile(means, 0.025)),
        "ci_high": float(torch.quantile(means, 0.975)),
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
    }


def paired_difference(a, b, seed: int = 0) -> dict:
    """Mean of ``a - b`` over the same images, with its 95 % paired-bootstrap interval, and
    whether the interval excludes 0."""
    a = torch.as_tensor(a).double().flatten().cpu()
    b = torch.as_tensor(b).double().flatten().cpu()
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same length), got {a.numel()} and {b.numel()}")
    result = summary(a - b, seed)
    result["excludes_0"] = result["ci_low"] > 0 or result["ci_high"] < 0
    return result


def format_mean(s: dict) -> str:
    """'mean [low, high]' of a ``summary``."""
    return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def format_difference(d: dict, digits: int = 3) -> str:
    """'+mean [+low, +high]' (signed) of a ``paired_difference`` or ``summary``."""
    return f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"
