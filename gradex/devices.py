"""The device a command-line surface runs on, from its ``--device`` flag."""

from __future__ import annotations

import torch


def parse_device(name: str) -> torch.device:
    """``auto`` (CUDA where there is one, else the CPU) or a torch device string, checked to
    exist here; a bad one is refused naming --device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name}: {error}") from error
    if device.type == "meta":
        raise ValueError(
            f"--device {name}: meta tensors hold shapes, not values, so there is nothing to "
            "explain; use cpu or cuda"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"--device {name}: no {device.type} device is available here")
    return device
