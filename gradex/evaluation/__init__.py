"""``gradex evaluate``: every method with and without GE on the evaluation testbeds, the
controls of the protocol, and a markdown report with tables and figures.

So far: testbed B (synthetic images with exact masks, gradex.synthetic), with the LayerCAM
fusion baseline. Testbed A (photo grids for the embedded model) and excitation backprop are
still to come.
"""

from .harness import main

__all__ = ["main"]
