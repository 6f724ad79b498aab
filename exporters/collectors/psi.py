"""Pressure stall information (cgroup v2 cpu/memory/io.pressure `total=`, µs): time some tasks
waited (`some`) and time all tasks stalled (`full`), under cAdvisor's names."""

from __future__ import annotations

from cgagent.cgroups.stats import Stats
from cgagent.cgroups.v2 import psi
from exporters.collectors import US, PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target

RESOURCES = ("cpu", "memory", "io")


class Pressure(PerCgroup):
    name = "psi"
    controller = "psi"   # v2 only: Target.dir() has no "psi" hierarchy on v1

    def families(self) -> list[Family]:
        out = []
        for r in RESOURCES:
            out.append(Family(f"container_pressure_{r}_waiting_seconds_total", "counter",
                              f"Total time duration tasks in the container have waited due to {r} congestion."))
            out.append(Family(f"container_pressure_{r}_stalled_seconds_total", "counter",
                              f"Total time duration no tasks in the container could make progress due to {r} "
                              "congestion."))
        return out

    def read(self, t: Target, d: str, s: Stats, scrape: Scrape) -> bool:
        psi.stats(d, s)
        return bool(s.pressure)

    def emit(self, t: Target, s: Stats, fams: list[Family], scrape: Scrape) -> None:
        for i, r in enumerate(RESOURCES):
            p = s.pressure.get(r)
            if p is not None:
                add(fams[2 * i], t, p.some_us, US)
                add(fams[2 * i + 1], t, p.full_us, US)
