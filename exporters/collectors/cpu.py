"""CPU throttling (CFS bandwidth): the counters kubernetes-mixin's CPUThrottlingHigh divides.
v1 cpu.stat nr_periods/nr_throttled/throttled_time (ns); v2 cpu.stat throttled_usec (µs)."""

from __future__ import annotations

from cgagent.cgroups.stats import Stats
from cgagent.cgroups.v1 import cpu as v1cpu
from cgagent.cgroups.v2 import cpu as v2cpu
from exporters.collectors import NS, PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target


class CpuThrottling(PerCgroup):
    name = "cpu"
    controller = "cpu"

    def families(self) -> list[Family]:
        return [
            Family("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals."),
            Family("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals."),
            Family("container_cpu_cfs_throttled_seconds_total", "counter",
                   "Total time duration the container has been throttled."),
        ]

    def read(self, t: Target, d: str, s: Stats, scrape: Scrape) -> bool:
        if t.v2:
            v2cpu.read_usage(d, s)
            return s.cpu.usage_ns is not None or s.cpu.periods is not None
        v1cpu.throttling(d, s)
        return s.cpu.periods is not None

    def emit(self, t: Target, s: Stats, fams: list[Family], scrape: Scrape) -> None:
        periods, throttled, seconds = fams
        add(periods, t, s.cpu.periods)
        add(throttled, t, s.cpu.throttled_periods)
        add(seconds, t, s.cpu.throttled_ns, NS)
