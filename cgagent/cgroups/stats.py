"""What the kernel reports for one cgroup, already in base units (ns for CPU time, bytes, µs for PSI).

One small snapshot type per kind of read (cgagent.cgroups.reader.Reader returns them); `Stats` is
all of them at once (`stats`, the policy controller). A field is None where the kernel has no such
file or line (controller absent, older kernel); -1 is "unlimited" for every limit.

Making these classes costs a few ms of start-up (dataclass creation), and a launch writes limits
but reads nothing: the drivers import this module inside the functions that read, not at the top."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CpuUsage:
    """CPU time used: in all, in user and system mode, and per CPU where the kernel splits it."""

    total_ns: int | None = None
    user_ns: int | None = None
    system_ns: int | None = None
    per_cpu_ns: list[int] | None = None   # v1 cpuacct.usage_percpu only: v2 has no per-CPU split


@dataclass(slots=True)
class Throttling:
    """CFS bandwidth counters: enforcement periods elapsed, periods throttled, time throttled."""

    periods: int | None = None
    throttled_periods: int | None = None
    throttled_ns: int | None = None


@dataclass(slots=True)
class MemoryUsage:
    """Memory in use and its breakdown, peak, limit hits and OOM events."""

    usage: int | None = None
    max_usage: int | None = None        # v1 max_usage_in_bytes, v2 memory.peak (kernel 5.19+)
    rss: int | None = None              # anonymous memory (v1 total_rss, v2 anon)
    cache: int | None = None            # page cache (v1 total_cache, v2 file)
    swap: int | None = None             # swap in use; read only when asked (Reader.memory(swap=True))
    inactive_file: int | None = None
    limit_hits: int | None = None       # v1 failcnt, v2 memory.events "max"
    oom_events: int | None = None       # v2 memory.events "oom" (v1 counts no OOM events)
    oom_kills: int | None = None        # v2 memory.events "oom_kill" (v1: Reader.oom_kills())

    @property
    def working_set(self) -> int | None:
        """cAdvisor's working set: usage minus the inactive page cache the kernel reclaims first."""
        if self.usage is None:
            return None
        return max(0, self.usage - (self.inactive_file or 0))


@dataclass(slots=True)
class Limits:
    """The limits as the kernel holds them. `memory_swap` is memory + swap, as --memory-swap means it
    (v2 keeps swap alone in memory.swap.max: added up here)."""

    cpu_shares: int | None = None       # v1 only
    cpu_weight: int | None = None       # v2 only
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    memory: int | None = None
    memory_swap: int | None = None
    memory_reservation: int | None = None   # v1 memory.soft_limit_in_bytes, v2 memory.min (as cAdvisor)
    pids: int | None = None


@dataclass(slots=True)
class IoUsage:
    """Disk I/O done, summed over block devices (v1 blkio.throttle.io_service*, v2 io.stat)."""

    read_bytes: int | None = None
    write_bytes: int | None = None
    read_ops: int | None = None
    write_ops: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceIo:
    """Disk I/O done on one block device (MAJ:MIN), as the kernel splits it per device."""

    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0


@dataclass(slots=True)
class Pressure:
    """PSI totals in µs (v2 only)."""

    some_us: int | None = None
    full_us: int | None = None


@dataclass
class Stats:
    """Everything at once: one read of each kind."""

    cpu: CpuUsage = field(default_factory=CpuUsage)
    throttling: Throttling = field(default_factory=Throttling)
    memory: MemoryUsage = field(default_factory=MemoryUsage)
    pids: int | None = None
    limits: Limits = field(default_factory=Limits)
    pressure: dict[str, Pressure] = field(default_factory=dict)
    oom_kills: int | None = None        # the kernel's count of OOM kills in this cgroup
    io: IoUsage = field(default_factory=IoUsage)
    frozen: bool | None = None          # paused (freezer); None where there is no freezer

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["memory"]["working_set"] = self.memory.working_set
        return d
