"""Per-image time of `gradex explain`: the explanation against drawing and writing the outputs.

    PYTHONPATH=. python bench/bench_explain_cli.py [--images 16] [gradex explain flags...]

Explains --images sample photos (gradex.dataset.samples: crops of the demo photos and synthetic
images) at batch 8 twice in one process and reports the second run (imports and first-call
costs out): the whole command per image, the time inside gradex.viz's panel function, and the
report's own timings (warm-up batch apart, steady-state explanation, outputs). Run it on the
tree before and after a change, alternating, to compare on one machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gradex import cli, viz
from gradex.dataset.samples import write_sample_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    args, explain_flags = parser.parse_known_args()
    spent = {"panels": 0.0}
    # The panel function by either name: matplotlib's save_panel before, Pillow's panel_png now.
    for name in ("save_panel", "panel_png"):
        if hasattr(viz, name):
            original = getattr(viz, name)

            def timed(*a, _original=original, **k):
                tick = time.perf_counter()
                result = _original(*a, **k)
                spent["panels"] += time.perf_counter() - tick
                return result

            setattr(viz, name, timed)
            if hasattr(cli, name):  # imported by name into the command line's module
                setattr(cli, name, timed)
    root = Path(tempfile.mkdtemp(prefix="gradex-bench-cli-"))
    files = [str(p) for p in write_sample_images(root / "in", args.images, seed=0)]
    for run in range(2):
        spent["panels"] = 0.0
        out = root / f"out{run}"
        tick = time.perf_counter()
        cli.main(["explain", *files, "--out", str(out), "--batch-size", "8", *explain_flags])
        total = time.perf_counter() - tick
    report = json.loads((out / "results.json").read_text())
    n = len(report["images"])
    print(
        json.dumps(
            {
                "images": n,
                "command_ms_per_image": round(1000 * total / n, 1),
                "panel_ms_per_image": round(1000 * spent["panels"] / n, 1),
                "timings": report["timings"],
            }
        )
    )


if __name__ == "__main__":
    main()
