"""``gradex serve``'s options: the command line and the checked settings it becomes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ..cams import METHOD_CHOICES
from ..models import EMBEDDED_MODEL, TIMM_PREFIX

AMP_CHOICES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# On a CPU a convolution costs about the same per image at any batch size, and a large batch
# falls out of the caches: bench/bench_serve_ceiling.py measured EfficientNet-Lite0 on a 2-core
# EPYC at 1.28-1.39x batch 1's images/s at batch 2, 1.13-1.18x at 4, 0.78-0.88x at 8. On a GPU a
# batch of 1 leaves the card idle between launches, and 32 fills it for CNNs of this size.
DEFAULT_MAX_BATCH = {"cpu": 2, "cuda": 32}


@dataclass(frozen=True)
class ServeOptions:
    model: str = EMBEDDED_MODEL
    weights: str | None = None
    labels: str | None = None  # a file of class names (gradex.labels)
    method: str = "gradcam"
    device: str = "auto"
    amp: str = "none"
    name: str | None = None  # the name in the URLs; the model's name when None
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int | None = None  # None: DEFAULT_MAX_BATCH for the device
    max_wait_ms: float = 5.0
    max_queue: int = 256
    batching: bool = True
    max_body_mb: float = 16.0
    max_image_pixels: int = 40_000_000
    top_k: int = 5
    warmup: int | None = None  # explanations per batch size before ready; None: 1 CPU, 3 GPU

    @property
    def model_name(self) -> str:
        # timm:NAME's prefix says where the model comes from; a URL has no room for the ':'.
        return self.name or self.model.removeprefix(TIMM_PREFIX)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def batch_limit(self, device: torch.device) -> int:
        if not self.batching:
            return 1
        return self.max_batch or DEFAULT_MAX_BATCH.get(device.type, 8)

    def check(self) -> ServeOptions:
        """Each bad setting refused by its flag's name, before anything is loaded."""
        for flag, value, low in (
            ("--port", self.port, 1),
            ("--max-queue", self.max_queue, 1),
            ("--max-image-pixels", self.max_image_pixels, 1),
            ("--top-k", self.top_k, 1),
        ):
            if value < low:
                raise ValueError(f"{flag} must be at least {low}, got {value}")
        if self.port > 65535:
            raise ValueError(f"--port must be at most 65535, got {self.port}")
        if self.max_batch is not None and not 1 <= self.max_batch <= 1024:
            raise ValueError(f"--max-batch must be between 1 and 1024, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"--max-wait-ms must be between 0 and 10000, got {self.max_wait_ms}")
        if not self.max_body_mb > 0:
            raise ValueError(f"--max-body-mb must be positive, got {self.max_body_mb}")
        if self.warmup is not None and self.warmup < 1:
            raise ValueError(f"--warmup must be at least 1, got {self.warmup}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"--amp must be one of {sorted(AMP_CHOICES)}, got {self.amp!r}")
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ValueError(f"--name {self.model_name!r}: a model name has no '/' or ':'")
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"{EMBEDDED_MODEL} (embedded), a torchvision name, or timm:NAME",
    )
    parser.add_argument("--weights", help="local weights file for a torchvision or timm model")
    parser.add_argument(
        "--labels", help="class names, one a line in class-id order (or a JSON list or {id: name})"
    )
    parser.add_argument("--method", default="gradcam", choices=METHOD_CHOICES)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--amp", default="none", choices=sorted(AMP_CHOICES), help="autocast the forward"
    )
    parser.add_argument("--name", help="the model's name in the URLs (default: --model)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)"
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--max-batch",
        type=int,
        help="most images per batch (default: 2 on a CPU, 32 on a GPU)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more images once one has arrived",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="images waiting at most; past it requests get 503 with Retry-After",
    )
    parser.add_argument(
        "--no-batching", action="store_true", help="one image per model call (a baseline)"
    )
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body")
    parser.add_argument(
        "--max-image-pixels", type=int, default=40_000_000, help="largest image (width x height)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes per answer by default")
    parser.add_argument(
        "--warmup", type=int, help="explanations per batch size before ready (1 CPU, 3 GPU)"
    )


def from_args(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        model=args.model,
        weights=args.weights,
        labels=args.labels,
        method=args.method,
        device=args.device,
        amp=args.amp,
        name=args.name,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        batching=not args.no_batching,
        max_body_mb=args.max_body_mb,
        max_image_pixels=args.max_image_pixels,
        top_k=args.top_k,
        warmup=args.warmup,
    ).check()
