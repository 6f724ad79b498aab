"""The read side of the drivers: one narrow, read-only interface over any cgroup (cgagent's own, or one
the exporter watches with --watch-cgroup), one implementation per mode (v1/reader.py, v2/reader.py).
Callers (collectors, the OOM watcher, `stats`, the policy controller) never see a cgroup file name or
the cgroup version: they ask for usage, throttling, memory, limits, the OOM counter, and get typed
snapshots (cgagent.cgroups.stats).

Each read opens a few small files (stat and limit files, never a process list) and writes nothing.
A cgroup may vanish while it is read: a file that is missing in a directory that still exists is a
controller that is absent (its values are None); a missing file in a directory that is gone raises
CgroupGone, so the caller can tell "not reported here" from "removed under me". Malformed content
raises ValueError; other OSErrors (EACCES) pass through."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, ClassVar, TypeVar

from cgagent.cgroups import fs
from cgagent.cgroups.fs import CgroupGone, gone_check
from cgagent.cgroups.stats import CpuUsage, DeviceIo, IoUsage, Limits, MemoryUsage, Pressure, Stats, Throttling

if TYPE_CHECKING:   # only its type: ctypes is not for every CLI start that reads a cgroup
    from cgagent.inotify import Inotify

# What limits() reads and limit_files() names: any subset, in any order.
LIMIT_PARTS = ("cpu", "cpuset", "memory", "swap", "pids")
T = TypeVar("T")


@dataclass(eq=False)
class OomNotifier:
    """How the kernel tells of an OOM in one cgroup. Either `fd` (an eventfd to poll: readable when the
    cgroup hits OOM, before the killer has counted its victim, and when the cgroup is removed) or `wd`
    (a watch on the caller's inotify instance: IN_MODIFY after the counter moved, IN_IGNORED when the
    cgroup is removed). close() releases what it holds (not the inotify watch: its instance's)."""

    fd: int = -1
    wd: int = -1
    held: list[int] = field(default_factory=list)   # fds that must stay open while registered

    def close(self) -> None:
        for fd in [self.fd, *self.held]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd, self.held = -1, []


class Reader(ABC):
    """One cgroup, read-only. `dirs` maps controller to its directory ("" on v2), as records keep it."""

    mode: ClassVar[str]
    OOM_FILE: ClassVar[str]   # the one file holding the `oom_kill` counter: decided here, per mode
    OWN_OOM_FILE: ClassVar[str]   # the counter of kills of this cgroup's own processes, not its children's
    # a file the kernel makes with the cgroup and rarely rewrites: its mtime is the creation time
    # (the directory's mtime moves whenever a child cgroup is made)
    BIRTH_FILE: ClassVar[str]

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs

    @abstractmethod
    def dir(self, controller: str) -> str | None:
        """The directory holding `controller`'s files; None: this cgroup is not in that hierarchy."""

    def has(self, controller: str) -> bool:
        """Is the cgroup in `controller`'s hierarchy ("psi": are pressure files kept at all)?"""
        return self.dir(controller) is not None

    def exists(self, controller: str | None = None) -> bool:
        """Does the cgroup's directory (of `controller`, or any) still exist?"""
        if controller is not None:
            d = self.dir(controller)
            return d is not None and os.path.isdir(d)
        return any(os.path.isdir(d) for d in self.dirs.values())

    # --- usage

    @abstractmethod
    def cpu_usage(self, per_cpu: bool = False) -> CpuUsage:
        """CPU time used; the per-CPU split only when asked (it is the costly file) and the kernel has it."""

    @abstractmethod
    def throttling(self) -> Throttling: ...

    @abstractmethod
    def memory(self, swap: bool = False) -> MemoryUsage:
        """Usage, peak, the rss/cache/inactive_file breakdown, limit hits; swap in use when asked."""

    @abstractmethod
    def pids(self) -> int | None:
        """Tasks in the cgroup now."""

    def io(self) -> IoUsage:
        """Bytes and operations read and written, over all block devices."""
        return IoUsage()

    def io_devices(self) -> list[DeviceIo]:
        """Disk I/O per block device (this cgroup and its descendants), in the kernel's order."""
        return []

    def io_limits(self) -> dict[str, dict[str, int]]:
        """The per-device I/O limits the kernel holds: Resources field (device_read_bps...) ->
        {"MAJ:MIN": value}; a device without a limit is absent."""
        return {}

    def frozen(self) -> bool | None:
        """Is the cgroup frozen (paused) now? None: no freezer here."""
        return None

    def pressure(self) -> dict[str, Pressure]:
        """PSI totals per resource (cpu, memory, io) where the kernel keeps them."""
        return {}

    # --- identity

    def created(self) -> float | None:
        """When the cgroup was made (unix seconds), derived as cAdvisor does for cgroups it has no
        runtime record of: the earliest mtime of its directories and of their BIRTH_FILE.
        None: the cgroup is gone."""
        times = []
        for d in dict.fromkeys(self.dirs.values()):
            for p in (d, f"{d}/{self.BIRTH_FILE}"):
                try:
                    times.append(os.stat(p).st_mtime)
                except FileNotFoundError:
                    pass
        return min(times) if times else None

    def a_pid(self) -> int | None:
        """One process of this cgroup itself (not of its descendants); None when it holds none.
        One hierarchy is enough: on v1 a cgroup's processes are in its directory of every hierarchy
        it has one in."""
        for d in self.dirs.values():
            return fs.first_proc(d)
        return None

    # --- limits

    @abstractmethod
    def limits(self, *parts: str) -> Limits:
        """The limits of `parts` (LIMIT_PARTS; all when none is given); the others stay None."""

    @abstractmethod
    def limit_files(self, *parts: str) -> list[str]:
        """The files whose writes change limits(*parts), to watch for writes (IN_MODIFY)."""

    # --- OOM

    def oom_kills(self, own: bool = False) -> int | None:
        """The kernel's count of OOM kills in this cgroup (on v2 its descendants' too); with `own`, of
        its own processes only, where cAdvisor counts a kill (the victim's cgroup, not each parent);
        None when it keeps none."""
        d = self.dir("memory")
        if d is None:
            return None
        v = fs.read_fields(f"{d}/{self.OWN_OOM_FILE if own else self.OOM_FILE}", (("oom_kill",),)).get("oom_kill")
        if v is None:
            gone_check(d)
        return v

    def oom_counter(self) -> tuple[int, int]:
        """(generation, oom_kill): the memory directory's inode and the counter, read through one open
        directory, so a cgroup re-created under the same path is never taken for the old one.
        Raises OSError (gone) or ValueError (no counter)."""
        d = self.dir("memory")
        if d is None:
            raise FileNotFoundError(f"{self.dirs}: no memory cgroup")
        return fs.oom_counter(d, self.OOM_FILE)

    @abstractmethod
    def oom_notifier(self, ino: Inotify) -> OomNotifier:
        """Ask the kernel to notify OOMs in this cgroup (raises OSError when the cgroup is not there)."""

    # --- all at once

    def snapshot(self, per_cpu: bool = True) -> Stats:
        """Every read above, for the hierarchies the cgroup is in. A hierarchy whose cgroup is gone
        (an exited workload's) reads as nothing known: its values stay None."""
        s = Stats()
        if self.has("cpuacct"):
            s.cpu = _unless_gone(lambda: self.cpu_usage(per_cpu), s.cpu)
        if self.has("cpu"):
            s.throttling = _unless_gone(self.throttling, s.throttling)
        if self.has("memory"):
            s.memory = _unless_gone(lambda: self.memory(swap=True), s.memory)
            s.oom_kills = _unless_gone(self.oom_kills, None)
        if self.has("pids"):
            s.pids = _unless_gone(self.pids, None)
        for p in LIMIT_PARTS:
            if self.has(_CONTROLLER[p]):
                part = _unless_gone(partial(self.limits, p), None)
                if part is not None:
                    for f in _LIMIT_FIELDS[p]:
                        setattr(s.limits, f, getattr(part, f))
        s.pressure = _unless_gone(self.pressure, s.pressure)
        s.io = _unless_gone(self.io, s.io)
        s.frozen = _unless_gone(self.frozen, None)
        return s


def _unless_gone(read: Callable[[], T], default: T) -> T:
    try:
        return read()
    except CgroupGone:
        return default


_LIMIT_FIELDS = {"cpu": ("cpu_shares", "cpu_weight", "cpu_quota_us", "cpu_period_us"),
                 "cpuset": ("cpuset_cpus", "cpuset_mems"), "memory": ("memory", "memory_reservation"),
                 "swap": ("memory_swap",), "pids": ("pids",)}
_CONTROLLER = {"cpu": "cpu", "cpuset": "cpuset", "memory": "memory", "swap": "memory", "pids": "pids"}
