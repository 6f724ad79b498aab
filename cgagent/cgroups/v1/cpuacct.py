"""v1 cpuacct: total usage (ns), per-CPU usage (ns), user/system (USER_HZ ticks -> ns)."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.cgroups.stats import Stats
from cgagent.limits import Resources

NAME = "cpuacct"
NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def apply(d: str, r: Resources) -> None:
    """Accounting only: nothing to limit."""


def stats(d: str, s: Stats) -> None:
    usage(d, s, per_cpu=True)


def usage(d: str, s: Stats, per_cpu: bool = False) -> None:
    """Total and user/system usage; cpuacct.usage_percpu only when asked (it is the costly file)."""
    s.cpu.usage_ns = fs.read_int(f"{d}/cpuacct.usage")
    ticks = fs.read_kv(f"{d}/cpuacct.stat")
    if "user" in ticks:
        s.cpu.user_ns = ticks["user"] * NS_PER_TICK
        s.cpu.system_ns = ticks.get("system", 0) * NS_PER_TICK
    if not per_cpu:
        return
    try:
        s.cpu.per_cpu_ns = [int(x) for x in fs.read(f"{d}/cpuacct.usage_percpu").split()]
    except FileNotFoundError:
        s.cpu.per_cpu_ns = None
