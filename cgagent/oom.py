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


MAX_KILLS = 1 << 31   # one event's increase; beyond it the line is garbage, not a count


@dataclass
class Totals:
    """OOM kills per workload name, folded from the events log; `update()` reads only new lines.
    A log replaced by another (or cut shorter) is folded again from its start, from zero: the old
    sums are dropped rather than added to, so nothing is counted twice."""

    state_root: str
    kills: dict[str, int] = field(default_factory=dict)
    cgroup: dict[str, str] = field(default_factory=dict)   # last cgroup id seen per name
    policy: dict[str, str] = field(default_factory=dict)
    reader: events.Reader | None = None

    @property
    def offset(self) -> int:
        return self.reader.offset if self.reader is not None else 0

    def update(self) -> None:
        if self.reader is None:
            self.reader = events.Reader(self.state_root)
        for ev in self.reader.read():
            if self.reader.reset:   # set before the first event of a re-read
                self.reader.reset = False
                self.kills, self.cgroup, self.policy = {}, {}, {}
            self.add(ev)
        if self.reader.reset:       # replaced by an empty file (or removed)
            self.reader.reset = False
            self.kills, self.cgroup, self.policy = {}, {}, {}

    def add(self, ev: dict[str, Any]) -> None:
        name = ev.get("name")
        if not isinstance(name, str):
            return
        kind = ev.get("kind")
        if kind == "oom_kill":
            kills = ev.get("kills", 1)
            if isinstance(kills, bool) or not isinstance(kills, int) or not 0 < kills <= MAX_KILLS:
                return   # a negative or garbage count is no count: never lowers the total
            self.kills[name] = self.kills.get(name, 0) + kills
        elif kind != "start":
            return
        if isinstance(ev.get("cgroup"), str):
            self.cgroup[name] = ev["cgroup"]
        if "policy" in ev:
            pol = ev.get("policy")
            self.policy[name] = pol if isinstance(pol, str) else ""

    def extend(self, evs: Iterable[dict[str, Any]]) -> None:
        for ev in evs:
            self.add(ev)
