"""When a container was last seen and when it started (cAdvisor's container_last_seen and
container_start_time_seconds): "container absent" and "container killed" alerts query them.

Start time: a cgagent workload's record (its start; its creation if it has not started); any other
cgroup: the creation time cAdvisor derives for raw cgroups (cgagent.cgroups.reader.Reader.created), read
once per cgroup and kept while the cgroup keeps its identity: discovery hands out the same Target
object while its key (which holds the directory inode) is unchanged, so the Target itself is the key."""

from __future__ import annotations

import time

from exporters.collectors import READ_ERRORS, Scrape
from exporters.exposition import Family
from exporters.targets import Target


class Lifecycle:
    name = "lifecycle"

    def __init__(self) -> None:
        self.starts: dict[Target, float | None] = {}

    def collect(self, scrape: Scrape) -> list[Family]:
        seen = Family("container_last_seen", "gauge", "Last time a container was seen by the exporter")
        start = Family("container_start_time_seconds", "gauge",
                       "Start time of the container since unix epoch in seconds.")
        now = float(int(time.time()))   # whole seconds, as cAdvisor
        started = {r.name: r.started or r.created for r in scrape.records}
        starts: dict[Target, float | None] = {}
        for t in scrape.targets:
            seen.add(t.labels, now)
            if t.workload is not None and started.get(t.workload):
                starts[t] = started[t.workload]
            elif t in self.starts:
                starts[t] = self.starts[t]
            else:
                try:
                    starts[t] = t.reader.created()
                except READ_ERRORS as e:
                    scrape.error(self.name, t, e)
                    continue
            s = starts[t]
            if s is not None:
                start.add(t.labels, float(int(s)))
        self.starts = starts   # only this scrape's cgroups: removed ones do not pile up
        return [seen, start]
