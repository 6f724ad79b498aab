"""What the kernel reports for one cgroup, already in base units (ns for CPU time, bytes)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CpuStats:
    usage_ns: int | None = None
    user_ns: int | None = None
    system_ns: int | None = None
    per_cpu_ns: list[int] | None = None
    periods: int | None = None
    throttled_periods: int | None = None
    throttled_ns: int | None = None


@dataclass
class MemoryStats:
    usage: int | None = None
    max_usage: int | None = None        # v1 max_usage_in_bytes, v2 memory.peak
    limit: int | None = None            # -1 unlimited
    swap_limit: int | None = None
    rss: int | None = None
    cache: int | None = None
    inactive_file: int | None = None
    limit_hits: int | None = None       # v1 failcnt, v2 memory.events "max"
    oom_events: int | None = None       # v2 memory.events "oom"; v1 = under_oom transitions are not counted
    oom_kills: int | None = None        # processes killed by the OOM killer in this cgroup

    @property
    def working_set(self) -> int | None:
        if self.usage is None:
            return None
        return max(0, self.usage - (self.inactive_file or 0))


@dataclass
class PidsStats:
    current: int | None = None
    limit: int | None = None


@dataclass
class CpuSpec:
    shares: int | None = None
    weight: int | None = None
    quota_us: int | None = None         # -1 unlimited
    period_us: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None


@dataclass
class Pressure:
    """PSI totals in µs (v2 only)."""

    some_us: int | None = None
    full_us: int | None = None


@dataclass
class Stats:
    cpu: CpuStats = field(default_factory=CpuStats)
    memory: MemoryStats = field(default_factory=MemoryStats)
    pids: PidsStats = field(default_factory=PidsStats)
    spec: CpuSpec = field(default_factory=CpuSpec)
    pressure: dict[str, Pressure] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory"]["working_set"] = self.memory.working_set
        return d
