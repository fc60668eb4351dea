"""The Ray engine on a local Ray cluster started by the tests: the same output as the local
engine, and every image exactly once after an explainer actor is killed mid-run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra")

from gradex.dataset import explain_dataset  # noqa: E402

from .outputs import assert_exactly_once, errors, rows, uint8_map_difference  # noqa: E402


@pytest.fixture(scope="module")
def listing(sample_root, tmp_path_factory) -> Path:
    """A text file of 60 paths: samples from every folder, the broken files among them."""
    files = sorted(p for p in sample_root.rglob("*") if p.is_file() and "broken" not in p.parts)
    chosen = files[::4][:57] + sorted((sample_root / "broken").iterdir())
    path = tmp_path_factory.mktemp("ray") / "images.txt"
    path.write_text("".join(f"{p}\n" for p in chosen))
    return path


def test_the_ray_engine_writes_what_the_local_engine_writes(listing, tmp_path):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    explain_dataset(
        listing, local, shard_size=16, batch_size=8, workers=1, device="cpu", progress=False
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = explain_dataset(
            listing,
            distributed,
            shard_size=16,
            batch_size=8,
            device="cpu",
            engine="ray",
            progress=False,
        )
        assert ray.is_initialized()  # a cluster the caller started is left running
        # Ray reads DST as it is: the rows, not the errors table or the job's own files.
        assert ray.data.read_parquet(str(distributed)).count() == 57
        with pytest.raises(ValueError, match="--device cuda: the Ray cluster has no GPUs"):
            explain_dataset(listing, tmp_path / "gpu", device="cuda", engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert summary.explained == 57 and summary.errors == 3
    assert_exactly_once(listing, distributed)
    assert sorted(p.name for p in distributed.glob("part-*")) == sorted(
        p.name for p in local.glob("part-*")
    )
    assert errors(distributed).to_pylist() == errors(local).to_pylist()
    ours, theirs = rows(local).to_pylist(), rows(distributed).to_pylist()
    assert [r["id"] for r in ours] == [r["id"] for r in theirs]  # same rows, same order
    for a, b in zip(ours, theirs, strict=True):
        assert (a["target"], a["top_classes"]) == (b["target"], b["top_classes"])
        assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-4)
        for column in ("saliency", "cam"):
            assert uint8_map_difference(a[column], b[column]) <= 1, column


def _ray_pids(marker: str) -> list[int]:
    """Ray worker processes whose title (``ray::<what they run>``) holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if title.startswith("ray::") and marker in title:
                pids.append(int(entry.name))
    return pids


def test_an_actor_and_a_worker_killed_mid_run_lose_no_image_and_double_none(sample_root, tmp_path):
    listing = tmp_path / "images.txt"
    files = sorted(p for p in sample_root.rglob("*") if p.is_file())[:120]
    listing.write_text("".join(f"{p}\n" for p in files))
    out = tmp_path / "maps"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradex",
            "explain-dataset",
            str(listing),
            "--out",
            str(out),
            "--engine",
            "ray",
            "--shard-size",
            "16",
            "--batch-size",
            "8",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.parquet")):
            assert job.poll() is None, job.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard within 300 s"
            time.sleep(0.1)
        # The explainer actor (Ray Data's MapWorker), and the decoding task's worker when one
        # is running at that moment.
        actors = _ray_pids("MapWorker")
        assert actors, "no Ray Data actor process found to kill"
        for pid in actors + _ray_pids("MapBatches(decode_batch)"):
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, stderr.decode()[-3000:]
    assert len(list(out.glob("part-*.parquet"))) == 8  # 120 images, 16 a shard
    assert_exactly_once(listing, out)
