"""Tasks: the current count and the limit (cAdvisor's container_threads / container_threads_max).
The limit is kept until a write to its file (exporters.writewatch); the count is read every scrape."""

from __future__ import annotations

from exporters.collectors import PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target
from exporters.writewatch import WriteWatch

Counts = tuple[int | None, int | None]   # current, limit (-1: none)


class Pids(PerCgroup[Counts]):
    name = "pids"
    controller = "pids"

    def __init__(self) -> None:
        self.kept = WriteWatch()

    def families(self) -> list[Family]:
        return [
            Family("container_threads", "gauge", "Number of threads running inside the container (pids.current)."),
            Family("container_threads_max", "gauge",
                   "Maximum number of threads allowed inside the container, infinity if value is zero."),
        ]

    def collect(self, scrape: Scrape) -> list[Family]:
        self.kept.begin()
        fams = super().collect(scrape)
        self.kept.end(scrape.targets)
        return fams

    def read(self, t: Target, scrape: Scrape) -> Counts:
        r = t.reader
        current = r.pids()
        kept = self.kept.cached(t)
        if kept is not None:
            return current, kept[0]
        self.kept.watch(t, r.limit_files("pids"))
        limit = r.limits("pids").pids
        self.kept.store(t, (limit,))
        return current, limit

    def emit(self, t: Target, p: Counts, fams: list[Family], scrape: Scrape) -> None:
        current, limit = fams
        add(current, t, p[0])
        if p[1] is not None:   # unlimited (-1) is 0, as cAdvisor has it
            add(limit, t, max(p[1], 0))
