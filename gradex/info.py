"""``python -m gradex.info``: what this install of gradex can run, and why not where it cannot."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import ops


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> str:
    lines = [
        f"gradex {_version('gradex')}  python {platform.python_version()}  "
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})  "
        f"triton {_version('triton')}",
        f"CPU threads: {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"CUDA devices: {', '.join(names)}")
    else:
        lines.append("CUDA devices: none visible")
    lines.append("")
    lines.append("backends:")
    for name, (available, reason) in ops.backends().items():
        lines.append(f"  {name:<10} {'yes' if available else 'no ':<4} {reason}")
    lines.append("")
    device_types = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    for device_type in device_types:
        chosen = ops.resolve_backend("auto", torch.device(device_type)).name
        lines.append(f"auto on {device_type} tensors: {chosen}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
