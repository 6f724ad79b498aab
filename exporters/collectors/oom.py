"""OOM kills. Workloads: from the durable events log (cgagent.oom.Totals), so the count survives
agent restarts and `cgagent rm`. Watched cgroups cgagent did not launch: the kernel's counter of
their own processes' kills (as cAdvisor counts a kill: at the victim's cgroup, not at every parent)."""

from __future__ import annotations

from exporters.collectors import READ_ERRORS, Scrape
from exporters.exposition import Family, LabelSet
from exporters.targets import labels


class Oom:
    name = "oom"

    def __init__(self) -> None:
        # a workload's labels as last exported (image, container_label_*): a removed workload's
        # count stays one series, not a new one without them (after an agent restart: rebuilt)
        self._last: dict[str, LabelSet] = {}

    def collect(self, scrape: Scrape) -> list[Family]:
        events = Family("container_oom_events_total", "counter", "Count of out of memory events observed for the "
                        "container (kept per workload name across agent restarts and removal).")
        kills = Family("cgagent_oom_kills_total", "counter", "Processes killed by the OOM killer, per workload name.")
        totals = scrape.oom
        if totals is not None:
            totals.update()
        counts = totals.kills if totals is not None else {}
        done: set[str] = set()
        for t in scrape.targets:
            if t.workload is not None:
                n = counts.get(t.workload, 0)
                events.add(t.labels, n)
                kills.add(LabelSet({"name": t.workload}), n)
                done.add(t.workload)
                if n:
                    self._last[t.workload] = t.labels
                continue
            if not t.reader.has("memory"):
                continue
            try:
                v = t.reader.oom_kills(own=True)   # once, at the victim's cgroup: not again at each parent
            except READ_ERRORS as e:
                scrape.error(self.name, t, e)
                continue
            if v is not None:
                events.add(t.labels, v)
        if totals is not None:
            for name in sorted(counts.keys() - done):
                # the workload is gone: its count stays, under the labels it last had
                ls = self._last.get(name) or labels(totals.cgroup.get(name, ""), name, totals.policy.get(name, ""))
                events.add(ls, counts[name])
                kills.add(LabelSet({"name": name}), counts[name])
            self._last = {k: v for k, v in self._last.items() if k in counts}
        return [events, kills]
