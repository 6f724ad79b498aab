"""The durable events log: one JSON object per line, appended and fsync'd, never rewritten.

Kinds: start, exit, oom_kill, update, and later ones (policy actions). Readers tolerate a torn
last line (a crash mid-append) by skipping what does not parse.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

FILE = "events.jsonl"


def path(state_root: str) -> str:
    return os.path.join(state_root, FILE)


def append(state_root: str, kind: str, name: str, **fields: Any) -> dict[str, Any]:
    ev = {"time": time.time(), "kind": kind, "name": name, **fields}
    os.makedirs(state_root, exist_ok=True)
    fd = os.open(path(state_root), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(ev, sort_keys=True).encode() + b"\n")  # one write: O_APPEND keeps lines whole
        os.fsync(fd)
    finally:
        os.close(fd)
    return ev


def read(state_root: str, offset: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset after the line, event) for each whole line from `offset`."""
    try:
        f = open(path(state_root), "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        for line in f:
            offset += len(line)
            if not line.endswith(b"\n"):
                break
            try:
                yield offset, json.loads(line)
            except ValueError:
                continue
