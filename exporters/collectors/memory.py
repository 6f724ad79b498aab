"""Memory: usage, working set (usage - inactive_file), rss, cache, swap, peak and limit hits (cAdvisor's
container_memory_failcnt: its name, although a counter without `_total`, is what dashboards query).
cAdvisor reports 0 max usage on v2: the kernel's peak (5.19+) is the real one."""

from __future__ import annotations

from cgagent.cgroups.stats import MemoryUsage
from exporters.collectors import PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target


class Memory(PerCgroup[MemoryUsage]):
    name = "memory"
    controller = "memory"

    def families(self) -> list[Family]:
        return [
            Family("container_memory_usage_bytes", "gauge",
                   "Current memory usage in bytes, including all memory regardless of when it was accessed."),
            Family("container_memory_working_set_bytes", "gauge", "Current working set in bytes."),
            Family("container_memory_rss", "gauge", "Size of RSS in bytes."),
            Family("container_memory_cache", "gauge", "Number of bytes of page cache memory."),
            Family("container_memory_swap", "gauge", "Container swap usage in bytes."),
            Family("container_memory_max_usage_bytes", "gauge",
                   "Maximum memory usage recorded in bytes (memory.peak on cgroup v2)."),
            Family("container_memory_failcnt", "counter",
                   "Number of memory usage hits limits (v1 memory.failcnt, v2 memory.events max)."),
        ]

    def read(self, t: Target, scrape: Scrape) -> MemoryUsage:
        return t.reader.memory(swap=True)

    def emit(self, t: Target, m: MemoryUsage, fams: list[Family], scrape: Scrape) -> None:
        usage, ws, rss, cache, swap, peak, hits = fams
        add(usage, t, m.usage)
        add(ws, t, m.working_set)
        add(rss, t, m.rss)
        add(cache, t, m.cache)
        add(swap, t, m.swap)
        add(peak, t, m.max_usage)
        add(hits, t, m.limit_hits)
