"""One collector per source (node_exporter's shape): each reads only its own kernel files at scrape
time and returns metric families; exporters/registry.py lists them. A collector never raises for
one cgroup: it reports the failure to the scrape (cgagent_scrape_errors_total) and goes on."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cgagent.cgroups.stats import Stats
from cgagent.oom import Totals
from cgagent.state import Record, Store
from exporters.exposition import Family
from exporters.targets import Target

LABELS = ("id", "name", "policy")
# What one unreadable cgroup raises: gone (ENOENT mid-read), EACCES/EISDIR, a malformed number.
READ_ERRORS = (OSError, ValueError, IndexError)
NS = 10**9   # nanoseconds per second
US = 10**6   # microseconds per second


@dataclass
class Scrape:
    """What one scrape shares between collectors: targets, records, OOM totals, error reporting."""

    targets: list[Target]
    records: list[Record]
    store: Store | None
    oom: Totals | None
    per_cpu: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, collector: str, target: Target | None, exc: BaseException) -> None:
        # collectors run in parallel threads, each under its own key: no two threads share an entry
        self.errors[collector] = self.errors.get(collector, 0) + 1


class Collector(Protocol):
    name: str

    def collect(self, scrape: Scrape) -> list[Family]: ...


class CgroupGone(FileNotFoundError):
    """Every file of a cgroup read as missing and its directory is gone: removed mid-scrape."""


class PerCgroup:
    """A collector that reads a few files of each target into a Stats and emits from it.

    Subclasses set `name`, `controller` (the hierarchy whose directory `read` gets) and implement
    `families`, `read` and `emit`. `read` returns False when it found nothing: that is fine where
    a controller is absent, and an error when the directory has vanished since discovery.
    """

    name = ""
    controller = ""

    def families(self) -> list[Family]:
        raise NotImplementedError

    def read(self, t: Target, d: str, s: Stats, scrape: Scrape) -> bool:
        raise NotImplementedError

    def emit(self, t: Target, s: Stats, fams: list[Family], scrape: Scrape) -> None:
        raise NotImplementedError

    def collect(self, scrape: Scrape) -> list[Family]:
        fams = self.families()
        for t in scrape.targets:
            d = t.dir(self.controller)
            if d is None:
                continue
            s = Stats()
            try:
                if not self.read(t, d, s, scrape) and not os.path.isdir(d):
                    raise CgroupGone(d)
            except READ_ERRORS as e:
                scrape.error(self.name, t, e)
                continue
            self.emit(t, s, fams, scrape)
        return fams


def add(fam: Family, t: Target, value: int | float | None, per: int | None = None) -> None:
    """Add a sample when the kernel reported the value; `per` converts units (ns -> s: per=10**9).
    Division, not multiplication by 1e-9: the result is the float nearest the exact quotient."""
    if value is not None:
        fam.add(t.labels, value / per if per is not None else value)


CollectorFactory = Callable[[], Collector]
