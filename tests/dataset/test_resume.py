"""Exactly once through a ``kill -9``: the killed job's rerun finishes the rest, and the output
equals an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time

from gradex.dataset.shards import STAGING_DIR

from .outputs import assert_exactly_once, rows, uint8_map_difference


def _start(src, out):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradex",
            "explain-dataset",
            str(src),
            "--out",
            str(out),
            "--shard-size",
            "16",
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait_for_shards(out, count, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(out.glob("part-*.parquet"))) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"the job ended early: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {count} shards within {timeout} s")


def test_kill_9_mid_job_then_rerun_gives_every_image_once(sample_root, local_output, tmp_path):
    out = tmp_path / "maps"
    job = _start(sample_root, out)
    _wait_for_shards(out, 3, job)
    os.killpg(job.pid, signal.SIGKILL)  # the job and its decoding workers, mid-shard
    job.wait()
    done_at_kill = len(list(out.glob("part-*.parquet")))
    assert done_at_kill < 16  # killed before the end: 243 images are 16 shards of 16

    rerun = _start(sample_root, out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    assert f"{done_at_kill} shard(s) were already done" in stdout.decode()
    assert_exactly_once(sample_root, out)
    assert not list((out / STAGING_DIR).iterdir())

    # Equal to the uninterrupted run (shards of 64 there), row by row.
    resumed = {r["id"]: r for r in rows(out).to_pylist()}
    for row in rows(local_output).to_pylist():
        other = resumed[row["id"]]
        assert other["target"] == row["target"]
        assert other["top_classes"] == row["top_classes"]
        assert uint8_map_difference(other["saliency"], row["saliency"]) <= 1
