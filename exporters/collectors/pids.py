"""Tasks: pids.current and pids.max (cAdvisor's container_threads / container_threads_max).
pids.max is kept until a write to it (exporters.writewatch); pids.current is read every scrape."""

from __future__ import annotations

from cgagent.cgroups.stats import Stats
from cgagent.cgroups.v1 import pids as v1pids
from exporters.collectors import PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target
from exporters.writewatch import WriteWatch


class Pids(PerCgroup):
    name = "pids"
    controller = "pids"

    def __init__(self) -> None:
        self.kept = WriteWatch()

    def families(self) -> list[Family]:
        return [
            Family("container_threads", "gauge", "Number of threads running inside the container (pids.current)."),
            Family("container_threads_max", "gauge", "Maximum number of threads allowed (pids.max; unset = no limit)."),
        ]

    def collect(self, scrape: Scrape) -> list[Family]:
        self.kept.begin()
        fams = super().collect(scrape)
        self.kept.end(scrape.targets)
        return fams

    def read(self, t: Target, d: str, s: Stats, scrape: Scrape) -> bool:
        v1pids.current(d, s)   # the same files on v1 and v2
        kept = self.kept.cached(t)
        if kept is not None:
            s.pids.limit = kept[0]
        else:
            self.kept.watch(t, [f"{d}/pids.max"])
            v1pids.limit(d, s)
            self.kept.store(t, (s.pids.limit,))
        return s.pids.current is not None

    def emit(self, t: Target, s: Stats, fams: list[Family], scrape: Scrape) -> None:
        current, limit = fams
        add(current, t, s.pids.current)
        if s.pids.limit is not None and s.pids.limit >= 0:
            add(limit, t, s.pids.limit)
