"""A process and its descendants, from /proc: the benchmarks measure servers and jobs that
fork workers (a sibling module of the bench scripts, as timing.py is)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """pid and its descendants; a process that exits while it is walked is skipped."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids
