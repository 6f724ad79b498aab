"""Limits as configured: cpu shares (v1) or weight (v2), CFS quota and period (µs, cAdvisor's
units and names), memory limit. An unlimited quota or memory limit has no sample. The values are
kept until a write to their files (exporters.writewatch): 4 fewer reads per cgroup per scrape."""

from __future__ import annotations

from cgagent.cgroups.stats import Limits
from exporters.collectors import READ_ERRORS, Scrape, add
from exporters.exposition import Family
from exporters.writewatch import WriteWatch

PARTS = ("cpu", "memory")
Values = tuple[int | None, int | None, int | None, int | None, int | None]


class Spec:
    name = "spec"

    def __init__(self) -> None:
        self.kept = WriteWatch()

    def collect(self, scrape: Scrape) -> list[Family]:
        fams = [
            Family("container_spec_cpu_shares", "gauge", "CPU share of the container (cgroup v1 cpu.shares)."),
            Family("container_spec_cpu_weight", "gauge", "CPU weight of the container (cgroup v2 cpu.weight)."),
            Family("container_spec_cpu_quota", "gauge", "CPU quota of the container, in microseconds per period."),
            Family("container_spec_cpu_period", "gauge", "CPU period of the container, in microseconds."),
            Family("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container."),
        ]
        self.kept.begin()
        for t in scrape.targets:
            values: Values | None = self.kept.cached(t)
            if values is None:
                self.kept.watch(t, t.reader.limit_files(*PARTS))
                try:
                    values = _values(t.reader.limits(*PARTS))
                except READ_ERRORS as exc:
                    scrape.error(self.name, t, exc)
                    continue
                self.kept.store(t, values)
            for fam, v in zip(fams, values, strict=True):
                add(fam, t, v)
        self.kept.end(scrape.targets)
        return fams


def _values(lim: Limits) -> Values:
    quota = lim.cpu_quota_us if lim.cpu_quota_us is not None and lim.cpu_quota_us > 0 else None
    memory = lim.memory if lim.memory is not None and lim.memory >= 0 else None
    return lim.cpu_shares, lim.cpu_weight, quota, lim.cpu_period_us, memory
