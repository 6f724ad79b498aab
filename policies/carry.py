"""Memory limits learned from OOM kills, carried to the next run of the same workload name.

Until the per-workload supervisor restarts workloads itself, "restart with more memory" is half
applied: the controller raises the limit of a workload that is still running, and remembers the
raised limit here so that the next `cgagent run --policy P --name N` starts with it (an explicit
--memory still wins). File: <state dir>/policy-memory.json = {name: {"policy": P, "memory": bytes}}.
"""

from __future__ import annotations

import json
import os

from cgagent.state import Store, atomic_write

FILE = "policy-memory.json"


def _path(root: str) -> str:
    return os.path.join(root, FILE)


def _load(root: str) -> dict[str, dict[str, object]]:
    try:
        with open(_path(root)) as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(store: Store, name: str, policy: str, memory: int) -> None:
    with store.lock():
        data = _load(store.root)
        data[name] = {"policy": policy, "memory": memory}
        atomic_write(_path(store.root), json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


def recall(root: str, name: str, policy: str) -> int | None:
    """The memory limit learned for workload `name` under `policy`, if any."""
    entry = _load(root).get(name)
    mem = entry.get("memory") if isinstance(entry, dict) and entry.get("policy") == policy else None
    return mem if isinstance(mem, int) else None
