"""CPU usage: cpu="total", or with --per-cpu the per-CPU series alone (cpu="cpu00"...) where the kernel
splits usage (v1); never both in one family (sum() would count it twice), as cAdvisor. User and system
seconds."""

from __future__ import annotations

from cgagent.cgroups import stats
from exporters.collectors import NS, PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target


class CpuUsage(PerCgroup[stats.CpuUsage]):
    name = "cpuacct"
    controller = "cpuacct"

    def families(self) -> list[Family]:
        return [
            Family("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds."),
            Family("container_cpu_user_seconds_total", "counter", "Cumulative user cpu time consumed in seconds."),
            Family("container_cpu_system_seconds_total", "counter",
                   "Cumulative system cpu time consumed in seconds."),
        ]

    def read(self, t: Target, scrape: Scrape) -> stats.CpuUsage:
        return t.reader.cpu_usage(per_cpu=scrape.per_cpu)

    def emit(self, t: Target, u: stats.CpuUsage, fams: list[Family], scrape: Scrape) -> None:
        usage, user, system = fams
        if scrape.per_cpu and u.per_cpu_ns:
            for i, ns in enumerate(u.per_cpu_ns):
                usage.add(t.labels.extend("cpu", f"cpu{i:02d}"), ns / NS)
        elif u.total_ns is not None:   # v2 has no per-CPU split: the total, as cAdvisor does
            usage.add(t.labels.extend("cpu", "total"), u.total_ns / NS)
        add(user, t, u.user_ns, NS)
        add(system, t, u.system_ns, NS)
