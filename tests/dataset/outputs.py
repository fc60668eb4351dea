"""Reading a job's output in tests, the way users would (pyarrow's dataset reader)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from gradex.dataset.shards import ERRORS_DIR
from gradex.dataset.sources import read_source
from gradex.dataset.table import ERROR_FIELDS


def rows(out: Path):
    return ds.dataset(out, format="parquet").to_table()


def errors(out: Path):
    folder = out / ERRORS_DIR
    files = sorted(folder.glob("*.parquet"))
    return (
        pa.schema(ERROR_FIELDS).empty_table()
        if not files
        else ds.dataset([str(f) for f in files], format="parquet").to_table()
    )


def assert_exactly_once(src: Path, out: Path) -> None:
    """Every item of SRC is in the rows or the errors, once; nothing else is."""
    expected = Counter(item.id for item in read_source(src))
    found = Counter(rows(out)["id"].to_pylist()) + Counter(errors(out)["id"].to_pylist())
    twice = [name for name, count in found.items() if count > 1]
    assert not twice, f"images written twice: {twice[:5]}"
    assert found == expected, (
        f"missing {sorted(set(expected) - set(found))[:5]}, "
        f"unexpected {sorted(set(found) - set(expected))[:5]}"
    )


def uint8_map_difference(a: bytes, b: bytes) -> int:
    """The largest difference, in 0..255 levels, between two stored uint8 maps."""
    return int(np.abs(np.frombuffer(a, np.uint8).astype(int) - np.frombuffer(b, np.uint8)).max())
