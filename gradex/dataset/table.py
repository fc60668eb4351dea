"""The output's columns, and reading the maps back.

One row per explained image. Maps are stored as the raw C-order bytes of a (S, S) uint8 or
float16 array (``binary`` columns): a quarter or half of float32, compressed by Parquet, and
readable by anything that reads Parquet. Their dtype and shape, the method, the layers, the model
and gradex's version are in the schema's metadata under ``gradex`` (JSON), so a file explains
itself. ``load_maps`` turns rows back into tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .explaining import BatchResult
from .sources import Item

METADATA_KEY = b"gradex"

ROW_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),  # the ImageFolder class folder, or the SRC table's label
    pa.field("target", pa.int32(), nullable=False),  # the explained class
    pa.field("target_name", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),  # its logit
    pa.field("prob", pa.float32(), nullable=False),  # its softmax probability
    pa.field("top_classes", pa.list_(pa.int32()), nullable=False),  # most probable first
    pa.field("top_probs", pa.list_(pa.float32()), nullable=False),
    pa.field("saliency", pa.binary(), nullable=False),  # the GE map (S, S), C order
    pa.field("cam", pa.binary(), nullable=False),  # the coarse map, upsampled to (S, S)
]
ERROR_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
]


def row_schema(metadata: dict) -> pa.Schema:
    return pa.schema(ROW_FIELDS, metadata={METADATA_KEY: json.dumps(metadata).encode()})


def error_schema(metadata: dict) -> pa.Schema:
    return pa.schema(ERROR_FIELDS, metadata={METADATA_KEY: json.dumps(metadata).encode()})


def rows_table(items: list[Item], result: BatchResult, class_names, schema) -> pa.Table:
    """A batch's rows; ``items[i]`` is the image of ``result``'s i-th entry."""
    targets = result.target.tolist()
    return pa.table(
        {
            "id": [item.id for item in items],
            "path": [item.path for item in items],
            "label": [item.label for item in items],
            "target": result.target,
            "target_name": [class_names[t] for t in targets],
            "score": result.score,
            "prob": result.prob,
            "top_classes": list(result.top_classes),
            "top_probs": list(result.top_probs),
            "saliency": [m.tobytes() for m in result.saliency],
            "cam": [m.tobytes() for m in result.cam],
        },
        schema=schema,
    )


def errors_table(failures: list[tuple[Item, str]], schema) -> pa.Table:
    return pa.table(
        {
            "id": [item.id for item, _ in failures],
            "path": [item.path for item, _ in failures],
            "reason": [reason for _, reason in failures],
        },
        schema=schema,
    )


def read_metadata(dst: str | Path) -> dict:
    """The job's metadata (method, layers, model, map dtype and shape, version) from DST."""
    import pyarrow.parquet as pq

    from .shards import row_files

    files = row_files(Path(dst))
    if not files:
        raise ValueError(f"{dst}: holds no gradex shards (part-*.parquet)")
    raw = pq.read_schema(files[0]).metadata or {}
    if METADATA_KEY not in raw:
        raise ValueError(f"{files[0]}: not written by gradex explain-dataset (no metadata)")
    return json.loads(raw[METADATA_KEY])


@dataclass
class Maps:
    ids: list[str]
    saliency: torch.Tensor  # (N, S, S) float32 in [0, 1]
    cam: torch.Tensor  # (N, S, S) float32 in [0, 1]
    target: torch.Tensor  # (N,) int64


def _decode(blobs: list[bytes], dtype: str, shape: list[int]) -> torch.Tensor:
    if not blobs:
        return torch.empty(0, *shape)
    array = np.frombuffer(b"".join(blobs), dtype=np.dtype(dtype).newbyteorder("<"))
    values = array.reshape(len(blobs), *shape).astype(np.float32)
    if dtype == "uint8":
        values /= 255
    return torch.from_numpy(values)


def load_maps(dst: str | Path, ids=None) -> Maps:
    """The maps of a finished (or partly finished) ``gradex explain-dataset`` output as float32
    tensors in [0, 1], in the order of ``ids`` (every row, in job order, when None). An id that
    is not in DST raises KeyError naming it."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from .shards import row_files

    meta = read_metadata(dst)
    dataset = ds.dataset([str(f) for f in row_files(Path(dst))], format="parquet")
    columns = ["id", "target", "saliency", "cam"]
    if ids is None:
        table = dataset.to_table(columns=columns)
        order = table["id"].to_pylist()
    else:
        order = [str(i) for i in ids]
        table = dataset.to_table(columns=columns, filter=pc.field("id").isin(order))
        found = table["id"].to_pylist()
        position = {name: row for row, name in enumerate(found)}
        missing = [name for name in order if name not in position]
        if missing:
            raise KeyError(f"ids not in {dst}: {', '.join(map(repr, missing[:5]))}")
        table = table.take([position[name] for name in order])
    shape = meta["map_shape"]
    return Maps(
        ids=order,
        saliency=_decode(table["saliency"].to_pylist(), meta["map_dtype"], shape),
        cam=_decode(table["cam"].to_pylist(), meta["map_dtype"], shape),
        target=torch.tensor(table["target"].to_pylist(), dtype=torch.long),
    )
