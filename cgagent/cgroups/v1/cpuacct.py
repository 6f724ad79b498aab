"""v1 cpuacct: total usage (ns), per-CPU usage (ns), user/system (USER_HZ ticks -> ns)."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.cgroups.fs import gone_check
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import CpuUsage

NAME = "cpuacct"
NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def apply(d: str, r: Resources) -> None:
    """Accounting only: nothing to limit."""


def usage(d: str, per_cpu: bool = False) -> CpuUsage:
    """Total and user/system usage; cpuacct.usage_percpu only when asked (it is the costly file)."""
    from cgagent.cgroups.stats import CpuUsage

    u = CpuUsage(fs.read_int(f"{d}/cpuacct.usage"))
    if u.total_ns is None:
        gone_check(d)
    ticks = fs.read_fields(f"{d}/cpuacct.stat", (("user",), ("system",)))
    if "user" in ticks:
        u.user_ns = ticks["user"] * NS_PER_TICK
        u.system_ns = ticks.get("system", 0) * NS_PER_TICK
    if per_cpu:
        try:
            u.per_cpu_ns = [int(x) for x in fs.read(f"{d}/cpuacct.usage_percpu").split()]
        except FileNotFoundError:
            pass
    return u
