"""CPU throttling (CFS bandwidth): the counters kubernetes-mixin's CPUThrottlingHigh divides."""

from __future__ import annotations

from cgagent.cgroups.stats import Throttling
from exporters.collectors import NS, PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target


class CpuThrottling(PerCgroup[Throttling]):
    name = "cpu"
    controller = "cpu"

    def families(self) -> list[Family]:
        return [
            Family("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals."),
            Family("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals."),
            Family("container_cpu_cfs_throttled_seconds_total", "counter",
                   "Total time duration the container has been throttled."),
        ]

    def read(self, t: Target, scrape: Scrape) -> Throttling:
        return t.reader.throttling()

    def emit(self, t: Target, th: Throttling, fams: list[Family], scrape: Scrape) -> None:
        periods, throttled, seconds = fams
        add(periods, t, th.periods)
        add(throttled, t, th.throttled_periods)
        add(seconds, t, th.throttled_ns, NS)
