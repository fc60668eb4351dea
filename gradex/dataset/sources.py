"""What a dataset job explains: the list of images, in a fixed order, read from SRC.

SRC is a folder tree (every image below it, sorted; in the ImageFolder layout the first folder
level is kept as each image's ``label``), a text file of paths (one per line, relative paths
taken from the file's own folder), or a Parquet or CSV table with a ``path`` column and optional
``id``, ``target`` (a class id or class name) and ``label`` columns.

The order is part of the job: shard ``k`` always holds items ``k * shard_size`` onwards, which is
what lets a rerun skip finished shards and never explain an image twice.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..images import find_images

TABLE_SUFFIXES = {".parquet", ".csv"}


@dataclass(frozen=True)
class Item:
    index: int  # position in the job; fixes the item's shard
    id: str  # unique within the job: the relative path, or the table's id column
    path: str  # what is opened
    target: int | str | None = None  # a class id or class name to explain; None: top-1
    label: str | None = None  # the ImageFolder class folder, or the table's label column


def _folder_items(root: Path) -> list[Item]:
    # The walk gradex explain --recursive does (hidden files and gradex's outputs left out, links
    # to folders not followed, so a link loop cannot make the job endless); the job's order is
    # its own, by relative path as text, which the fingerprints of existing outputs record.
    paths = find_images([root], recursive=True).files
    relative = sorted(p.relative_to(root).as_posix() for p in paths)
    # ImageFolder: images sit one folder below the root, the folder names their class.
    image_folder = bool(relative) and all(r.count("/") == 1 for r in relative)
    return [
        Item(i, rel, str(root / rel), None, rel.split("/")[0] if image_folder else None)
        for i, rel in enumerate(relative)
    ]


def _text_items(listing: Path) -> list[Item]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"SRC {listing}: not a UTF-8 text file of paths ({error.reason})"
        ) from None
    items = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else listing.parent / entry
        items.append(Item(len(items), entry, str(path)))
    return items


def _read_table(table: Path) -> list[dict]:
    if table.suffix.lower() == ".csv":
        with open(table, newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ValueError(
            f"SRC {table}: reading Parquet needs pyarrow: pip install 'gradex[dataset]'"
        ) from error
    return pq.read_table(table).to_pylist()


def _as_target(value, row: int, table: Path) -> int | str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"SRC {table}: row {row}: target {value!r} is not a class id or name")
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text  # a class name
    return _as_target(number, row, table)


def _table_items(table: Path) -> list[Item]:
    rows = _read_table(table)
    if rows and "path" not in rows[0]:
        raise ValueError(
            f"SRC {table}: needs a 'path' column (optional: id, target, label); "
            f"has {', '.join(map(str, rows[0])) or 'none'}"
        )
    items = []
    for row, record in enumerate(rows):
        entry = record["path"]
        if entry is None or str(entry).strip() == "":
            raise ValueError(f"SRC {table}: row {row}: empty path")
        entry = str(entry)
        path = Path(entry) if Path(entry).is_absolute() else table.parent / entry
        given_id = record.get("id")
        label = record.get("label")
        items.append(
            Item(
                row,
                entry if given_id is None or given_id == "" else str(given_id),
                str(path),
                _as_target(record.get("target"), row, table),
                None if label is None or label == "" else str(label),
            )
        )
    return items


def read_source(src: str | Path) -> list[Item]:
    """The job's items, in job order. Raises ValueError naming SRC when there is nothing to
    explain or two items share an id (their rows could not be told apart)."""
    src = Path(src)
    if not src.exists():
        raise ValueError(f"SRC {src}: no such file or folder")
    if src.is_dir():
        items = _folder_items(src)
    elif src.suffix.lower() in TABLE_SUFFIXES:
        items = _table_items(src)
    else:
        items = _text_items(src)
    if not items:
        raise ValueError(f"SRC {src}: no images found")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"SRC {src}: id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return items
