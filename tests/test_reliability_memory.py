"""Standing reliability check, memory: 2,000 calls of every method (and of a capture and a
StaticExplainer) on a tiny model, each in a process of its own, leave the resident memory flat
after warm-up and no excitation state alive."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gradex import cams, excitation

CALLS = 2000
WARMUP = 200
# Growth allowed after warm-up. A call that leaked its graph (D4: about 10 KiB a call here) would
# grow by about 21 MiB over the run; the allocator's own drift stays under 0.5 MiB.
MAX_GROWTH_MIB = 4.0
RUNS = [*cams.METHODS, *excitation.METHODS, "capture", "static contrastive excitation"]

SCRIPT = r"""
import gc, json, sys

import torch

sys.path.insert(0, sys.argv[2])
from models_zoo import TinyCNN

import gradex
from gradex import excitation


def rss_mib():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


torch.manual_seed(0)
torch.set_num_threads(1)
run, calls, warmup = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
model = TinyCNN().eval()
x = torch.randn(2, 3, 32, 32)
if run == "capture":
    explainer = gradex.Explainer(model)
    call = lambda k: explainer.capture(x)
elif run.startswith("static "):
    static = gradex.Explainer(model, method=run[len("static "):]).static(x)
    call = lambda k: static(x, target=[k % 10, 3])
else:
    explainer = gradex.Explainer(model, method=run)
    call = lambda k: explainer(x, target=None if k % 2 else [k % 10, 3])
for k in range(warmup):
    call(k)
gc.collect()
before = rss_mib()
for k in range(calls):
    call(k)
gc.collect()
after = rss_mib()
states = sum(type(o) is excitation._State for o in gc.get_objects())
print(json.dumps({"growth_mib": after - before, "states": states}))
"""


def _measure(run: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, run, str(Path(__file__).parent), str(CALLS), str(WARMUP)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if result.returncode != 0:
        return {"error": result.stderr[-3000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Every run's measurement. The processes run side by side, one per CPU core (each uses one
    thread), so the whole check costs about 2,000 calls' time per core."""
    workers = max(1, min(len(RUNS), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(RUNS, pool.map(_measure, RUNS), strict=True))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("run", RUNS)
def test_memory_stays_flat_over_many_calls(run, measured):
    result = measured[run]
    assert "error" not in result, result.get("error")
    assert result["states"] == 0, result
    assert result["growth_mib"] < MAX_GROWTH_MIB, result
