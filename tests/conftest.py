import os

# Triton kernels run on CPU tensors in Triton's interpreter, which reads this before any kernel
# is launched: CI has no GPU. On a GPU machine set TRITON_INTERPRET=0 to compile them for the
# card instead (bench/gpu_check.sh does).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


def pytest_runtest_setup(item):
    # Asked at run time, never at collection, so collecting the tests touches no GPU.
    if item.get_closest_marker("needs_cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_stages(batch, sizes, channels=(3, 5, 7, 4, 6), generator=None, dtype=torch.float32):
    """Non-negative (post-ReLU-like) activations, shallow to deep, never all zero."""
    return [
        torch.rand(batch, channels[k % len(channels)], h, w, generator=generator).to(dtype)
        for k, (h, w) in enumerate(sizes)
    ]
