"""End-to-end benchmark: gradex against no-grad inference and the peers, in one process.

    python bench/bench_e2e.py                              # defaults for the device found
    python bench/bench_e2e.py --device cpu --models efficientnet_lite0 --reps 40
    python bench/bench_e2e.py --quick --out /tmp/bench     # smoke test: tiny model, 2 reps

The same as ``gradex bench`` (see gradex/benchmark/), writing to bench/results/ by default:
e2e_<device>.{json,md,png}. Peers: pip install ".[bench]"; missing ones are reported and skipped.
"""

import sys
from pathlib import Path

from gradex.benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out=Path(__file__).parent / "results"))
