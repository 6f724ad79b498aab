"""Policy actions (cgagent_policy_actions_total{policy,action}), folded from the durable events log:
the policy controller appends one `policy` event per action, so the count needs no shared state with
the controller and survives agent restarts. Each scrape reads only the lines added since the last."""

from __future__ import annotations

import os

from cgagent import events
from exporters.collectors import Scrape
from exporters.exposition import Family, LabelSet


class PolicyActions:
    name = "policy"

    def __init__(self) -> None:
        self.root: str | None = None
        self.inode = 0
        self.offset = 0
        self.counts: dict[tuple[str, str], int] = {}
        self.labels: dict[tuple[str, str], LabelSet] = {}

    def collect(self, scrape: Scrape) -> list[Family]:
        fam = Family("cgagent_policy_actions_total", "counter",
                     "Actions the policy controller took (cpu_step_up, cpu_step_down, memory_step_up, "
                     "memory_at_ceiling, oom_stop), per policy.")
        if scrape.store is None:
            return [fam]
        root = scrape.store.root
        try:
            st = os.stat(events.path(root))
            inode, size = st.st_ino, st.st_size
        except FileNotFoundError:
            inode, size = 0, 0
        if root != self.root or inode != self.inode or size < self.offset:   # another dir, or a new log
            self.root, self.inode, self.offset, self.counts = root, inode, 0, {}
        for off, ev in events.read(root, self.offset):
            self.offset = off
            if ev.get("kind") == "policy":
                key = (str(ev.get("policy") or ""), str(ev.get("action") or ""))
                self.counts[key] = self.counts.get(key, 0) + 1
        for key in sorted(self.counts):
            ls = self.labels.get(key)
            if ls is None:
                ls = self.labels[key] = LabelSet({"policy": key[0], "action": key[1]})
            fam.add(ls, self.counts[key])
        return [fam]
