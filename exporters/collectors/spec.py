"""Limits as configured: cpu shares (v1) or weight (v2), CFS quota and period (µs, cAdvisor's
units and names), memory limit. An unlimited quota or memory limit has no sample. The values are
kept until a write to their files (exporters.writewatch): 4 fewer reads per cgroup per scrape."""

from __future__ import annotations

import os

from cgagent.cgroups.stats import Stats
from cgagent.cgroups.v1 import cpu as v1cpu
from cgagent.cgroups.v1 import memory as v1mem
from cgagent.cgroups.v2 import cpu as v2cpu
from cgagent.cgroups.v2 import memory as v2mem
from exporters.collectors import READ_ERRORS, CgroupGone, Scrape, add
from exporters.exposition import Family
from exporters.targets import Target
from exporters.writewatch import WriteWatch, existing

V1_FILES = {"cpu": ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"), "memory": ("memory.limit_in_bytes",)}
# cpu.weight.nice rewrites cpu.weight: a write to either invalidates
V2_FILES = ("cpu.weight", "cpu.weight.nice", "cpu.max", "memory.max")

Values = tuple[int | None, int | None, int | None, int | None, int | None]


class Spec:
    name = "spec"

    def __init__(self) -> None:
        self.kept = WriteWatch()

    def collect(self, scrape: Scrape) -> list[Family]:
        fams = [
            Family("container_spec_cpu_shares", "gauge", "CPU share of the container (cgroup v1 cpu.shares)."),
            Family("container_spec_cpu_weight", "gauge", "CPU weight of the container (cgroup v2 cpu.weight)."),
            Family("container_spec_cpu_quota", "gauge", "CPU quota of the container, in microseconds per period."),
            Family("container_spec_cpu_period", "gauge", "CPU period of the container, in microseconds."),
            Family("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container."),
        ]
        self.kept.begin()
        for t in scrape.targets:
            values: Values | None = self.kept.cached(t)
            if values is None:
                self.kept.watch(t, _files(t))
                try:
                    values = _read(t)
                except READ_ERRORS as exc:
                    scrape.error(self.name, t, exc)
                    continue
                self.kept.store(t, values)
            for fam, v in zip(fams, values, strict=True):
                add(fam, t, v)
        self.kept.end(scrape.targets)
        return fams


def _files(t: Target) -> list[str]:
    if t.v2:   # files of a controller that is not enabled are absent: watch what exists
        return existing([f"{t.dirs['']}/{f}" for f in V2_FILES])
    return [f"{t.dirs[c]}/{f}" for c, files in V1_FILES.items() if c in t.dirs for f in files]


def _read(t: Target) -> Values:
    s = Stats()
    d = t.dir("cpu")
    if d is not None:
        if t.v2:
            v2cpu.spec(d, s)
        else:
            v1cpu.spec(d, s)
            if s.spec.shares is None and not os.path.isdir(d):
                raise CgroupGone(d)
    d = t.dir("memory")
    if d is not None:
        (v2mem if t.v2 else v1mem).limits(d, s)
        if s.memory.limit is None and not t.v2 and not os.path.isdir(d):
            raise CgroupGone(d)
    quota = s.spec.quota_us if s.spec.quota_us is not None and s.spec.quota_us > 0 else None
    limit = s.memory.limit if s.memory.limit is not None and s.memory.limit >= 0 else None
    return s.spec.shares, s.spec.weight, quota, s.spec.period_us, limit
