"""When a container was last seen and when it started (cAdvisor's container_last_seen and
container_start_time_seconds): "container absent" and "container killed" alerts query them.

Start time: a cgagent workload's record (its start; its creation if it has not started); any other
cgroup: the creation time cAdvisor derives for raw cgroups (cgagent.cgroups.reader.Reader.created), read
once per cgroup and kept while the cgroup keeps its identity (Target.key holds its directory inode)."""

from __future__ import annotations

import time

from exporters.collectors import READ_ERRORS, Scrape
from exporters.exposition import Family


class Lifecycle:
    name = "lifecycle"

    def __init__(self) -> None:
        self.starts: dict[tuple[object, ...], float | None] = {}

    def collect(self, scrape: Scrape) -> list[Family]:
        seen = Family("container_last_seen", "gauge", "Last time a container was seen by the exporter")
        start = Family("container_start_time_seconds", "gauge",
                       "Start time of the container since unix epoch in seconds.")
        now = float(int(time.time()))   # whole seconds, as cAdvisor
        started = {r.name: r.started or r.created for r in scrape.records}
        starts: dict[tuple[object, ...], float | None] = {}
        for t in scrape.targets:
            seen.add(t.labels, now)
            if t.workload is not None and started.get(t.workload):
                starts[t.key] = started[t.workload]
            elif t.key in self.starts:
                starts[t.key] = self.starts[t.key]
            else:
                try:
                    starts[t.key] = t.reader.created()
                except READ_ERRORS as e:
                    scrape.error(self.name, t, e)
                    continue
            s = starts[t.key]
            if s is not None:
                start.add(t.labels, float(int(s)))
        self.starts = starts   # only this scrape's cgroups: removed ones do not pile up
        return [seen, start]
