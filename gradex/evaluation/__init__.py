"""``gradex evaluate``: every method with and without GE on the evaluation testbeds, the
controls of the protocol, and a markdown report with tables and figures.

So far: testbed B (synthetic images with exact masks, gradex.synthetic). Testbed A (photo grids
for the embedded model), excitation backprop and the LayerCAM fusion baseline are still to come.
"""

from .harness import main

__all__ = ["main"]
