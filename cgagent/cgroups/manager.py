"""The one interface every cgroup driver implements (cgroupfs v1, cgroupfs v2, systemd)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from cgagent.cgroups.parents import Made
from cgagent.limits import Resources

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:   # the read side is imported when read: a launch only writes (see cgagent.cgroups.stats)
    from cgagent.cgroups.reader import Reader
    from cgagent.cgroups.stats import Stats


class CgroupManager(ABC):
    """One workload's cgroup. `dirs` maps controller name ("" on v2) to its absolute directory."""

    driver = "cgroupfs"
    mode = "v1"

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs
        self.reserved = False   # reserve() made the cgroup: create() has nothing left to do
        # processes that apply() puts in the cgroup with the workload's own: where a scope is made
        # around the processes it holds (systemd), a zygote's PID 1 forked ahead (cgagent.zygote)
        self.also: list[int] = []

    def reserve(self) -> None:
        """Called under the store lock that made_by_create() was asked under: make what a prune of
        empty parents (another workload's end, under that lock too) could otherwise remove between
        the look and the mkdir, after which the mkdir would make that parent again, unremembered.
        The cgroupfs drivers make the cgroup itself; systemd's parents are systemd's (no-op there)."""
        self.create()
        self.reserved = True

    def effective(self, r: Resources) -> Resources:
        """The limits as the kernel will hold them once applied (the systemd driver rounds the
        CPU quota); records store this so they agree with the cgroup files."""
        return r

    def made_by_create(self) -> Made:
        """What create() will make that is not there yet (parent directories here): remembered before
        it is made, and undone when its last workload goes (cgagent.cgroups.parents.prune)."""
        out = Made()
        for d in self.dirs.values():
            cur = os.path.dirname(d)
            while not os.path.isdir(cur):
                out.dirs.append(cur)
                cur = os.path.dirname(cur)
        return out

    def join(self, pid: int) -> None:
        """Move `pid` into the cgroup of a workload that is already running (`exec`)."""
        self.apply(pid)

    def clone_target(self) -> str | None:
        """The cgroup v2 directory a new process can be created in directly (clone3 with
        CLONE_INTO_CGROUP, cgagent.launch.spawn), or None: it has to be moved in with apply() (v1, or
        a systemd scope, which systemd makes when it is handed the process)."""
        return None

    @abstractmethod
    def create(self) -> None:
        """mkdir the cgroup (and missing parents); make it ready to take processes."""

    @abstractmethod
    def apply(self, pid: int) -> None:
        """Move `pid` (0 = the calling process) into the cgroup."""

    @abstractmethod
    def set(self, r: Resources) -> None:
        """Write the limits; used at creation and for live updates."""

    def reader(self) -> Reader:
        """The read-only view of this cgroup (usage, limits, the OOM counter)."""
        from cgagent.cgroups.readers import reader_for

        return reader_for(self.dirs)

    def stats(self) -> Stats:
        """Everything the kernel reports for the cgroup now (None where it is gone: an exited workload)."""
        return self.reader().snapshot()

    @abstractmethod
    def procs(self) -> list[int]:
        """Every process in the cgroup and below it."""

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL everything inside, without racing forks."""

    @abstractmethod
    def remove(self) -> None:
        """rmdir bottom-up; processes must be gone."""

    @abstractmethod
    def exists(self) -> bool: ...

    def oom_kill_count(self) -> int:
        """The kernel's count of OOM kills in this cgroup (0 when unknown or gone)."""
        try:
            return self.reader().oom_kills() or 0
        except FileNotFoundError:
            return 0

    def destroy(self, timeout: float = 10.0) -> None:
        """Kill what is left, wait for the kernel to empty the cgroup, rmdir bottom-up."""
        from cgagent.cgroups.wait import wait_empty

        if not self.exists():
            return
        if self.procs():
            self.kill()
            wait_empty(self, timeout)
        self.remove()
