"""Every collector, registered in one place, and the Exporter that runs them for one scrape.

The Exporter is a prometheus_client collector (`collect()`, so `generate_latest(exporter)` works)
and renders its own text format fast (`render()`); exporters.web serves whichever it is given.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from cgagent.cgroups import fs
from cgagent.host import Host
from cgagent.oom import Totals
from cgagent.state import Store
from exporters.collectors import Collector, Scrape
from exporters.collectors.agent import Agent
from exporters.collectors.blkio import Blkio
from exporters.collectors.cpu import CpuThrottling
from exporters.collectors.cpuacct import CpuUsage
from exporters.collectors.freezer import Freezer
from exporters.collectors.lifecycle import Lifecycle
from exporters.collectors.memory import Memory
from exporters.collectors.network import Network
from exporters.collectors.oom import Oom
from exporters.collectors.pids import Pids
from exporters.collectors.policy import PolicyActions
from exporters.collectors.psi import Pressure
from exporters.collectors.spec import Spec
from exporters.exposition import Family, LabelSet, render_bytes, render_chunks, to_client
from exporters.process import Process
from exporters.targets import Discovery

log = logging.getLogger("cgagent.exporter")

COLLECTORS: dict[str, Callable[[], Collector]] = {
    "memory": Memory,
    "spec": Spec,
    "cpuacct": CpuUsage,
    "pids": Pids,
    "cpu": CpuThrottling,
    "psi": Pressure,
    "oom": Oom,
    "policy": PolicyActions,
    "agent": Agent,
    "freezer": Freezer,
    "lifecycle": Lifecycle,
    "network": Network,
    "blkio": Blkio,
}


@dataclass
class Options:
    """What the collectors are built with: the host, the state dir, what to watch and report."""

    host: Host
    state_dir: str | None = None       # None: workloads are not covered (e.g. a fixture tree)
    watch: list[str] = field(default_factory=list)
    per_cpu: bool = False
    collectors: list[str] | None = None  # None: all
    process_metrics: bool = True       # process_* of the agent itself (RSS, CPU)


class Exporter:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        store = Store(opts.state_dir) if opts.state_dir else None
        self.store = store
        self.discovery = Discovery(opts.host, store, opts.watch)
        self.oom = Totals(store.root) if store else None
        self.collectors = [COLLECTORS[n]() for n in (COLLECTORS if opts.collectors is None else opts.collectors)]
        self.errors_total: dict[str, int] = {c.name: 0 for c in self.collectors}
        self.errors_total["discovery"] = 0
        self._labels = {n: LabelSet({"collector": n}) for n in self.errors_total}
        self._lock = threading.Lock()   # the HTTP server may scrape from several threads
        # directory descriptors for openat(): half the file-descriptor budget at most
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._dirfds = fs.DirFds(limit=max(0, (soft if soft != resource.RLIM_INFINITY else 65536) // 2 - 64))
        self._process = Process() if opts.process_metrics else None

    def scrape(self) -> list[Family]:
        with self._lock:
            return self._scrape()

    def _scrape(self) -> list[Family]:
        with fs.dir_fds(self._dirfds):
            return self._scrape_targets()

    def _scrape_targets(self) -> list[Family]:
        t0 = time.perf_counter()
        durations: dict[str, float] = {}
        try:
            recs = self.discovery.records()
            targets = self.discovery.targets(recs)
        except OSError:
            self.errors_total["discovery"] += 1
            recs, targets = [], []
        self._dirfds.keep({d for t in targets for d in t.dirs.values()})
        sc = Scrape(targets=targets, records=recs, store=self.store, oom=self.oom, per_cpu=self.opts.per_cpu)
        durations["discovery"] = time.perf_counter() - t0
        out: list[Family] = []
        # one after another: in threads they were slower (each file is a few µs of syscalls, and the
        # GIL hand-offs between them cost more than the second CPU gives back)
        for c in self.collectors:
            name, fams, secs = _run(c, sc)
            out.extend(fams)
            durations[name] = secs
        for name, n in sc.errors.items():
            self.errors_total[name] = self.errors_total.get(name, 0) + n
        dur = Family("cgagent_scrape_duration_seconds", "gauge",
                     "Time this scrape spent in each collector (discovery = finding the cgroups).")
        for name, secs in durations.items():
            dur.add(self._label(name), secs)
        errs = Family("cgagent_scrape_errors_total", "counter",
                      "Cgroups a collector could not read (removed mid-scrape, unreadable, malformed).")
        for name, n in self.errors_total.items():
            errs.add(self._label(name), n)
        out += [dur, errs]
        if self._process is not None:
            out += self._process.families()
        return out

    def _label(self, name: str) -> LabelSet:
        ls = self._labels.get(name)
        if ls is None:
            ls = self._labels[name] = LabelSet({"collector": name})
        return ls

    def render(self) -> bytes | bytearray:
        return render_bytes(self.scrape())

    def stream(self) -> Iterator[bytes]:
        """render() in pieces, for a chunked response. The scrape happens now, so a failure is raised
        here, before the caller has sent a byte; the text is made as the pieces are taken."""
        return render_chunks(self.scrape())

    # prometheus_client's Collector interface
    def collect(self) -> Iterator[Metric]:
        yield from to_client(self.scrape())

    def close(self) -> None:
        self._dirfds.close()
        self.discovery.close()
        for c in self.collectors:
            kept = getattr(c, "kept", None)
            if kept is not None:
                kept.close()

    def describe(self) -> list[Metric]:
        return []  # names vary with the host: registering must not run a scrape


def _run(c: Collector, sc: Scrape) -> tuple[str, list[Family], float]:
    t = time.perf_counter()
    try:
        fams = c.collect(sc)
    except Exception as e:  # one broken collector must not take the scrape down
        sc.error(c.name, None, e)
        if (c.name, type(e)) not in _warned:   # a bug, not a cgroup's state: say it once
            _warned.add((c.name, type(e)))
            log.warning("collector %s failed: %s: %s", c.name, type(e).__name__, e)
        fams = []
    return c.name, fams, time.perf_counter() - t


_warned: set[tuple[str, type]] = set()


def build(opts: Options) -> Exporter:
    return Exporter(opts)
