"""The end-to-end benchmark harness: ``gradex bench`` and ``bench/bench_e2e.py``.

One process, one run, one device: no-grad inference of each model (the floor), gradex (eager fp32,
bf16 + channels_last, the static/graph mode) and the peers users run today (pytorch-grad-cam's
GradCAM and LayerCAM, Captum's LayerGradCam, TorchCAM's GradCAM), each timed on the same batch
with latency p50/p99, images/s and peak memory, after checking that gradex's coarse Grad-CAM
agrees with each peer's on the same layer. Writes JSON, a markdown table and a PNG plot.

The peers are optional (``pip install "gradex[bench]"``); the harness says which it could not
import and times the rest.
"""

from .harness import main, run

__all__ = ["main", "run"]
