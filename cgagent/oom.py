"""OOM kills, counted exactly once: whoever sees the kernel counter first (the agent's watcher or
the workload's supervisor at exit) logs the kills the record has not seen yet, under the store lock.

The record's `oom_kills` is the high-water mark of the kernel counter already logged for this run of
the workload; the events log holds one `oom_kill` event per increase (`kills` = the increase), so
totals per workload name are a sum over the log and survive agent restarts and `cgagent rm`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cgagent import events
from cgagent.state import Record, Store


def note(store: Store, rec: Record, kernel_count: int, source: str) -> int:
    """Log the kills beyond `rec.oom_kills`. Caller holds store.lock() and saves `rec` afterwards."""
    new = kernel_count - rec.oom_kills
    if new <= 0:
        return 0
    events.append(store.root, "oom_kill", rec.name, kills=new, total=kernel_count, cgroup=rec.cgroup,
                  policy=rec.policy, source=source)
    rec.oom_kills = kernel_count
    return new


@dataclass
class Totals:
    """OOM kills per workload name, folded from the events log; `update()` reads only new lines."""

    state_root: str
    offset: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    cgroup: dict[str, str] = field(default_factory=dict)   # last cgroup id seen per name
    policy: dict[str, str] = field(default_factory=dict)

    def update(self) -> None:
        for off, ev in events.read(self.state_root, self.offset):
            self.offset = off
            self.add(ev)

    def add(self, ev: dict[str, Any]) -> None:
        name = ev.get("name")
        if not isinstance(name, str):
            return
        kind = ev.get("kind")
        if kind == "oom_kill":
            kills = ev.get("kills", 1)
            self.kills[name] = self.kills.get(name, 0) + (kills if isinstance(kills, int) else 1)
        elif kind != "start":
            return
        if isinstance(ev.get("cgroup"), str):
            self.cgroup[name] = ev["cgroup"]
        if "policy" in ev:
            self.policy[name] = ev.get("policy") or ""

    def extend(self, evs: Iterable[dict[str, Any]]) -> None:
        for ev in evs:
            self.add(ev)
