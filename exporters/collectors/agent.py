"""The agent itself: build info and workloads by state (scrape duration and errors are added by
exporters/registry.py, which times the collectors)."""

from __future__ import annotations

import platform

from cgagent import __version__
from exporters.collectors import Scrape
from exporters.exposition import Family, LabelSet

STATES = ("created", "running", "exited")


class Agent:
    name = "agent"

    def __init__(self) -> None:
        self.build = LabelSet({"version": __version__, "python": platform.python_version()})
        self.states = {s: LabelSet({"state": s}) for s in STATES}

    def collect(self, scrape: Scrape) -> list[Family]:
        info = Family("cgagent_build_info", "gauge", "cgagent version and the Python running it; always 1.")
        info.add(self.build, 1)
        workloads = Family("cgagent_workloads", "gauge", "Workloads in the state directory, by state.")
        counts = dict.fromkeys(STATES, 0)
        live = {t.workload for t in scrape.targets if t.workload is not None}
        for rec in scrape.records:
            state = rec.status if rec.status in counts else "created"
            if state != "exited" and rec.name not in live and rec.pid is not None:
                state = "exited"  # its cgroup is gone: the supervisor died before recording the exit
            counts[state] += 1
        for s, n in counts.items():
            workloads.add(self.states[s], n)
        return [info, workloads]
