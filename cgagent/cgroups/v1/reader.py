"""The v1 reader: one directory per controller hierarchy; a cgroup may be in only some of them
(systemd on v1 makes a unit's cgroup only where its accounting is on)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cgagent.cgroups.reader import LIMIT_PARTS, OomNotifier, Reader
from cgagent.cgroups.stats import CpuUsage, DeviceIo, IoUsage, Limits, MemoryUsage, Throttling
from cgagent.cgroups.v1 import blkio, cpu, cpuacct, cpuset, freezer, memory, pids

if TYPE_CHECKING:   # its type only: ctypes is not for every CLI start that reads a cgroup
    from cgagent.inotify import Inotify

_LIMIT_FILES = {"cpu": ("cpu", cpu.LIMIT_FILES), "cpuset": ("cpuset", cpuset.LIMIT_FILES),
                "memory": ("memory", memory.LIMIT_FILES), "swap": ("memory", memory.SWAP_LIMIT_FILES),
                "pids": ("pids", pids.LIMIT_FILES)}


class V1Reader(Reader):
    mode = "v1"
    OOM_FILE = OWN_OOM_FILE = memory.OOM_FILE   # v1 counts a kill in the victim's cgroup alone
    BIRTH_FILE = "cgroup.clone_children"

    def dir(self, controller: str) -> str | None:
        return self.dirs.get(controller)

    def has(self, controller: str) -> bool:
        return controller in self.dirs

    def cpu_usage(self, per_cpu: bool = False) -> CpuUsage:
        d = self.dirs.get("cpuacct")
        return CpuUsage() if d is None else cpuacct.usage(d, per_cpu)

    def throttling(self) -> Throttling:
        d = self.dirs.get("cpu")
        return Throttling() if d is None else cpu.throttling(d)

    def memory(self, swap: bool = False) -> MemoryUsage:
        d = self.dirs.get("memory")
        return MemoryUsage() if d is None else memory.usage(d, swap)

    def pids(self) -> int | None:
        d = self.dirs.get("pids")
        return None if d is None else pids.current(d)

    def io(self) -> IoUsage:
        d = self.dirs.get("blkio")
        return IoUsage() if d is None else blkio.usage(d)

    def io_devices(self) -> list[DeviceIo]:
        d = self.dirs.get("blkio")
        return [] if d is None else blkio.per_device(d)

    def io_limits(self) -> dict[str, dict[str, int]]:
        d = self.dirs.get("blkio")
        return {} if d is None else blkio.throttle_rules(d)

    def frozen(self) -> bool | None:
        d = self.dirs.get("freezer")
        return None if d is None else freezer.is_frozen(d)

    def limits(self, *parts: str) -> Limits:
        out = Limits()
        want = parts or LIMIT_PARTS
        d = self.dirs.get("cpu")
        if d is not None and "cpu" in want:
            cpu.limits(d, out)
        d = self.dirs.get("cpuset")
        if d is not None and "cpuset" in want:
            cpuset.limits(d, out)
        d = self.dirs.get("memory")
        if d is not None:
            if "memory" in want:
                out.memory = memory.limit(d)
                out.memory_reservation = memory.reservation(d)
            if "swap" in want:
                out.memory_swap = memory.swap_limit(d)
        d = self.dirs.get("pids")
        if d is not None and "pids" in want:
            out.pids = pids.limit(d)
        return out

    def limit_files(self, *parts: str) -> list[str]:
        out = []
        for p in parts or LIMIT_PARTS:
            controller, files = _LIMIT_FILES[p]
            d = self.dirs.get(controller)
            if d is not None:
                out += [f"{d}/{f}" for f in files]
        return out

    def oom_notifier(self, ino: Inotify) -> OomNotifier:
        """An eventfd bound to memory.oom_control through cgroup.event_control (v1 has no inotify
        event for the counter)."""
        d = self.dirs.get("memory")
        if d is None:
            raise FileNotFoundError(f"{self.dirs}: no memory cgroup")
        n = OomNotifier(fd=os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        try:
            n.held.append(os.open(f"{d}/{self.OOM_FILE}", os.O_RDONLY | os.O_CLOEXEC))
            fd = os.open(f"{d}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, f"{n.fd} {n.held[0]}".encode())
            finally:
                os.close(fd)
        except OSError:
            n.close()
            raise
        return n
