"""CPU usage: total (cpu="total"; per-CPU series only with --per-cpu), user and system seconds.
v1 cpuacct.usage (ns), cpuacct.stat (USER_HZ ticks, converted in cgagent.cgroups.v1.cpuacct);
v2 cpu.stat usage_usec/user_usec/system_usec (µs)."""

from __future__ import annotations

from cgagent.cgroups.stats import Stats
from cgagent.cgroups.v1 import cpuacct as v1cpuacct
from cgagent.cgroups.v2 import cpu as v2cpu
from exporters.collectors import NS, PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target


class CpuUsage(PerCgroup):
    name = "cpuacct"
    controller = "cpuacct"

    def families(self) -> list[Family]:
        return [
            Family("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds."),
            Family("container_cpu_user_seconds_total", "counter", "Cumulative user cpu time consumed in seconds."),
            Family("container_cpu_system_seconds_total", "counter",
                   "Cumulative system cpu time consumed in seconds."),
        ]

    def read(self, t: Target, d: str, s: Stats, scrape: Scrape) -> bool:
        if t.v2:
            v2cpu.read_usage(d, s)
        else:
            v1cpuacct.usage(d, s, per_cpu=scrape.per_cpu)
        return s.cpu.usage_ns is not None

    def emit(self, t: Target, s: Stats, fams: list[Family], scrape: Scrape) -> None:
        usage, user, system = fams
        if s.cpu.usage_ns is not None:
            usage.add(t.labels.extend("cpu", "total"), s.cpu.usage_ns / NS)
        if scrape.per_cpu and s.cpu.per_cpu_ns:
            for i, ns in enumerate(s.cpu.per_cpu_ns):
                usage.add(t.labels.extend("cpu", f"cpu{i:02d}"), ns / NS)
        add(user, t, s.cpu.user_ns, NS)
        add(system, t, s.cpu.system_ns, NS)
