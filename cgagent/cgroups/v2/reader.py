"""The v2 reader: one directory holds every controller's files (those of a controller not enabled in
the parent are absent: their values read as None)."""

from __future__ import annotations

import os

from cgagent.cgroups.reader import LIMIT_PARTS, OomNotifier, Reader
from cgagent.cgroups.stats import CpuUsage, DeviceIo, IoUsage, Limits, MemoryUsage, Pressure, Throttling
from cgagent.cgroups.v2 import cpu, cpuset, freeze, io, memory, pids, psi
from cgagent.inotify import IN_MODIFY, Inotify

_LIMIT_FILES = {"cpu": cpu.LIMIT_FILES, "cpuset": (), "memory": memory.LIMIT_FILES,
                "swap": memory.SWAP_LIMIT_FILES, "pids": pids.LIMIT_FILES}


class V2Reader(Reader):
    mode = "v2"
    OOM_FILE = memory.OOM_FILE
    OWN_OOM_FILE = memory.OWN_OOM_FILE
    BIRTH_FILE = "cgroup.type"   # cAdvisor takes cgroup.events, whose mtime moves with every (un)populate

    def __init__(self, dirs: dict[str, str]) -> None:
        super().__init__(dirs)
        self.d = dirs[""]

    def dir(self, controller: str) -> str | None:
        return self.d

    def has(self, controller: str) -> bool:
        return True

    def cpu_usage(self, per_cpu: bool = False) -> CpuUsage:
        return cpu.usage(self.d)

    def throttling(self) -> Throttling:
        return cpu.throttling(self.d)

    def memory(self, swap: bool = False) -> MemoryUsage:
        return memory.usage(self.d, swap)

    def pids(self) -> int | None:
        return pids.current(self.d)

    def io(self) -> IoUsage:
        return io.usage(self.d)

    def io_devices(self) -> list[DeviceIo]:
        return io.per_device(self.d)

    def io_limits(self) -> dict[str, dict[str, int]]:
        return io.max_rules(self.d)

    def frozen(self) -> bool | None:
        return freeze.is_frozen(self.d)

    def pressure(self) -> dict[str, Pressure]:
        return psi.read(self.d)

    def limits(self, *parts: str) -> Limits:
        out = Limits()
        want = parts or LIMIT_PARTS
        if "cpu" in want:
            cpu.limits(self.d, out)
        if "cpuset" in want:
            cpuset.limits(self.d, out)
        if "memory" in want or "swap" in want:
            out.memory = memory.limit(self.d)
            out.memory_reservation = memory.reservation(self.d)
            if "swap" in want:
                out.memory_swap = memory.swap_limit(self.d, out.memory)
            if "memory" not in want:
                out.memory = out.memory_reservation = None
        if "pids" in want:
            out.pids = pids.limit(self.d)
        return out

    def limit_files(self, *parts: str) -> list[str]:
        # a controller that is not enabled has no files: watch those that exist
        files = dict.fromkeys(f for p in parts or LIMIT_PARTS for f in _LIMIT_FILES[p])
        return [p for p in (f"{self.d}/{f}" for f in files) if os.path.exists(p)]

    def oom_notifier(self, ino: Inotify) -> OomNotifier:
        """IN_MODIFY on memory.events: the kernel notifies each change of its counters."""
        return OomNotifier(wd=ino.add(f"{self.d}/{self.OOM_FILE}", IN_MODIFY))
