"""Limits as configured, under cAdvisor's names and units: cpu shares (on v2 the weight converted back
as cAdvisor does), CFS quota and period (µs), memory, memory+swap and reservation limits. An unlimited
memory, swap or reservation limit is 0 (cAdvisor's convention: alerts dividing by it must skip 0); an
unlimited quota has no sample. The values are kept until a write to their files
(exporters.writewatch): fewer reads per cgroup per scrape."""

from __future__ import annotations

from cgagent.cgroups.stats import Limits
from cgagent.convert import weight_to_cadvisor_shares
from exporters.collectors import READ_ERRORS, Scrape, add
from exporters.exposition import Family
from exporters.writewatch import WriteWatch

PARTS = ("cpu", "memory", "swap")
Values = tuple[int | None, ...]


class Spec:
    name = "spec"

    def __init__(self) -> None:
        self.kept = WriteWatch()

    def collect(self, scrape: Scrape) -> list[Family]:
        fams = [
            Family("container_spec_cpu_shares", "gauge",
                   "CPU share of the container (v1 cpu.shares; v2 cpu.weight converted as cAdvisor does)."),
            Family("container_spec_cpu_quota", "gauge", "CPU quota of the container, in microseconds per period."),
            Family("container_spec_cpu_period", "gauge", "CPU period of the container, in microseconds."),
            Family("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container (0: none)."),
            Family("container_spec_memory_swap_limit_bytes", "gauge",
                   "Memory swap limit for the container: memory + swap, as --memory-swap (0: none)."),
            Family("container_spec_memory_reservation_limit_bytes", "gauge",
                   "Memory reservation limit for the container (v1 soft limit, v2 memory.min; 0: none)."),
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


def _bytes(n: int | None) -> int | None:
    return None if n is None else max(n, 0)


def _values(lim: Limits) -> Values:
    shares = lim.cpu_shares
    if shares is None and lim.cpu_weight is not None:
        shares = weight_to_cadvisor_shares(lim.cpu_weight)
    quota = lim.cpu_quota_us if lim.cpu_quota_us is not None and lim.cpu_quota_us > 0 else None
    return (shares, quota, lim.cpu_period_us, _bytes(lim.memory), _bytes(lim.memory_swap),
            _bytes(lim.memory_reservation))
