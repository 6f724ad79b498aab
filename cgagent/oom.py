"""OOM kills, counted exactly once by design: whoever sees the kernel counter (the agent's watcher,
the workload's supervisor at exit, `rm`) calls note() under the store lock, and note() is a
journalled, idempotent step, so a SIGKILL at any point can only lead to a re-run that changes nothing.

Per workload, `oom/<name>.json` holds the high-water mark: for the workload instance (`created` of
its record) and the cgroup incarnation (`gen`, the inode of its memory cgroup directory: a systemd
scope re-created for a restart starts counting at 0 again), the kernel counter already logged
(`logged`) and the kills logged for the instance in all (`kills`). Logging an increase is:
  1. save the mark with `target` = the new counter value and `offset` = the log's size (intent),
  2. append the `oom_kill` event (instance, gen, total = target, kills = the increase),
  3. save the mark with `logged` = target and no target.
Whoever finds a target left by a crash looks for that event from `offset` on: found, the append
happened and only step 3 is redone; not found, it appends it. The record is never written here, so
a stale copy of the record saved by someone else cannot reset the mark.

The events log holds one `oom_kill` event per increase, so totals per workload name are a sum over
the log and survive agent restarts and `cgagent rm`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from cgagent import events
from cgagent.cgroups.readers import oom_counter
from cgagent.faults import fault
from cgagent.state import Record, Store, validate_name

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any


@dataclass
class Mark:
    """A workload's high-water mark of logged OOM kills (see the module's docstring)."""

    instance: float
    gen: int = 0
    logged: int = 0
    kills: int = 0
    target: int | None = None
    offset: int = 0
    victim: dict[str, Any] | None = None   # the last victim the kernel reported (cgagent.kmsg)


def _mark_path(store: Store, name: str) -> str:
    return os.path.join(store.root, "oom", f"{validate_name(name)}.json")


def load_mark(store: Store, rec: Record) -> Mark:
    """The mark of this instance of the workload (a fresh one for a re-created name)."""
    try:
        with open(_mark_path(store, rec.name), "rb") as f:
            data = json.loads(f.read(4096))
        m = Mark(**data)
        if m.instance == rec.created and all(isinstance(v, int) for v in (m.gen, m.logged, m.kills, m.offset)):
            return m
    except (OSError, ValueError, TypeError):
        pass
    return Mark(rec.created)


def _save(store: Store, name: str, m: Mark) -> None:
    """Replace the mark whole (rename). Not fsync'd, on purpose: the mark only guards against logging
    a live kernel counter twice, and no kernel counter survives the power loss that could take an
    unsynced write with it; against a SIGKILL the page cache is enough. The log itself is fsync'd."""
    path = _mark_path(store, name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"   # one writer at a time (the store lock): one fixed name, never left twice
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(asdict(m)).encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def forget(store: Store, name: str) -> None:
    """The workload's record goes: its mark goes with it (its events stay in the log)."""
    for p in (_mark_path(store, name), f"{_mark_path(store, name)}.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def read_rec_counter(rec: Record) -> tuple[int, int] | None:
    """The kernel counter (gen, value) of the workload's memory cgroup now, or None when it has none
    (gone). The driver's reader decides which file holds it."""
    try:
        return oom_counter(rec.dirs)
    except (OSError, ValueError):
        return None


def _find(store: Store, rec: Record, m: Mark) -> bool:
    """Is the event of the pending target already in the log (from the offset noted before it)?"""
    for _off, ev in events.read(store.root, events.noted(store.root, m.offset)):
        if (isinstance(ev, dict) and ev.get("kind") == "oom_kill" and ev.get("name") == rec.name
                and ev.get("instance") == m.instance and ev.get("gen") == m.gen and ev.get("total") == m.target):
            return True
    return False


def _append(store: Store, rec: Record, m: Mark, source: str, victim: dict[str, Any] | None) -> int:
    """Steps 2 and 3 for the mark's target. Returns the kills logged."""
    assert m.target is not None
    new = m.target - m.logged
    # seq: this instance's kills up to and including these, across its cgroups (the policy's answer
    # to an OOM is keyed by it, so the supervisor and the agent's controller answer each once)
    events.append(store.root, "oom_kill", rec.name, kills=new, total=m.target, instance=m.instance, gen=m.gen,
                  seq=m.kills + new, cgroup=rec.cgroup, policy=rec.policy, source=source, **(victim or {}))
    return new


def _settle(store: Store, rec: Record, m: Mark) -> int:
    """Finish an increase a crash interrupted (see the module doc). Returns kills logged now."""
    if m.target is None:
        return 0
    new = 0 if _find(store, rec, m) else _append(store, rec, m, "recovered", None)
    m.kills += m.target - m.logged
    m.logged, m.target = m.target, None
    _save(store, rec.name, m)
    return new


def note(store: Store, rec: Record, counter: tuple[int, int] | None, source: str,
         victim: dict[str, Any] | None = None) -> int:
    """Log the kills of counter (gen, value) not logged yet. Caller holds store.lock().
    Returns how many were logged by this call (0 when someone else already did)."""
    m = load_mark(store, rec)
    done = _settle(store, rec, m)
    if counter is None:
        return done
    gen, value = counter
    logged = m.logged if m.gen == gen else 0   # a new cgroup for this instance counts from 0
    if value <= logged:
        return done
    m.gen, m.logged, m.target = gen, logged, value
    m.offset = events.size(store.root)
    _save(store, rec.name, m)                       # 1. intent
    fault("oom-intent")
    new = _append(store, rec, m, source, victim)    # 2. event
    fault("oom-appended")
    m.kills += new
    m.logged, m.target = value, None
    if victim and victim.get("victims"):
        m.victim = victim["victims"][-1]
    _save(store, rec.name, m)                       # 3. done
    return done + new


def kills(store: Store, rec: Record, counter: tuple[int, int] | None = None) -> int:
    """This instance's OOM kills for display: those logged, plus what the kernel counts beyond them."""
    m = load_mark(store, rec)
    n = m.kills + (m.target - m.logged if m.target is not None else 0)
    if counter is not None:
        gen, value = counter
        seen = max(m.logged, m.target or 0) if gen == m.gen else 0
        n += max(0, value - seen)
    return max(n, rec.oom_kills)


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
