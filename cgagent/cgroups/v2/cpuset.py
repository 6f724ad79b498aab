"""v2 cpuset: cpuset.cpus / cpuset.mems (empty = inherit, unlike v1)."""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.cgroups.v1.cpuset import apply
from cgagent.limits import Resources

NAME = "cpuset"
__all__ = ["NAME", "Resources", "apply", "stats"]


def stats(d: str, s: Stats) -> None:
    try:
        s.spec.cpuset_cpus = fs.read(f"{d}/cpuset.cpus.effective").strip()
        s.spec.cpuset_mems = fs.read(f"{d}/cpuset.mems.effective").strip()
    except FileNotFoundError:
        pass
