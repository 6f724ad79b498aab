"""v1 pids: pids.max, pids.current."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.convert import v2_limit
from cgagent.limits import Resources

NAME = "pids"


def apply(d: str, r: Resources) -> None:
    if r.pids_limit is not None:
        fs.write(f"{d}/pids.max", v2_limit(r.pids_limit))


def stats(d: str, s: Stats) -> None:
    current(d, s)
    limit(d, s)


def current(d: str, s: Stats) -> None:
    s.pids.current = fs.read_int(f"{d}/pids.current")


def limit(d: str, s: Stats) -> None:
    s.pids.limit = fs.read_int(f"{d}/pids.max")
