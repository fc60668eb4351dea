"""``gradex evaluate``: every method with and without GE on the evaluation testbeds, the
controls of the protocol, and a markdown report with tables and figures.

Testbed A: photo grids for the embedded EfficientNet-Lite0 (photos.py, photo_testbed.py).
Testbed B: synthetic images with exact masks (gradex.synthetic, synthetic_testbed.py). The rows
both share (rows.py): the Grad-CAM family and excitation backprop with and without GE, GE as the
paper computes it and the ablations of gradex's defaults, the LayerCAM fusion peer
(baselines.py) and the controls.
"""

from .harness import main

__all__ = ["main"]
