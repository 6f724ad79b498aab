"""One collector per source (node_exporter's shape): each asks the drivers' read API
(cgagent.cgroups.reader, one Reader per target) for its own values at scrape time and returns metric
families; exporters/registry.py lists them. A collector never raises for one cgroup: it reports the
failure to the scrape (cgagent_scrape_errors_total) and goes on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from cgagent.oom import Totals
from cgagent.state import Record, Store
from exporters.exposition import Family
from exporters.targets import Target

LABELS = ("id", "name", "policy")
# What one unreadable cgroup raises: gone (cgagent.cgroups.reader.CgroupGone), EACCES/EISDIR, a malformed number.
READ_ERRORS = (OSError, ValueError, IndexError)
NS = 10**9   # nanoseconds per second
US = 10**6   # microseconds per second

T = TypeVar("T")


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


class PerCgroup(Generic[T]):
    """A collector that reads one snapshot of each target and emits from it.

    Subclasses set `name`, `controller` (targets outside that hierarchy are skipped) and implement
    `families`, `read` and `emit`. A read that raises (the cgroup removed mid-scrape: CgroupGone,
    an unreadable or malformed file) counts as an error of this collector and skips the target.
    """

    name = ""
    controller = ""

    def families(self) -> list[Family]:
        raise NotImplementedError

    def read(self, t: Target, scrape: Scrape) -> T:
        raise NotImplementedError

    def emit(self, t: Target, snap: T, fams: list[Family], scrape: Scrape) -> None:
        raise NotImplementedError

    def collect(self, scrape: Scrape) -> list[Family]:
        fams = self.families()
        controller, read, emit = self.controller, self.read, self.emit   # looked up once, not per cgroup
        for t in scrape.targets:
            if not t.reader.has(controller):
                continue
            try:
                snap = read(t, scrape)
            except READ_ERRORS as e:
                scrape.error(self.name, t, e)
                continue
            emit(t, snap, fams, scrape)
        return fams


def add(fam: Family, t: Target, value: int | float | None, per: int | None = None) -> None:
    """Add a sample when the kernel reported the value; `per` converts units (ns -> s: per=10**9).
    Division, not multiplication by 1e-9: the result is the float nearest the exact quotient."""
    if value is not None:   # Family.add inlined: this runs for every sample of every scrape
        fam.samples.append((t.labels, value / per if per is not None else value))


CollectorFactory = Callable[[], Collector]
