"""Whether a cgroup is paused (`cgagent pause`): cgagent_container_paused, 1 frozen, 0 not. Read every
scrape: freezing writes no limit file, so there is nothing to cache on."""

from __future__ import annotations

from exporters.collectors import PerCgroup, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target


class Freezer(PerCgroup[bool | None]):
    name = "freezer"
    controller = "freezer"

    def families(self) -> list[Family]:
        return [Family("cgagent_container_paused", "gauge",
                       "1 when the cgroup is frozen (cgagent pause; v1 freezer.state, v2 cgroup.events), else 0.")]

    def read(self, t: Target, scrape: Scrape) -> bool | None:
        return t.reader.frozen()

    def emit(self, t: Target, frozen: bool | None, fams: list[Family], scrape: Scrape) -> None:
        add(fams[0], t, None if frozen is None else int(frozen))
