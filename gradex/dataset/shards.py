"""DST on disk: shards that appear complete or not at all, so a killed job loses at most the
shards it was writing, and a rerun does exactly the rest.

Layout (pyarrow, pandas, Ray and DuckDB read DST as one dataset of the rows: they skip names
starting with ``_`` or ``.``)::

    DST/part-00000.parquet ...        the rows, shard k = items k*S .. (k+1)*S - 1 of the job
    DST/_errors/part-00000.parquet    that shard's unreadable images, when it had any
    DST/_gradex_job.json              the job's fingerprint: SRC's items and every option
    DST/.staging/                     shards being written (emptied at every start)
    DST/.lock                         held while a job writes; a second job is refused

A shard is done when its row file exists. Its error file is written first and its row file
last, each by an atomic rename of a file that was fsync'ed in .staging; a rerun removes an error
file left by a kill before rewriting its shard, so every image ends up exactly once in the rows
or in the errors, whatever was killed when.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .choices import ERRORS_DIR
from .explaining import ExplainOptions
from .sources import Item

JOB_FILE = "_gradex_job.json"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def row_files(dst: Path) -> list[Path]:
    return sorted(dst.glob("part-*.parquet"))


def error_files(dst: Path) -> list[Path]:
    return sorted((dst / ERRORS_DIR).glob("part-*.parquet"))


def fingerprint(items: list[Item], options: ExplainOptions, shard_size: int) -> dict:
    """What decides every row of DST: a rerun must match it to resume."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.path, item.target, item.label]).encode())
        digest.update(b"\n")
    return {
        "items": len(items),
        "items_sha256": digest.hexdigest(),
        "shard_size": shard_size,
        "options": asdict(options),
    }


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable"
    return error.strerror or type(error).__name__


class OutputError(OSError):
    """DST cannot be written; the message names it, says why and what was kept."""


class Output:
    """DST for one job: checked writable, locked, fingerprinted; shards committed atomically."""

    def __init__(self, dst: str | Path, job: dict):
        self.dst = Path(dst)
        self.staging = self.dst / STAGING_DIR
        try:
            if self.dst.exists() and not self.dst.is_dir():
                raise OutputError(f"--out {self.dst}: exists and is not a folder")
            (self.dst / ERRORS_DIR).mkdir(parents=True, exist_ok=True)
            self.staging.mkdir(exist_ok=True)
            self._lock = open(self.dst / LOCK_FILE, "a")  # noqa: SIM115 (held until close())
        except OutputError:
            raise
        except OSError as error:
            raise OutputError(f"--out {self.dst}: {_describe(error)} ({error.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputError(
                f"--out {self.dst}: another gradex explain-dataset is writing there"
            ) from None
        self._check_job(job)
        # Shards a killed job was writing: never renamed, so never part of the output.
        for leftover in self.staging.iterdir():
            leftover.unlink()

    def _check_job(self, job: dict) -> None:
        path = self.dst / JOB_FILE
        if path.exists():
            try:
                recorded = json.loads(path.read_text())
            except (OSError, ValueError):
                recorded = None
            if recorded != job:
                self.close()
                raise OutputError(
                    f"--out {self.dst}: holds another job's output (other images or options); "
                    "give a new --out, or the same SRC and options to resume it"
                )
            return
        if row_files(self.dst):
            self.close()
            raise OutputError(
                f"--out {self.dst}: holds part-*.parquet files that no gradex job recorded; "
                "give a new --out"
            )
        self._publish(JOB_FILE, json.dumps(job, indent=1).encode())

    def close(self) -> None:
        self._lock.close()

    def done(self, shard: int) -> bool:
        return (self.dst / shard_name(shard)).exists()

    def _staged(self, name: str) -> Path:
        return self.staging / f"{name}.{os.getpid()}"

    def _publish(self, name: str, data: bytes | pa.Table) -> None:
        """Write ``data`` (bytes, or a table as Parquet) to .staging, fsync, rename to ``name``."""
        staged = self._staged(Path(name).name)
        try:
            with open(staged, "wb") as file:
                if isinstance(data, bytes):
                    file.write(data)
                else:
                    pq.write_table(data, file, compression="zstd")
                file.flush()
                os.fsync(file.fileno())
            final = self.dst / name
            os.replace(staged, final)
            _fsync_dir(final.parent)
        except OSError as error:
            staged.unlink(missing_ok=True)
            raise OutputError(
                f"--out {self.dst}: writing {name} failed: {_describe(error)} ({error.strerror}); "
                "finished shards are kept, rerun the same command to resume"
            ) from None

    def commit(self, shard: int, rows: list[pa.Table], errors: pa.Table | None, schema) -> None:
        """Shard ``shard``: its errors (if any), then its rows (possibly none), each atomically."""
        name = shard_name(shard)
        (self.dst / ERRORS_DIR / name).unlink(missing_ok=True)  # left by a killed run
        if errors is not None and errors.num_rows:
            self._publish(f"{ERRORS_DIR}/{name}", errors)
        table = pa.concat_tables(rows) if rows else schema.empty_table()
        self._publish(name, table)
