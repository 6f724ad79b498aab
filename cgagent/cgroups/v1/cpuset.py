"""v1 cpuset: cpuset.cpus / cpuset.mems. A new v1 cpuset is empty and takes no tasks until filled."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.limits import Resources

NAME = "cpuset"


def prepare(d: str) -> None:
    """Copy cpus/mems from the parent into a freshly made (empty) cpuset directory."""
    parent = os.path.dirname(d)
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not fs.read(f"{d}/{f}").strip():
            fs.write(f"{d}/{f}", fs.read(f"{parent}/{f}").strip())


def apply(d: str, r: Resources) -> None:
    if r.cpuset_cpus is not None:
        fs.write(f"{d}/cpuset.cpus", r.cpuset_cpus)
    if r.cpuset_mems is not None:
        fs.write(f"{d}/cpuset.mems", r.cpuset_mems)


def stats(d: str, s: Stats) -> None:
    try:
        s.spec.cpuset_cpus = fs.read(f"{d}/cpuset.cpus").strip()
        s.spec.cpuset_mems = fs.read(f"{d}/cpuset.mems").strip()
    except FileNotFoundError:
        pass
