"""Class names from a user's file (``--labels``) and a target given by name (``--target``)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path


def read_labels(path: str | Path) -> list[str]:
    """Class names in class-id order from a text file (one name a line), a JSON list, or a JSON
    object ``{id: name}`` covering ids 0..N-1. Raises ValueError naming ``--labels``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from Windows editors
    except UnicodeDecodeError as error:
        raise ValueError(f"--labels {path}: not UTF-8 text ({error.reason})") from error
    except OSError as error:  # missing, a folder, unreadable
        raise ValueError(f"--labels {path}: {error.strerror or error}") from error
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        names = _json_labels(path, text)
    else:
        names = text.splitlines()
        while names and not names[-1].strip():  # the file's last newline(s)
            names.pop()
        names = [name.strip() for name in names]
        blank = [i + 1 for i, name in enumerate(names) if not name]
        if blank:
            raise ValueError(
                f"--labels {path}: line {blank[0]} is blank; give one class name a line, in "
                "class-id order"
            )
    if not names:
        raise ValueError(f"--labels {path}: no class names in it")
    return names


def _json_labels(path: Path, text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--labels {path}: not valid JSON ({error})") from error
    if isinstance(value, dict):
        try:
            by_id = {int(k): v for k, v in value.items()}
        except ValueError as error:
            raise ValueError(
                f"--labels {path}: a JSON object's keys must be class ids (0, 1, ...)"
            ) from error
        missing = sorted(set(range(len(by_id))) - set(by_id))
        if missing:
            raise ValueError(
                f"--labels {path}: class ids must run from 0 to {len(by_id) - 1}; "
                f"{missing[0]} is missing"
            )
        value = [by_id[i] for i in range(len(by_id))]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(
            f"--labels {path}: expected a JSON list of class names or an object {{id: name}}"
        )
    return [v.strip() for v in value]


def check_label_count(path: str | Path, names: list[str], classes: int) -> None:
    if len(names) != classes:
        raise ValueError(
            f"--labels {path}: {len(names)} class names, but the model has {classes} classes "
            "(one name per class, in class-id order)"
        )


def resolve_target(target: str | int | None, names: list[str]) -> int | None:
    """``--target`` as a class id: an id (checked against the class count), or a class name,
    exact but for case. Raises ValueError naming ``--target``, with close names when unknown."""
    if target is None or isinstance(target, int):
        value = target
    elif target.strip().lstrip("-").isdigit():
        value = int(target)
    else:
        return _target_by_name(target.strip(), names)
    if value is not None and not 0 <= value < len(names):
        raise ValueError(
            f"--target {value}: out of range; class ids run from 0 to {len(names) - 1}"
        )
    return value


def _target_by_name(name: str, names: list[str]) -> int:
    matches = [i for i, candidate in enumerate(names) if candidate.casefold() == name.casefold()]
    exact = [i for i in matches if names[i] == name]
    if len(matches) == 1 or len(exact) == 1:  # ImageNet: 'Cardigan' the corgi, 'cardigan'
        return exact[0] if exact else matches[0]
    if matches:
        which = ", ".join(f"{names[i]!r} ({i})" for i in matches)
        raise ValueError(
            f"--target {name!r}: {len(matches)} classes have this name, {which}; give the id "
            "or the name as spelt"
        )
    close = difflib.get_close_matches(name.casefold(), [n.casefold() for n in names], n=5)
    by_folded = {n.casefold(): (i, n) for i, n in reversed(list(enumerate(names)))}
    suggestion = ", ".join(f"{by_folded[c][1]!r} ({by_folded[c][0]})" for c in close)
    hint = f"did you mean {suggestion}? Or give a class id" if close else "give a class id"
    raise ValueError(f"--target {name!r}: no class of this name; {hint}")
