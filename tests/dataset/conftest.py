import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="the dataset job needs pyarrow (the dataset extra)")

from gradex.dataset.samples import write_sample_images  # noqa: E402

SAMPLES = 240  # crops of the demo photos and synthetic images, in ImageFolder layout
BROKEN = {  # files a real dataset holds, each to land in the errors table with its reason
    "broken/truncated.jpg": "cannot read as an image",
    "broken/text.png": "cannot read as an image",
    # A grey image was refused here before issue 14; now it is converted, as in the CLI.
    "broken/strip.png": "an aspect ratio over the limit",
}


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("samples")
    write_sample_images(root, SAMPLES, seed=0)
    (root / "broken").mkdir()
    whole = next(root.rglob("*.jpg")).read_bytes()
    (root / "broken/truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "broken/text.png").write_text("not a picture\n")
    Image.new("RGB", (2, 400), (200, 10, 10)).save(root / "broken/strip.png")
    return root


@pytest.fixture(scope="session")
def local_output(sample_root, tmp_path_factory) -> Path:
    """The local engine's output over every sample, written once for the tests that read it."""
    from gradex.dataset import explain_dataset

    out = tmp_path_factory.mktemp("local") / "maps"
    explain_dataset(
        sample_root, out, shard_size=64, batch_size=8, workers=1, device="cpu", progress=False
    )
    return out


def _can_mount() -> bool:
    probe = Path("/tmp") / f"gradex-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """mount(size, read_only) -> a folder on a tmpfs of that size; unmounted afterwards."""
    if not _can_mount():
        pytest.skip(
            "mounting a tmpfs needs root (CAP_SYS_ADMIN): a full or read-only disk "
            "cannot be made here"
        )
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)
