"""v1 pids: pids.max, pids.current (the same files on v2)."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check
from cgagent.convert import v2_limit
from cgagent.limits import Resources

NAME = "pids"
LIMIT_FILES = ("pids.max",)


def apply(d: str, r: Resources) -> None:
    if r.pids_limit is not None:
        fs.write(f"{d}/pids.max", v2_limit(r.pids_limit))


def current(d: str) -> int | None:
    n = fs.read_int(f"{d}/pids.current")
    if n is None:
        gone_check(d)
    return n


def limit(d: str) -> int | None:
    """pids.max; -1 = max. The root cgroup has none."""
    return fs.read_int(f"{d}/pids.max")
