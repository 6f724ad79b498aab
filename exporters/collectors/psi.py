"""Pressure stall information (cgroup v2 cpu/memory/io.pressure `total=`, µs): time some tasks
waited (`some`) and time all tasks stalled (`full`), under cAdvisor's names."""

from __future__ import annotations

from cgagent.cgroups.stats import Pressure as PressureTotals
from exporters.collectors import US, PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target

RESOURCES = ("cpu", "memory", "io")


class Pressure(PerCgroup[dict[str, PressureTotals]]):
    name = "psi"
    controller = "psi"   # the readers keep pressure only where the kernel has it (v2)

    def families(self) -> list[Family]:
        out = []
        for r in RESOURCES:
            out.append(Family(f"container_pressure_{r}_waiting_seconds_total", "counter",
                              f"Total time duration tasks in the container have waited due to {r} congestion."))
            out.append(Family(f"container_pressure_{r}_stalled_seconds_total", "counter",
                              f"Total time duration no tasks in the container could make progress due to {r} "
                              "congestion."))
        return out

    def read(self, t: Target, scrape: Scrape) -> dict[str, PressureTotals]:
        return t.reader.pressure()

    def emit(self, t: Target, pressure: dict[str, PressureTotals], fams: list[Family], scrape: Scrape) -> None:
        for i, r in enumerate(RESOURCES):
            p = pressure.get(r)
            if p is not None:
                add(fams[2 * i], t, p.some_us, US)
                add(fams[2 * i + 1], t, p.full_us, US)
